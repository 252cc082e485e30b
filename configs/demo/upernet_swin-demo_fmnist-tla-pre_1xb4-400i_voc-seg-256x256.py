# Demo: UperNet fine-tuned on the real VOC + street-frame masks that
# tools/prepare_demo_data.py writes (data/demo/voc_seg: 8 photos, 22 classes, 255 = ignore),
# from the TL-Align backbone exported by configs/demo/swin-demo_tla_1xb64-10e_fashion-mnist.py.
# Second stage of README command one (tools/run_demo.sh). Inherits the real Swin-T UperNet
# config and overrides only size and schedule: the demo Swin (32 channels, window 4), head
# widths 128 / 64, 256x256 crops, batch 4, 400 iterations. Train and val hold the same 8 images
# (see the data card), so mIoU measures fitting, i.e. that the pipeline learns.
_base_ = ['../upernet/upernet_swin-t_in1k-tla-pre_8xb2-160k_ade20k-512x512.py', '../_base_/models/swin-demo_arch.py']

# written by the demo pretraining (tools/run_demo.sh passes its own work dir with --cfg-options)
checkpoint = 'work_dirs/demo/pretrain/backbone.pth'
crop_size = (256, 256)
num_classes = 22
data_root = 'data/demo/voc_seg'
classes = ('background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow',
           'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train',
           'tvmonitor', 'truck')
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch=dict(_delete_=True, **_base_.swin_demo_arch),   # the demo pretraining's
        window_size=4, drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    decode_head=dict(in_channels=[32, 64, 128, 256], channels=128, num_classes=num_classes, ignore_index=255),
    auxiliary_head=dict(in_channels=128, channels=64, num_classes=num_classes, ignore_index=255),
)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='RandomResize', scale=(512, 256), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(512, 256), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='PackSegInputs'),
]
_dataset = dict(type='BaseSegDataset', data_root=data_root, img_suffix='.jpg', seg_map_suffix='.png',
                reduce_zero_label=False, metainfo=dict(classes=classes))
train_dataloader = dict(
    batch_size=4, num_workers=2,
    dataset=dict(_delete_=True, **_dataset, data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=2,
    dataset=dict(_delete_=True, **_dataset, data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
tta_pipeline = None  # the ADE20K multi-scale pipeline does not apply here

max_iters = 400
optim_wrapper = dict(optimizer=dict(lr=2e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=40),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=40, end=max_iters, by_epoch=False),
]
train_cfg = dict(max_iters=max_iters, val_interval=200)
# visualization: with tools/test.py --show-dir, paint every test image (mmseg's default is every 50th)
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=200, max_keep_ckpts=1),
                     visualization=dict(interval=1))
# A fixed seed, as in the pretraining and detector demos: repeated runs of command one repeat.
randomness = dict(seed=0, deterministic=False)
