_base_ = './upernet_deit-s_in1k-tla-pre_mln_8xb2-160k_ade20k-512x512.py'
# Same, with the official DeiT-S release (facebookresearch/deit, `{'model': ...}`, read as is):
#   wget -P checkpoints https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth
# Published result with these weights (mmseg model zoo): 43.8 mIoU (single scale).
checkpoint = 'checkpoints/deit_small_patch16_224-cd65a155.pth'
model = dict(backbone=dict(init_cfg=dict(checkpoint=checkpoint)))
