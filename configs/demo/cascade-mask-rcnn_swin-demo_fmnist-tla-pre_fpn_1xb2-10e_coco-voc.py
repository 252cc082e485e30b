# Demo: Cascade Mask R-CNN fine-tuned on the real VOC instance polygons that
# tools/prepare_demo_data.py writes (data/demo/coco_voc: 3 photos, 12 instances, the 20 VOC
# categories in COCO layout), from the TL-Align backbone exported by
# configs/demo/swin-demo_tla_1xb64-10e_fashion-mnist.py. Third stage of README command one
# (tools/run_demo.sh). Inherits the real Swin-T Cascade Mask R-CNN 3x config and overrides only
# size and schedule: the demo Swin (32 channels, window 4), 64-channel FPN and heads, 128 RoIs
# per image and stage, short side 320, the 3 images repeated 20 times per epoch, 10 epochs, fp32.
# Train and val hold the same images (see the data card): AP measures fitting.
_base_ = ['../cascade_mask_rcnn/cascade-mask-rcnn_swin-t_in1k-tla-pre_fpn_ms-crop-3x_8xb2_coco.py', '../_base_/models/swin-demo_arch.py']

# written by the demo pretraining (tools/run_demo.sh passes its own work dir with --cfg-options)
checkpoint = 'work_dirs/demo/pretrain/backbone.pth'
data_root = 'data/demo/coco_voc/'
classes = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow', 'diningtable',
           'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor')
num_classes = len(classes)
width = 64  # FPN / head channels (256 in the real config)
img_scale = (512, 320)


def _demo_bbox_head(target_stds):
    return dict(
        type='ConvFCBBoxHead', num_shared_convs=4, num_shared_fcs=1, in_channels=width, conv_out_channels=width,
        fc_out_channels=256, roi_feat_size=7, num_classes=num_classes,
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=target_stds),
        reg_class_agnostic=False, reg_decoded_bbox=True, norm_cfg=dict(type='BN', requires_grad=True),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=10.0))


def _demo_rcnn_train_cfg(iou):
    return dict(
        assigner=dict(type='MaxIoUAssigner', pos_iou_thr=iou, neg_iou_thr=iou, min_pos_iou=iou,
                      match_low_quality=False, ignore_iof_thr=-1),
        sampler=dict(type='RandomSampler', num=128, pos_fraction=0.25, neg_pos_ub=-1, add_gt_as_proposals=True),
        mask_size=28, pos_weight=-1, debug=False)


model = dict(
    backbone=dict(
        arch=dict(_delete_=True, **_base_.swin_demo_arch),   # the demo pretraining's
        window_size=4, drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=width),
    rpn_head=dict(in_channels=width, feat_channels=width),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=width),
        bbox_head=[_demo_bbox_head([0.1, 0.1, 0.2, 0.2]), _demo_bbox_head([0.05, 0.05, 0.1, 0.1]),
                   _demo_bbox_head([0.033, 0.033, 0.067, 0.067])],
        mask_roi_extractor=dict(out_channels=width),
        mask_head=dict(in_channels=width, conv_out_channels=width, num_classes=num_classes)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=500),
        rcnn=[_demo_rcnn_train_cfg(0.5), _demo_rcnn_train_cfg(0.6), _demo_rcnn_train_cfg(0.7)]),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300)),
)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomResize', scale=img_scale, ratio_range=(0.8, 1.2), keep_ratio=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
metainfo = dict(classes=classes)
train_dataloader = dict(
    batch_size=2, num_workers=2,
    dataset=dict(
        _delete_=True, type='RepeatDataset', times=20,
        dataset=dict(type='CocoDataset', data_root=data_root, metainfo=metainfo,
                     ann_file='annotations/instances_train.json', data_prefix=dict(img='train/'),
                     filter_cfg=dict(filter_empty_gt=True, min_size=8), pipeline=train_pipeline)))
val_dataloader = dict(
    num_workers=2,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_val.json',
                 data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

max_epochs = 10
train_cfg = dict(max_epochs=max_epochs, val_interval=5)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=30),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8], gamma=0.1),
]
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(lr=4e-4))  # fp32 on CPU (the real config uses AMP)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=5, max_keep_ckpts=1))
# A fixed seed (the pretraining demo has one too): without it mmengine draws one per run, and the
# detector on 3 photos sometimes stayed on the all-background plateau of its first iterations.
randomness = dict(seed=0, deterministic=False)
