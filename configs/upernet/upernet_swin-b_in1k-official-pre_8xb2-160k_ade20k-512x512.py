_base_ = './upernet_swin-b_in1k-tla-pre_8xb2-160k_ade20k-512x512.py'
# Same, with the official Swin-B ImageNet-1k (224, window 7) release:
#   wget -P checkpoints https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_base_patch4_window7_224.pth
# Published result with these weights: 48.1 mIoU (single scale).
checkpoint = 'checkpoints/swin_base_patch4_window7_224.pth'
model = dict(backbone=dict(init_cfg=dict(checkpoint=checkpoint)))
