_base_ = './upernet_swin-t_in1k-tla-pre_8xb2-160k_ade20k-512x512.py'
# UperNet, TL-Align-pretrained Swin-S (configs/pretrain/swin-small_tla_8xb128-300e_in1k.py).
# Published baseline (official Swin-S weights): 47.6 mIoU single scale.
checkpoint = 'work_dirs/swin-small_tla_8xb128-300e_in1k/backbone.pth'
model = dict(backbone=dict(arch='small', init_cfg=dict(checkpoint=checkpoint)))
