from .atomic_checkpoint import AtomicCheckpointHook, AtomicLocalBackend
from .backbone_export import BackboneExportHook
from .nonfinite_loss import NonFiniteLossHook
from .random_states import RandomStatesHook

__all__ = ['AtomicCheckpointHook', 'AtomicLocalBackend', 'BackboneExportHook', 'NonFiniteLossHook', 'RandomStatesHook']
