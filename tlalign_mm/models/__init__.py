from .backbones import TLAPyramidVisionTransformer, TLASwinTransformer, TLAVisionTransformer
from .classifier import TLAClsDataPreprocessor, TLAImageClassifier

__all__ = ['TLAVisionTransformer', 'TLASwinTransformer', 'TLAPyramidVisionTransformer', 'TLAClsDataPreprocessor',
           'TLAImageClassifier']
