from .atomic_checkpoint import AtomicCheckpointHook, AtomicLocalBackend
from .backbone_export import BackboneExportHook
from .nonfinite_loss import NonFiniteLossHook
from .optimizer_names import OptimizerParamNamesHook
from .preemption import PreemptionHook
from .random_states import RandomStatesHook
from .watchdog import EXIT_HUNG, WatchdogHook

__all__ = ['AtomicCheckpointHook', 'AtomicLocalBackend', 'BackboneExportHook', 'NonFiniteLossHook',
           'OptimizerParamNamesHook', 'PreemptionHook', 'RandomStatesHook', 'WatchdogHook', 'EXIT_HUNG']
