from .backbone_export import BackboneExportHook
from .nonfinite_loss import NonFiniteLossHook
from .token_fluctuation import TokenFluctuationHook

__all__ = ['TokenFluctuationHook', 'BackboneExportHook', 'NonFiniteLossHook']
