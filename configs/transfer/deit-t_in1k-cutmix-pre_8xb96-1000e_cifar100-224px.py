# The same fine-tuning from the CutMix-baseline ImageNet backbone (the comparison for TL-Align).
_base_ = ['./deit-t_in1k-tla-pre_8xb96-1000e_cifar100-224px.py']
checkpoint = 'work_dirs/deit-tiny_cutmix_8xb128-300e_in1k/backbone.pth'
model = dict(backbone=dict(init_cfg=dict(checkpoint=checkpoint)))
