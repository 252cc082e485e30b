_base_ = './cascade-mask-rcnn_swin-t_in1k-tla-pre_fpn_ms-crop-3x_8xb2_coco.py'
# Cascade Mask R-CNN 3x, TL-Align-pretrained Swin-S (configs/pretrain/swin-small_tla_8xb128-300e_in1k.py).
# Published baseline (official Swin-S weights): 51.9 box AP / 45.0 mask AP.
checkpoint = 'work_dirs/swin-small_tla_8xb128-300e_in1k/backbone.pth'
model = dict(backbone=dict(arch='small', drop_path_rate=0.2, init_cfg=dict(checkpoint=checkpoint)))
