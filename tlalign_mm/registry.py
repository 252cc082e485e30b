"""Where tlalign_mm's names enter the mmengine registries.

Our registries are children of mmengine's root registries under the scope ``tlalign_mm``, so a
config with ``default_scope='tlalign_mm'`` finds our classes and, through the parent, every
mmengine class (runner, hooks, optimisers).  The backbones are also put into the mmseg and mmdet
``MODELS`` registries by :mod:`tlalign_mm.models.downstream`, which is the only place that
imports mmseg / mmdet.
"""
from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry

__all__ = ['MODELS', 'DATASETS', 'TRANSFORMS', 'HOOKS', 'METRICS', 'DATA_SAMPLERS']

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='tlalign_mm', locations=['tlalign_mm.models'])
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, scope='tlalign_mm', locations=['tlalign_mm.datasets'])
TRANSFORMS = Registry('transform', parent=MMENGINE_TRANSFORMS, scope='tlalign_mm',
                      locations=['tlalign_mm.datasets'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='tlalign_mm', locations=['tlalign_mm.hooks'])
METRICS = Registry('metric', parent=MMENGINE_METRICS, scope='tlalign_mm', locations=['tlalign_mm.evaluation'])
DATA_SAMPLERS = Registry('data sampler', parent=MMENGINE_DATA_SAMPLERS, scope='tlalign_mm',
                         locations=['tlalign_mm.datasets'])
