# Runtime of the mmdet (Cascade Mask R-CNN / COCO) configs: mmdet scope, tlalign_mm backbones.
default_scope = 'mmdet'
# The backbones are named across scopes (type='tlalign_mm.TLASwinTransformer'), as mmdet's configs
# name mmpretrain backbones; importing tlalign_mm.models fills our registry (mmseg / mmdet untouched).
custom_imports = dict(imports=['tlalign_mm.models'], allow_failed_imports=False)

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='DetVisualizationHook'))

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # tools/train.py switches nccl to gloo on machines without CUDA.
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='DetLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=True)
log_level = 'INFO'
load_from = None
resume = False
