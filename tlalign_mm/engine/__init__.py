"""The runtime a config names: training loops that survive their cluster, and the hooks around them.

* :mod:`~tlalign_mm.engine.loops`: :class:`ResumableEpochBasedTrainLoop`,
  :class:`ResumableIterBasedTrainLoop` (mid-epoch resume, agreed stops, bad samples);
* :mod:`~tlalign_mm.engine.hooks`: :class:`PreemptionHook` (signals), :class:`WatchdogHook` (hangs),
  :class:`AtomicCheckpointHook`, :class:`RandomStatesHook`, :class:`OptimizerParamNamesHook`
  (resume), :class:`BackboneExportHook`, :class:`NonFiniteLossHook`;
* :mod:`~tlalign_mm.engine.run_config`: what makes two launches the same run;
* :mod:`~tlalign_mm.engine.auto_resume`: :func:`find_resumable_checkpoint`, where a relaunch continues.

Registered in tlalign_mm's ``LOOPS`` and ``HOOKS`` (``type='ResumableEpochBasedTrainLoop'``; from
mmseg / mmdet configs ``type='tlalign_mm.ResumableIterBasedTrainLoop'``).
"""
from .auto_resume import find_resumable_checkpoint
from .hooks import (
                    EXIT_HUNG,
                    AtomicCheckpointHook,
                    AtomicLocalBackend,
                    BackboneExportHook,
                    NonFiniteLossHook,
                    OptimizerParamNamesHook,
                    PreemptionHook,
                    RandomStatesHook,
                    WatchdogHook,
)
from .loops import (
                    BAD_SAMPLES_FILE,
                    EXIT_BAD_SAMPLES,
                    EXIT_PREEMPTED,
                    ResumableEpochBasedTrainLoop,
                    ResumableIterBasedTrainLoop,
                    TrainingStopped,
)
from .run_config import IncompatibleResumeError, run_config, run_config_digest

__all__ = ['ResumableEpochBasedTrainLoop', 'ResumableIterBasedTrainLoop', 'TrainingStopped', 'EXIT_PREEMPTED',
           'EXIT_BAD_SAMPLES', 'EXIT_HUNG', 'BAD_SAMPLES_FILE', 'IncompatibleResumeError', 'run_config',
           'run_config_digest', 'AtomicCheckpointHook', 'AtomicLocalBackend', 'BackboneExportHook',
           'NonFiniteLossHook', 'OptimizerParamNamesHook', 'PreemptionHook', 'RandomStatesHook', 'WatchdogHook',
           'find_resumable_checkpoint']
