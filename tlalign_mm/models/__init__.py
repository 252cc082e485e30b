from .backbones import TLAPyramidVisionTransformer, TLASwinTransformer, TLAVisionTransformer
from .classifier import TLAImageClassifier
from .data_preprocessor import TLAClsDataPreprocessor

__all__ = ['TLAVisionTransformer', 'TLASwinTransformer', 'TLAPyramidVisionTransformer', 'TLAClsDataPreprocessor',
           'TLAImageClassifier']
