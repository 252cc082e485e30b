# Demo: TL-Align pretraining of a small Swin on the real Fashion-MNIST subset that
# tools/prepare_demo_data.py writes; the Swin variant of deit-demo_tla_1xb64-10e_fashion-mnist.py
# (same data, augmentation and 10-epoch schedule, plus the Swin recipe's gradient clipping). First stage of README command one (tools/run_demo.sh): its exported backbone
# (<work_dir>/backbone.pth) initialises the demo UperNet and Cascade Mask R-CNN.
# Size: Swin with 32 channels, depths (2, 2, 2, 2), window 4, on 64x64 inputs with 4x4 patches
# (16x16 tokens; stage maps 16, 8, 4, 2); CutMix boxes on the 16-px grid of the third stage, so
# that patch merging pools tokens of one source until then; target: mean of the final token labels.
_base_ = ['./deit-demo_tla_1xb64-10e_fashion-mnist.py']

img_size = 64
model = dict(
    # the arch is repeated in configs/demo/{upernet,cascade-mask-rcnn}_tla-swin-demo_*.py (they load this backbone)
    backbone=dict(_delete_=True, type='TLASwinTransformer',
                  arch=dict(embed_dims=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)),
                  img_size=img_size, patch_size=4, window_size=4, out_indices=(3,), out_type='avg_featmap',
                  drop_path_rate=0.0),
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
# the Swin recipe's gradient clipping (configs/_base_/schedules/imagenet_bs1024_adamw_swin.py); the DeiT
# recipe's no-decay keys already cover relative_position_bias_table
optim_wrapper = dict(clip_grad=dict(max_norm=5.0))
