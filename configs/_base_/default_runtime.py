# Runtime shared by the pretraining configs (tlalign_mm scope).
default_scope = 'tlalign_mm'
custom_imports = dict(imports=['tlalign_mm'], allow_failed_imports=False)

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=100),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # mmengine's CheckpointHook, writing each file and the last_checkpoint pointer atomically and removing an
    # old checkpoint only once the new one is on disk
    checkpoint=dict(type='AtomicCheckpointHook', interval=1, max_keep_ckpts=3, save_best='auto'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    # The cluster set (docs: "Resume"), with the resumable loops of the schedules: every rank's random
    # states in the checkpoints; SIGTERM / SIGUSR1 / SIGINT -> a checkpoint of that iteration and exit 75;
    # no progress for 30 minutes -> the job ends naming the rank (exit 124); optimizer state by name.
    random_states=dict(type='RandomStatesHook'),
    preemption=dict(type='PreemptionHook'),
    watchdog=dict(type='WatchdogHook', timeout=1800),
    optimizer_names=dict(type='OptimizerParamNamesHook'),
)
custom_hooks = [
    # Stop with the iteration, the loss terms and the last checkpoint on a NaN / inf loss.
    dict(type='NonFiniteLossHook'),
    # Backbone-only checkpoint for the UperNet / Cascade Mask R-CNN configs.
    dict(type='BackboneExportHook', filename='backbone.pth', at_checkpoint=False),
]

env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # tools/train.py switches nccl to gloo on machines without CUDA.
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='Visualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=True, window_size=50)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
