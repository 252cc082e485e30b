_base_ = './upernet_swin-t_in1k-tla-pre_8xb2-160k_ade20k-512x512.py'
# UperNet, TL-Align-pretrained Swin-B (embed 128, heads 4/8/16/32;
# configs/pretrain/swin-base_tla_8xb128-300e_in1k.py). Published baseline (official Swin-B,
# ImageNet-1k 224): 48.1 mIoU single scale.
checkpoint = 'work_dirs/swin-base_tla_8xb128-300e_in1k/backbone.pth'
model = dict(
    backbone=dict(arch='base', init_cfg=dict(checkpoint=checkpoint)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
