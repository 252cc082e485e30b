# DeiT recipe: AdamW, lr 5e-4 * total_batch / 512 (1e-3 at 8 x 128), wd 0.05, 300 epochs,
# 5 warm-up epochs from 1e-6, cosine to 1e-5; no decay on norms, biases, pos_embed, tokens.
# Mixed precision as the DeiT / Swin recipes train on GPU; tools/train.py falls back to fp32
# (OptimWrapper, with a warning) on machines without CUDA. The TL-Align labels ride in the
# features' low-precision attention call and stay float32 between blocks (backbone label_dtype).
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    # fused AdamW: one kernel per step, and GradScaler hands it the inf check as a tensor, so
    # the float16 step never waits for the device (a foreach AdamW makes GradScaler read it back)
    optimizer=dict(type='AdamW', lr=5e-4 * 1024 / 512, weight_decay=0.05, betas=(0.9, 0.999), eps=1e-8,
                   fused=True),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={
            '.pos_embed': dict(decay_mult=0.0),
            '.cls_token': dict(decay_mult=0.0),
            '.dist_token': dict(decay_mult=0.0),
            '.relative_position_bias_table': dict(decay_mult=0.0),
        }),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / (5e-4 * 1024 / 512), by_epoch=True, begin=0, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=295, eta_min=1e-5, by_epoch=True, begin=5, end=300,
         convert_to_iter_based=True),
]
# mmengine's EpochBasedTrainLoop that resumes mid-epoch to the same run and skips bad images (tlalign_mm.engine)
train_cfg = dict(type='ResumableEpochBasedTrainLoop', max_epochs=300, val_interval=1)
val_cfg = dict()
test_cfg = dict()
# lr above is for 8 GPUs x 128; `--cfg-options auto_scale_lr.enable=True` rescales it
auto_scale_lr = dict(base_batch_size=1024, enable=False)
