_base_ = [
    '../_base_/models/upernet_tla-deit.py', '../_base_/datasets/ade20k.py',
    '../_base_/seg_runtime.py', '../_base_/schedules/schedule_160k.py'
]
# UperNet + MultiLevelNeck, TL-Align-pretrained DeiT-S, ADE20K 512x512, 8 GPUs x 2 images,
# 160k iterations (mmseg 1.2.2's DeiT-S config inherits its 80k schedule; this one does not).
# Backbone: what configs/pretrain/deit-small_tla_8xb128-300e_in1k.py exports when it finishes.
# Published baseline (official DeiT-S weights, mmseg model zoo): 43.8 mIoU single scale.
checkpoint = 'work_dirs/deit-small_tla_8xb128-300e_in1k/backbone.pth'
model = dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=checkpoint)))
