# UperNet with a TL-Align DeiT-S backbone and MultiLevelNeck for ADE20K, as mmseg 1.x
# `upernet_vit-b16_ln_mln.py` + `vit_deit-s16_mln_upernet_8xb2-160k_ade20k-512x512.py`.
# Same data preprocessor and heads as the Swin base; differs in backbone, neck and channels.
_base_ = ['./upernet_tla-swin.py']
model = dict(
    backbone=dict(
        _delete_=True,
        type='tlalign_mm.TLAVisionTransformer',  # our registry, from the mmseg scope
        arch='deit-small',
        # position embedding held for the 512x512 crop (32x32 grid); the 14x14 pretrained one
        # is resized bicubically at load time, and again on the fly for other test sizes
        img_size=512,
        patch_size=16,
        out_indices=(2, 5, 8, 11),
        out_type='featmap',
        final_norm=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.1,
        interpolate_mode='bicubic',
        # random init here; the leaf configs add init_cfg=dict(type='Pretrained', checkpoint=...)
    ),
    neck=dict(type='MultiLevelNeck', in_channels=[384, 384, 384, 384], out_channels=384, scales=[4, 2, 1, 0.5]),
    decode_head=dict(in_channels=[384, 384, 384, 384]),
    auxiliary_head=dict(in_channels=384, in_index=3),
)
