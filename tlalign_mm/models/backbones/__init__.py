from .pvt import TLAPyramidVisionTransformer
from .swin import TLASwinTransformer
from .vit import TLAVisionTransformer

__all__ = ['TLAVisionTransformer', 'TLASwinTransformer', 'TLAPyramidVisionTransformer']
