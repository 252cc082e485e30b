_base_ = [
    '../_base_/models/upernet_tla-swin.py', '../_base_/datasets/ade20k.py',
    '../_base_/seg_runtime.py', '../_base_/schedules/schedule_160k.py'
]
# UperNet, TL-Align-pretrained Swin-T, ADE20K 512x512, 8 GPUs x 2 images, 160k iterations.
# Backbone: what configs/pretrain/swin-tiny_tla_8xb128-300e_in1k.py exports when it finishes
# (BackboneExportHook -> <work_dir>/backbone.pth). Published baseline (official Swin-T
# weights): 44.5 mIoU single scale.
checkpoint = 'work_dirs/swin-tiny_tla_8xb128-300e_in1k/backbone.pth'
model = dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=checkpoint)))
