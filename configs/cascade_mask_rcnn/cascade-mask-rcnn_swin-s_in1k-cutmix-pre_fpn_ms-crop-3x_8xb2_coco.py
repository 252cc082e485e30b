_base_ = './cascade-mask-rcnn_swin-s_in1k-tla-pre_fpn_ms-crop-3x_8xb2_coco.py'
# Same, with the CutMix-baseline backbone (configs/pretrain/swin-small_cutmix_8xb128-300e_in1k.py).
checkpoint = 'work_dirs/swin-small_cutmix_8xb128-300e_in1k/backbone.pth'
model = dict(backbone=dict(init_cfg=dict(checkpoint=checkpoint)))
