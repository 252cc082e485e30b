_base_ = './cascade-mask-rcnn_swin-b_in1k-tla-pre_fpn_ms-crop-3x_8xb2_coco.py'
# Same, with the official Swin-B ImageNet-1k (224, window 7) release:
#   wget -P checkpoints https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_base_patch4_window7_224.pth
# Published result with these weights: 51.9 box AP / 45.0 mask AP.
checkpoint = 'checkpoints/swin_base_patch4_window7_224.pth'
model = dict(backbone=dict(init_cfg=dict(checkpoint=checkpoint)))
