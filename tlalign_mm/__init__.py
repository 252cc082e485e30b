"""tlalign_mm: Token-Label Alignment (Xiao et al., ICCV 2023) for DeiT, Swin and PVT on OpenMMLab.

``import tlalign_mm`` fills tlalign_mm's own mmengine registries (scope ``tlalign_mm``) and does nothing else:
no process-wide torch or mmengine setting, no environment variable, no output
(``tlalign_mm.checkpoint.register_checkpoint_loader`` is the tools' to call).  It imports neither mmseg nor
mmdet: their configs name our backbones across scopes, ``type='tlalign_mm.TLASwinTransformer'``, with
``custom_imports=dict(imports=['tlalign_mm.models'])``.
"""
from . import align, datasets, engine, evaluation, mixing  # noqa: F401  (fill the registries)
from .models import (TLAClsDataPreprocessor, TLAImageClassifier, TLAPyramidVisionTransformer, TLASwinTransformer,
                     TLAVisionTransformer)
from .version import __version__

__all__ = ['__version__', 'TLAVisionTransformer', 'TLASwinTransformer', 'TLAPyramidVisionTransformer',
           'TLAImageClassifier',
           'TLAClsDataPreprocessor']
