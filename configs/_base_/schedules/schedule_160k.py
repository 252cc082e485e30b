# 160k iterations, AdamW: the official Swin / mmseg 1.x UperNet recipe for ADE20K (8 GPUs x 2).
# (mmseg 1.2.2's DeiT-S UperNet config inherits schedule_80k by mistake; ours is 160k for all.)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    # no weight decay on position embeddings / tables, class token and LayerNorms
    # (substring match on parameter names: 'norm' covers norm1/norm2/norm{i}/patch_embed.norm)
    paramwise_cfg=dict(
        custom_keys={
            'absolute_pos_embed': dict(decay_mult=0.),
            'relative_position_bias_table': dict(decay_mult=0.),
            'pos_embed': dict(decay_mult=0.),
            'cls_token': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.),
        }))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
# mmengine's IterBasedTrainLoop that resumes without loading the trained batches and skips bad images
# (tlalign_mm.engine)
train_cfg = dict(type='tlalign_mm.ResumableIterBasedTrainLoop', max_iters=160000, val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='tlalign_mm.AtomicCheckpointHook', by_epoch=False, interval=16000),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'),
    # The cluster set (docs: "Resume"), with the resumable loop above: atomic checkpoints that remove an old one
    # only once the new one is on disk, every rank's random states in the checkpoints, SIGTERM / SIGUSR1 /
    # SIGINT -> a checkpoint of that iteration and exit 75, no progress for 30 minutes -> the job ends naming
    # the rank (exit 124), optimizer state matched by name on resume.
    random_states=dict(type='tlalign_mm.RandomStatesHook'),
    preemption=dict(type='tlalign_mm.PreemptionHook'),
    watchdog=dict(type='tlalign_mm.WatchdogHook', timeout=1800),
    optimizer_names=dict(type='tlalign_mm.OptimizerParamNamesHook'))
