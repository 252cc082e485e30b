"""Where tlalign_mm's names enter the mmengine registries.

Every mmengine root registry gets a child under the scope ``tlalign_mm`` (as mmpretrain's
``registry.py`` does), so a config with ``default_scope='tlalign_mm'`` finds our classes and,
through the parents, every mmengine class (runner, loops, optimisers, hooks, visualisers)
without "failed to search registry" noise.  mmseg / mmdet configs reach our backbones across
scopes, ``type='tlalign_mm.TLASwinTransformer'`` (mmengine looks the scope up among the root
registry's children), so nothing here imports mmseg or mmdet.
"""
from mmengine import registry as _mm
from mmengine.registry import Registry


def _child(parent: Registry, location: str | None = None) -> Registry:
    return Registry(parent.name, parent=parent, scope='tlalign_mm',
                    locations=[location] if location else [])


MODELS = _child(_mm.MODELS, 'tlalign_mm.models')
DATASETS = _child(_mm.DATASETS, 'tlalign_mm.datasets')
TRANSFORMS = _child(_mm.TRANSFORMS, 'tlalign_mm.datasets')
DATA_SAMPLERS = _child(_mm.DATA_SAMPLERS, 'tlalign_mm.datasets')
HOOKS = _child(_mm.HOOKS, 'tlalign_mm.engine')
METRICS = _child(_mm.METRICS, 'tlalign_mm.evaluation')

# The rest of mmengine's registries, so that scope 'tlalign_mm' resolves everywhere.
RUNNERS = _child(_mm.RUNNERS)
RUNNER_CONSTRUCTORS = _child(_mm.RUNNER_CONSTRUCTORS)
LOOPS = _child(_mm.LOOPS, 'tlalign_mm.engine')
MODEL_WRAPPERS = _child(_mm.MODEL_WRAPPERS)
WEIGHT_INITIALIZERS = _child(_mm.WEIGHT_INITIALIZERS)
OPTIMIZERS = _child(_mm.OPTIMIZERS)
OPTIM_WRAPPERS = _child(_mm.OPTIM_WRAPPERS)
OPTIM_WRAPPER_CONSTRUCTORS = _child(_mm.OPTIM_WRAPPER_CONSTRUCTORS)
PARAM_SCHEDULERS = _child(_mm.PARAM_SCHEDULERS)
EVALUATOR = _child(_mm.EVALUATOR)
TASK_UTILS = _child(_mm.TASK_UTILS)
VISUALIZERS = _child(_mm.VISUALIZERS)
VISBACKENDS = _child(_mm.VISBACKENDS)
LOG_PROCESSORS = _child(_mm.LOG_PROCESSORS)
INFERENCERS = _child(_mm.INFERENCERS)
# the checkpoint loaders the models' init_cfg=Pretrained call: the models name them, the checkpoint
# package (above the models) registers them, imported on the first lookup
FUNCTIONS = _child(_mm.FUNCTIONS, 'tlalign_mm.checkpoint')

__all__ = [
    'MODELS', 'DATASETS', 'TRANSFORMS', 'DATA_SAMPLERS', 'HOOKS', 'METRICS', 'RUNNERS', 'RUNNER_CONSTRUCTORS',
    'LOOPS', 'MODEL_WRAPPERS', 'WEIGHT_INITIALIZERS', 'OPTIMIZERS', 'OPTIM_WRAPPERS',
    'OPTIM_WRAPPER_CONSTRUCTORS', 'PARAM_SCHEDULERS', 'EVALUATOR', 'TASK_UTILS', 'VISUALIZERS', 'VISBACKENDS',
    'LOG_PROCESSORS', 'INFERENCERS', 'FUNCTIONS'
]
