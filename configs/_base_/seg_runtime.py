# Runtime of the mmseg (UperNet / ADE20K) configs: mmseg scope, tlalign_mm backbones.
# The schedule file (schedules/schedule_160k.py) holds the default_hooks, as in mmseg 1.x, with the
# cluster hooks (atomic checkpoints, random states, pre-emption, watchdog, optimizer state by name).
default_scope = 'mmseg'
# The backbones are named across scopes (type='tlalign_mm.TLASwinTransformer'), as mmdet's configs
# name mmpretrain backbones; importing tlalign_mm.models fills our registry (mmseg / mmdet untouched).
custom_imports = dict(imports=['tlalign_mm.models'], allow_failed_imports=False)

env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # tools/train.py switches nccl to gloo on machines without CUDA.
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False

# Multi-scale + flip test (`tools/test.py CFG CKPT --tta`): the pipeline is
# datasets/ade20k.py's `tta_pipeline`.
tta_model = dict(type='SegTTAModel')
