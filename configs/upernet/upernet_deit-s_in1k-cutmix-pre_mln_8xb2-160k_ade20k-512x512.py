_base_ = './upernet_deit-s_in1k-tla-pre_mln_8xb2-160k_ade20k-512x512.py'
# Same, with the CutMix-baseline backbone (configs/pretrain/deit-small_cutmix_8xb128-300e_in1k.py).
checkpoint = 'work_dirs/deit-small_cutmix_8xb128-300e_in1k/backbone.pth'
model = dict(backbone=dict(init_cfg=dict(checkpoint=checkpoint)))
