"""tlalign_mm: Token-Label Alignment (Xiao et al., ICCV 2023) for DeiT and Swin on OpenMMLab.

``import tlalign_mm`` registers the backbones in tlalign_mm's own registries and, when mmseg /
mmdet are installed, in theirs (:mod:`tlalign_mm.models.downstream`).
"""
from .version import __version__
from .utils import register_mmengine_safe_globals

# torch >= 2.6 loads with weights_only=True; allow-list what mmengine's own checkpoints hold.
register_mmengine_safe_globals()

from . import align, datasets, evaluation, hooks, mixing  # noqa: F401  (fill the registries)
from .models import TLAClsDataPreprocessor, TLAImageClassifier, TLASwinTransformer, TLAVisionTransformer
from .models.downstream import register_downstream

registered_scopes = register_downstream()

__all__ = ['__version__', 'TLAVisionTransformer', 'TLASwinTransformer', 'TLAImageClassifier',
           'TLAClsDataPreprocessor', 'registered_scopes']
