# 36 epochs, steps at 27 and 33, AdamW 1e-4 / wd 0.05: the official Swin detection 3x recipe
# (8 GPUs x 2 images), in mmdet 3.x spelling. Mixed precision is switched on by the leaf configs.
max_epochs = 36
# mmengine's EpochBasedTrainLoop that resumes mid-epoch to the same run and skips bad images (tlalign_mm.engine)
train_cfg = dict(type='tlalign_mm.ResumableEpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        custom_keys={
            'absolute_pos_embed': dict(decay_mult=0.),
            'relative_position_bias_table': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.),
        }))
# Learning rates are for 16 images per iteration; `--auto-scale-lr` style scaling is off.
auto_scale_lr = dict(enable=False, base_batch_size=16)
