# PVTv2-B0 (Wang et al., CVMJ 2022) with TL-Align. PVT's recipe is DeiT's (AdamW 1e-3 at
# batch 1024, weight decay 0.05, 5 warm-up epochs, cosine, 300 epochs; whai362/PVT
# classification/main.py), drop_path 0.1.
_base_ = [
    '../_base_/models/tla_pvt-small.py', '../_base_/datasets/imagenet_bs128_deit.py',
    '../_base_/schedules/imagenet_bs1024_adamw_deit.py', '../_base_/default_runtime.py'
]
# v2 reads the token mean (pvt_v2.py), no class token
model = dict(backbone=dict(out_type='avg_featmap', arch='v2-b0', drop_path_rate=0.1))
