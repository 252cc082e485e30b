# UperNet with a TL-Align Swin backbone (Swin-T defaults) for ADE20K, as the official Swin
# segmentation recipe / mmseg 1.x `upernet_swin.py`. Leaf configs set the checkpoint and size.
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
        type='tlalign_mm.TLASwinTransformer',  # our registry, from the mmseg / mmdet scope
        arch='tiny',
        img_size=224,
        patch_size=4,
        window_size=7,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3),
        # random init here; the leaf configs add
        # init_cfg=dict(type='Pretrained', checkpoint=...) (any layout tlalign_mm.checkpoint
        # reads; loading raises when under 90% of the backbone's parameters match)
    ),
    decode_head=dict(
        type='UPerHead',
        in_channels=[96, 192, 384, 768],
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
        in_index=2,
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
