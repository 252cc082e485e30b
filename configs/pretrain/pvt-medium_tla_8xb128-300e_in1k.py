# PVT-Medium (v1, Wang et al., ICCV 2021) with TL-Align. PVT's recipe is DeiT's (AdamW 1e-3 at
# batch 1024, weight decay 0.05, 5 warm-up epochs, cosine, 300 epochs; whai362/PVT
# classification/main.py), drop_path 0.3 and gradient clipping at norm 1.0 (configs/pvt/pvt_medium.py).
_base_ = [
    '../_base_/models/tla_pvt-small.py', '../_base_/datasets/imagenet_bs128_deit.py',
    '../_base_/schedules/imagenet_bs1024_adamw_deit.py', '../_base_/default_runtime.py'
]
model = dict(backbone=dict(arch='medium', drop_path_rate=0.3))
optim_wrapper = dict(clip_grad=dict(max_norm=1.0))
