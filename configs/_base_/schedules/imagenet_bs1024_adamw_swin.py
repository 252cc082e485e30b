# Swin recipe (official repo): AdamW lr 1e-3 at batch 1024, wd 0.05, 300 epochs, 20 warm-up
# epochs, cosine, gradient clipping 5.0.
_base_ = ['./imagenet_bs1024_adamw_deit.py']
optim_wrapper = dict(optimizer=dict(lr=1e-3), clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / 1e-3, by_epoch=True, begin=0, end=20,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=280, eta_min=1e-5, by_epoch=True, begin=20, end=300,
         convert_to_iter_based=True),
]
