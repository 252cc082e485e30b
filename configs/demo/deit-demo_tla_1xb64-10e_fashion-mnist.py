# Demo: TL-Align pretraining on the real Fashion-MNIST subset that
# tools/prepare_demo_data.py writes (data/demo/fashion_mnist/{train,val}/<class>/*.png).
# Inherits the DeiT-S TL-Align recipe and overrides only size and schedule so that it runs on
# 2 CPU cores in minutes: a 4-block ViT (128 dims, 4 heads) on 32x32 inputs with 4x4 patches
# (8x8 = 64 tokens), 4000 training images (400 per class), batch 64, 10 epochs.
_base_ = ['../pretrain/deit-small_tla_8xb128-300e_in1k.py']

img_size = 32
data_root = 'data/demo/fashion_mnist'
model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dims=128, num_layers=4, num_heads=4), img_size=img_size, patch_size=4,
                  drop_path_rate=0.0),
    head=dict(num_classes=10),
    align_stats_interval=10,    # the baseline logs the token fluctuation as often as the logger writes
    data_preprocessor=dict(mixer=dict(patch_size=4)),
)
train_pipeline = [
    dict(type='TimmClassificationTransform', input_size=img_size, is_training=True,
         auto_augment='rand-m9-mstd0.5-inc1', color_jitter=0.4, interpolation='bicubic', scale=(0.5, 1.0)),
    dict(type='PackClsInputs'),
]
test_pipeline = [
    dict(type='TimmClassificationTransform', input_size=img_size, is_training=False, crop_pct=1.0,
         interpolation='bicubic'),
    dict(type='PackClsInputs'),
]
train_dataloader = dict(
    batch_size=64, num_workers=2, persistent_workers=True, pin_memory=False,
    dataset=dict(type='ImageFolderDataset', data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=128, num_workers=2, persistent_workers=True, pin_memory=False,
    dataset=dict(type='ImageFolderDataset', data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_evaluator = val_evaluator

max_epochs = 10
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 1, eta_min=1e-5, by_epoch=True, begin=1, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=2)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=2, max_keep_ckpts=2))
custom_hooks = [
    dict(type='NonFiniteLossHook'),
    dict(type='BackboneExportHook', filename='backbone.pth'),
]
env_cfg = dict(cudnn_benchmark=False)
