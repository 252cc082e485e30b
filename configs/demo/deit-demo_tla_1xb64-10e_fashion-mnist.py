# Demo: TL-Align pretraining on the real Fashion-MNIST subset that
# tools/prepare_demo_data.py writes (data/demo/fashion_mnist/{train,val}/<class>/*.png).
# Inherits the DeiT-S TL-Align model and recipe (the schedule shortened in
# configs/_base_/schedules/demo_adamw_10e.py) and overrides only size, so that it runs on
# 2 CPU cores in minutes: a 4-block ViT (128 dims, 4 heads) on 32x32 inputs with 4x4 patches
# (8x8 = 64 tokens), 4000 training images (400 per class), batch 64, 10 epochs.
_base_ = [
    '../_base_/models/tla_deit-small.py', '../_base_/datasets/fashion-mnist_demo.py',
    '../_base_/schedules/demo_adamw_10e.py', '../_base_/default_runtime.py'
]

img_size = 32
model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dims=128, num_layers=4, num_heads=4), img_size=img_size, patch_size=4,
                  drop_path_rate=0.0),
    head=dict(num_classes=10),
    align_stats_interval=10,    # the baseline logs the token fluctuation as often as the logger writes
    data_preprocessor=dict(mixer=dict(patch_size=4)),
)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=2, max_keep_ckpts=2))
custom_hooks = [
    dict(type='NonFiniteLossHook'),
    dict(type='BackboneExportHook', filename='backbone.pth'),
]
env_cfg = dict(cudnn_benchmark=False)
