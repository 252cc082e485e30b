from .backbone_export import BackboneExportHook
from .nonfinite_loss import NonFiniteLossHook

__all__ = ['BackboneExportHook', 'NonFiniteLossHook']
