_base_ = [
    '../_base_/models/cascade-mask-rcnn_tla-swin_fpn.py', '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/schedule_3x.py', '../_base_/det_runtime.py'
]
# Cascade Mask R-CNN (4conv1fc GIoU heads), TL-Align-pretrained Swin-T, COCO, 8 GPUs x 2 images,
# 3x schedule with multi-scale + crop training and mixed precision: the official Swin detection
# recipe. Backbone: what configs/pretrain/swin-tiny_tla_8xb128-300e_in1k.py exports.
# Published baseline (official Swin-T weights): 50.4 box AP / 43.7 mask AP.
checkpoint = 'work_dirs/swin-tiny_tla_8xb128-300e_in1k/backbone.pth'
model = dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=checkpoint)))

# flip, then either multi-scale resize (short side 480-800, step 32, long side <= 1333) or
# resize to 400/500/600 + absolute-range crop 384-600 + the multi-scale resize (DETR style)
ms_scales = [(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333), (640, 1333),
             (672, 1333), (704, 1333), (736, 1333), (768, 1333), (800, 1333)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=ms_scales, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize', scales=[(400, 1333), (500, 1333), (600, 1333)], keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600), allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=ms_scales, keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

# Mixed precision (dynamic loss scale). AmpOptimWrapper needs a GPU; without CUDA train in fp32 with
# --cfg-options optim_wrapper.type=OptimWrapper
# (amp_to_fp32_without_cuda in tools/config_checks.py does the same in code).
optim_wrapper = dict(type='AmpOptimWrapper')
