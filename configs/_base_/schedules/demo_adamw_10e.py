# The DeiT recipe (configs/_base_/schedules/imagenet_bs1024_adamw_deit.py: AdamW, wd 0.05, no
# decay on norms / biases / position embedding / tokens, cosine) shortened for the demo: lr 1e-3,
# 1 warm-up epoch, 10 epochs, validation every 2.
_base_ = ['./imagenet_bs1024_adamw_deit.py']

max_epochs = 10
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 1, eta_min=1e-5, by_epoch=True, begin=1, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=2)
