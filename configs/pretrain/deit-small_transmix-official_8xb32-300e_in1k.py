# TransMix in its own released recipe (Beckschen/TransMix configs/deit_s_transmix.yaml, run by its
# train.py, timm 0.5.4's train.py): the TransMix rule with the release's conventions (token mask
# sampled nearest from the pixel box, lam0 = the box's pixel area, Mixup batches on the area
# target) and every value of the recipe that differs from the DeiT recipe of
# deit-small_tla_8xb128-300e_in1k.py. deit-small_transmix_8xb128-300e_in1k.py keeps the DeiT /
# TL-Align recipe (the paper's setting: only the target differs).
_base_ = ['./deit-small_transmix_8xb128-300e_in1k.py']

model = dict(
    label_rule=dict(token_mask='nearest', area_weight=0.5),    # nn.Upsample(size=grid) mask; ratio=0.5
    data_preprocessor=dict(
        # mixup: 0.8, cutmix: 1.0, on pixels (timm's Mixup, mode 'batch', correct_lam True), one or
        # the other per batch with probability 0.5: the yaml's `mixup-switch-prob: 0.8` is
        # hyphenated, train.py never reads it, so its --mixup-switch-prob default 0.5 applies
        mixer=dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, cutmix_mode='pixel', correct_lam=True),
        # reprob: train.py's default 0. (the yaml sets none): no random erasing
        random_erasing=None))

# train_interpolation: train.py's default 'random' (bilinear or bicubic per image), not DeiT's bicubic
train_pipeline = [
    dict(type='TimmClassificationTransform', input_size=224, is_training=True,
         auto_augment='rand-m9-mstd0.5-inc1', color_jitter=0.4, interpolation='random'),
    dict(type='PackClsInputs'),
]
train_dataloader = dict(
    batch_size=32,    # total_batch_size: 256 (train.py: batch_size = total_batch_size // world_size)
    # timm's train.py has no repeated augmentation (DeiT's RASampler)
    sampler=dict(_delete_=True, type='DefaultSampler', shuffle=True),
    dataset=dict(pipeline=train_pipeline))

# lr: 1e-3 at the total batch of 256 (not rescaled); weight_decay: 3e-2; warmup_epochs: 20 from
# warmup_lr 1e-6; min_lr 1e-5, cosine, 300 epochs
optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=0.03))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / 1e-3, by_epoch=True, begin=0, end=20, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=280, eta_min=1e-5, by_epoch=True, begin=20, end=300,
         convert_to_iter_based=True),
]
auto_scale_lr = dict(base_batch_size=256)

# model_ema: True, model_ema_decay: 0.99996 (timm ModelEma: ema = decay * ema + (1 - decay) * model
# each step); mmengine's momentum is 1 - decay. Validation then reads the EMA weights.
custom_hooks = [
    dict(type='NonFiniteLossHook'),
    dict(type='BackboneExportHook', filename='backbone.pth', at_checkpoint=False),
    dict(type='EMAHook', ema_type='ExponentialMovingAverage', momentum=4e-5, priority='ABOVE_NORMAL'),
]
