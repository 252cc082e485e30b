_base_ = './upernet_swin-t_in1k-tla-pre_8xb2-160k_ade20k-512x512.py'
# Same, with the official Swin-T ImageNet-1k release (microsoft/Swin-Transformer), read as is:
#   mkdir -p checkpoints && wget -P checkpoints \
#     https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_tiny_patch4_window7_224.pth
# Published result with these weights: 44.5 mIoU (single scale).
checkpoint = 'checkpoints/swin_tiny_patch4_window7_224.pth'
model = dict(backbone=dict(init_cfg=dict(checkpoint=checkpoint)))
