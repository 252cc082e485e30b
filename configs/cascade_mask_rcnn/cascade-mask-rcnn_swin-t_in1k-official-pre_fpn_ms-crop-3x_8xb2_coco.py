_base_ = './cascade-mask-rcnn_swin-t_in1k-tla-pre_fpn_ms-crop-3x_8xb2_coco.py'
# Same, with the official Swin-T ImageNet-1k release (microsoft/Swin-Transformer), read as is:
#   mkdir -p checkpoints && wget -P checkpoints \
#     https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_tiny_patch4_window7_224.pth
# Published result with these weights: 50.4 box AP / 43.7 mask AP.
checkpoint = 'checkpoints/swin_tiny_patch4_window7_224.pth'
model = dict(backbone=dict(init_cfg=dict(checkpoint=checkpoint)))
