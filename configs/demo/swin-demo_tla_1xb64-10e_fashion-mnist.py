# Demo: TL-Align pretraining of a small Swin on the real Fashion-MNIST subset that
# tools/prepare_demo_data.py writes; the Swin variant of deit-demo_tla_1xb64-10e_fashion-mnist.py
# (same data, augmentation and 10-epoch schedule, plus the Swin recipe's gradient clipping).
# First stage of README command one (tools/run_demo.sh): its exported backbone
# (<work_dir>/backbone.pth) initialises the demo UperNet and Cascade Mask R-CNN.
# Size: Swin with 32 channels, depths (2, 2, 2, 2), window 4, on 64x64 inputs with 4x4 patches
# (16x16 tokens; stage maps 16, 8, 4, 2); CutMix boxes on the 16-px grid of the third stage, so
# that patch merging pools tokens of one source until then; target: mean of the final token labels.
_base_ = [
    '../_base_/models/tla_swin-tiny.py', '../_base_/datasets/fashion-mnist_demo.py',
    '../_base_/schedules/demo_adamw_10e.py', '../_base_/default_runtime.py', '../_base_/models/swin-demo_arch.py'
]

img_size = 64
model = dict(
    backbone=dict(arch=dict(_delete_=True, **_base_.swin_demo_arch), img_size=img_size, patch_size=4, window_size=4,
                  drop_path_rate=0.0),
    head=dict(num_classes=10),
    align_stats_interval=10,    # the baseline logs the token fluctuation as often as the logger writes
    data_preprocessor=dict(mixer=dict(patch_size=4, token_grid_size=16)),
)
train_dataloader = dict(dataset=dict(pipeline=[
    dict(type='TimmClassificationTransform', input_size=img_size, is_training=True,
         auto_augment='rand-m9-mstd0.5-inc1', color_jitter=0.4, interpolation='bicubic', scale=(0.5, 1.0)),
    dict(type='PackClsInputs'),
]))
val_dataloader = dict(dataset=dict(pipeline=[
    dict(type='TimmClassificationTransform', input_size=img_size, is_training=False, crop_pct=1.0,
         interpolation='bicubic'),
    dict(type='PackClsInputs'),
]))
test_dataloader = val_dataloader
# the Swin recipe's gradient clipping (configs/_base_/schedules/imagenet_bs1024_adamw_swin.py)
optim_wrapper = dict(clip_grad=dict(max_norm=5.0))
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=2, max_keep_ckpts=2))
custom_hooks = [
    dict(type='NonFiniteLossHook'),
    dict(type='BackboneExportHook', filename='backbone.pth'),
]
env_cfg = dict(cudnn_benchmark=False)
