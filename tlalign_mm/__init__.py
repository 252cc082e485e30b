"""tlalign_mm: Token-Label Alignment (Xiao et al., ICCV 2023) for DeiT, Swin and PVT on OpenMMLab.

``import tlalign_mm`` fills tlalign_mm's own mmengine registries (scope ``tlalign_mm``) and
allow-lists the types mmengine checkpoints hold for torch >= 2.6's ``weights_only`` loading.  It
imports neither mmseg nor mmdet: their configs name our backbones across scopes,
``type='tlalign_mm.TLASwinTransformer'``, with ``custom_imports=dict(imports=['tlalign_mm.models'])``.
"""
from .version import __version__
from .utils import register_mmengine_safe_globals

# torch >= 2.6 loads with weights_only=True; allow-list what mmengine's own checkpoints hold.
register_mmengine_safe_globals()

from . import align, datasets, engine, evaluation, mixing  # noqa: F401  (fill the registries)
from .models import (TLAClsDataPreprocessor, TLAImageClassifier, TLAPyramidVisionTransformer, TLASwinTransformer,
                     TLAVisionTransformer)

__all__ = ['__version__', 'TLAVisionTransformer', 'TLASwinTransformer', 'TLAPyramidVisionTransformer',
           'TLAImageClassifier',
           'TLAClsDataPreprocessor']
