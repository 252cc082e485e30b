# Runtime of the mmdet (Cascade Mask R-CNN / COCO) configs: mmdet scope, tlalign_mm backbones.
default_scope = 'mmdet'
# The backbones are named across scopes (type='tlalign_mm.TLASwinTransformer'), as mmdet's configs
# name mmpretrain backbones; importing tlalign_mm.models fills our registry (mmseg / mmdet untouched).
custom_imports = dict(imports=['tlalign_mm.models'], allow_failed_imports=False)

# The cluster set (docs: "Resume"), with the resumable loop of the schedule: atomic checkpoints that remove an old
# one only once the new one is on disk, every rank's random states in the checkpoints, SIGTERM / SIGUSR1 /
# SIGINT -> a checkpoint of that iteration and exit 75, no progress for 30 minutes -> the job ends naming the
# rank (exit 124), optimizer state matched by name on resume. In default_hooks, so that a config's own
# custom_hooks keep them.
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='tlalign_mm.AtomicCheckpointHook', interval=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='DetVisualizationHook'),
    random_states=dict(type='tlalign_mm.RandomStatesHook'),
    preemption=dict(type='tlalign_mm.PreemptionHook'),
    watchdog=dict(type='tlalign_mm.WatchdogHook', timeout=1800),
    optimizer_names=dict(type='tlalign_mm.OptimizerParamNamesHook'),
)

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
