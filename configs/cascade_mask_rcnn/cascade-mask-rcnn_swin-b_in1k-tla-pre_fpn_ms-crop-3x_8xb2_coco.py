_base_ = './cascade-mask-rcnn_swin-t_in1k-tla-pre_fpn_ms-crop-3x_8xb2_coco.py'
# Cascade Mask R-CNN 3x, TL-Align-pretrained Swin-B (embed 128, heads 4/8/16/32;
# configs/pretrain/swin-base_tla_8xb128-300e_in1k.py), drop_path 0.3.
# Published baseline (official Swin-B, ImageNet-1k 224): 51.9 box AP / 45.0 mask AP.
checkpoint = 'work_dirs/swin-base_tla_8xb128-300e_in1k/backbone.pth'
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.3, init_cfg=dict(checkpoint=checkpoint)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
