from .backbone_export import BackboneExportHook
from .token_fluctuation import TokenFluctuationHook

__all__ = ['TokenFluctuationHook', 'BackboneExportHook']
