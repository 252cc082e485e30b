from .base import FeatureInfo, TLABackbone
from .pvt import TLAPyramidVisionTransformer
from .swin import TLASwinTransformer
from .vit import TLAVisionTransformer

__all__ = ['TLABackbone', 'FeatureInfo', 'TLAVisionTransformer', 'TLASwinTransformer', 'TLAPyramidVisionTransformer']
