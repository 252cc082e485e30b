# DeiT-Tiny pretrained on ImageNet-1k with TL-Align, fine-tuned on Flowers102 with DeiT's
# transfer recipe (configs/_base_/schedules/transfer_sgd_bs768_1000e.py): ImageNet's mixing
# (Mixup 0.8 / CutMix 1.0) with the plain area target, label smoothing 0.1, no random erasing,
# no stochastic depth.  model.label_rule switches the fine-tuning target like pretraining's.
_base_ = [
    '../_base_/models/tla_deit-small.py', '../_base_/datasets/transfer_flowers102_bs96_224px.py',
    '../_base_/schedules/transfer_sgd_bs768_1000e.py', '../_base_/default_runtime.py'
]
checkpoint = 'work_dirs/deit-tiny_tla_8xb128-300e_in1k/backbone.pth'
model = dict(
    backbone=dict(arch='deit-tiny', drop_path_rate=0.0, init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    head=dict(num_classes=102),
    label_rule=dict(_delete_=True, type='Area'),
    data_preprocessor=dict(mixer=dict(mixup_alpha=0.8, cutmix_alpha=1.0, cutmix_mode='pixel'), random_erasing=None))
