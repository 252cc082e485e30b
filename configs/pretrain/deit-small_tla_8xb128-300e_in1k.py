_base_ = [
    '../_base_/models/tla_deit-small.py', '../_base_/datasets/imagenet_bs128_deit.py',
    '../_base_/schedules/imagenet_bs1024_adamw_deit.py', '../_base_/default_runtime.py'
]
