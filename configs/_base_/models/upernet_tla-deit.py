# UperNet with a TL-Align DeiT-S backbone and MultiLevelNeck for ADE20K, as mmseg 1.x
# `upernet_vit-b16_ln_mln.py` + `vit_deit-s16_mln_upernet_8xb2-160k_ade20k-512x512.py`.
norm_cfg = dict(type='SyncBN', requires_grad=True)  # -> BN when not distributed (mmengine Runner)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=(512, 512))
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='TLAVisionTransformer',
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
    neck=dict(
        type='MultiLevelNeck',
        in_channels=[384, 384, 384, 384],
        out_channels=384,
        scales=[4, 2, 1, 0.5]),
    decode_head=dict(
        type='UPerHead',
        in_channels=[384, 384, 384, 384],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=384,
        in_index=3,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
