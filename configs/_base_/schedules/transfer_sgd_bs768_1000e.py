# DeiT's transfer fine-tuning (facebookresearch/deit issue #45, for CIFAR-10 and Stanford Cars;
# used here for all four sets): SGD (momentum 0.9, DeiT's default), lr 0.01 at batch 768 (8 x 96),
# weight decay 1e-4, 1000 epochs, DeiT's 5 warm-up epochs and cosine schedule; no random erasing
# and no stochastic depth (set in the leaf configs).  The lr is taken as the effective one;
# DeiT's main.py would scale a command-line value by batch / 512.
optim_wrapper = dict(
    type='AmpOptimWrapper', loss_scale='dynamic',
    optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0,
                       custom_keys={'.pos_embed': dict(decay_mult=0.0), '.cls_token': dict(decay_mult=0.0)}))
max_epochs = 1000
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / 0.01, by_epoch=True, begin=0, end=5, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 5, eta_min=1e-5, by_epoch=True, begin=5, end=max_epochs,
         convert_to_iter_based=True),
]
# mmengine's EpochBasedTrainLoop that resumes mid-epoch to the same run and skips bad images (tlalign_mm.engine)
train_cfg = dict(type='ResumableEpochBasedTrainLoop', max_epochs=max_epochs, val_interval=10)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=768)
