from .backbones import TLASwinTransformer, TLAVisionTransformer

__all__ = ['TLAVisionTransformer', 'TLASwinTransformer']
