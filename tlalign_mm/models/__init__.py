from .backbones import TLASwinTransformer, TLAVisionTransformer
from .classifier import TLAClsDataPreprocessor, TLAImageClassifier

__all__ = ['TLAVisionTransformer', 'TLASwinTransformer', 'TLAClsDataPreprocessor', 'TLAImageClassifier']
