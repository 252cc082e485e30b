"""Bit-exact resume: every random state a training run draws from travels with its checkpoints.

mmengine saves weights, optimizer, schedulers and the loop counters, and re-seeds from the config
on resume, so a resumed run draws different mixing boxes, erasing rectangles and drop-path masks
from the uninterrupted one.  :class:`RandomStatesHook` closes that gap for the training processes.
The data-loader side (each sample's augmentation) is the resumable loops' (:mod:`tlalign_mm.engine.loops`):
they give every sample its own seeded stream.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_dist_info
from mmengine.hooks import CheckpointHook, Hook
from mmengine.runner import EpochBasedTrainLoop

from ...registry import HOOKS

__all__ = ['RandomStatesHook', 'capture_random_states', 'restore_random_states']


def capture_random_states() -> dict:
    """This process's global random states, in types ``torch.load(weights_only=True)`` reads.

    Returns:
        ``{'python': random.getstate() (a tuple of ints), 'numpy': {'keys': int64 tensor [624], 'pos',
        'has_gauss', 'cached_gaussian'}, 'torch': uint8 tensor (the CPU generator),
        'cuda': [uint8 tensor per device]}``; ``'cuda'`` only once CUDA is initialised.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {'python': random.getstate(),
              'numpy': {'bit_generator': str(name), 'keys': torch.from_numpy(keys.astype(np.int64)),
                        'pos': int(pos), 'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)},
              'torch': torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: dict) -> str | None:
    """Set the global random states :func:`capture_random_states` returned.

    Returns:
        None, or, when the states hold CUDA generators for another number of devices than this process
        sees (a job requeued onto a node with another GPU count), a note for the log: the generators of
        the devices both have are restored (device ``i`` from the saved device ``i``), the others not.
    """
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in states['python']))
    n = states['numpy']
    np.random.set_state((n['bit_generator'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'],
                         n['cached_gaussian']))
    torch.set_rng_state(states['torch'])
    if 'cuda' not in states or not torch.cuda.is_available():
        return None
    saved, seen = len(states['cuda']), torch.cuda.device_count()
    for i in range(min(saved, seen)):
        torch.cuda.set_rng_state(states['cuda'][i], i)
    if saved == seen:
        return None
    return (f'the checkpoint holds CUDA random states for {saved} devices, this process sees {seen}: restored '
            f'those of devices 0..{min(saved, seen) - 1} only (resume on the same devices to continue exactly)')


@HOOKS.register_module()
class RandomStatesHook(Hook):
    """Carry every random state of training in the checkpoints, and restore it on resume.

    What it does (one process per rank, each with its own states):

    * **Saving.**  Each checkpoint gets ``checkpoint['random_states'] = {'world_size': W, 'iter': i,
      'ranks': [states of rank 0, ..., rank W-1]}`` (:func:`capture_random_states`: Python
      ``random``, NumPy, torch CPU, torch CUDA per device).  On W > 1 ranks the states are
      gathered (``mmengine.dist.all_gather_object``) on the iterations and epochs where a
      ``CheckpointHook`` saves, and before each validation.  The mixer's private generator (a
      ``seed`` in ``TLAClsDataPreprocessor``) is already a model buffer (``mix_step``).
    * **Restoring.**  After ``--resume`` or auto-resume, each rank sets its own states right before
      the first training batch is drawn (epoch-based loops: ``before_train_epoch``), or right before
      the first resumed iteration (iteration-based loops: ``before_train_iter``).  A checkpoint
      without states, or from a different number of ranks, is resumed as mmengine does, with a
      warning; one saved with another number of CUDA devices per process restores the devices
      both have, with a warning.
    * **Validation draws nothing.**  The states are saved before validation and put back after it,
      so a run validated more or less often trains identically, and a resumed run (which does not
      repeat the validation before its checkpoint) sees the same numbers.
    * **Unscheduled checkpoints.**  A checkpoint written outside the ``CheckpointHook`` schedule (the
      resumable loops' checkpoint on a signal) calls :meth:`gather` on every rank first.

    The augmentations of each sample are seeded per sample by the resumable loops
    (:class:`~tlalign_mm.engine.ResumableEpochBasedTrainLoop`); this hook restores the processes' own
    states (mixing boxes, erasing, drop path).  Limits: non-deterministic GPU kernels (atomics in
    backward, cuDNN autotuning) differ between any two runs.

    Args:
        restore: put the saved states back on resume (``False``: save them only).
    """

    priority = 'NORMAL'   # before CheckpointHook (VERY_LOW) in after_train_epoch / after_train_iter

    def __init__(self, restore: bool = True):
        self.restore = restore
        self._loaded: dict | None = None      # the states of the checkpoint just loaded
        self._pending: dict | None = None     # this rank's states, to set before the first resumed batch
        self._gathered: tuple[int, list] | None = None   # (iter, states of every rank) on W > 1
        self._val_states: dict | None = None  # the states before the running validation

    # ------------------------------------------------------------------ saving
    def _all_ranks(self, runner) -> list:
        rank, world = get_dist_info()
        if world == 1:
            return [self._val_states or capture_random_states()]
        if self._gathered is not None and self._gathered[0] == runner.iter:
            return self._gathered[1]
        runner.logger.warning('RandomStatesHook: no gathered random states for this checkpoint; saving rank 0\'s '
                              'only (resume will not restore them)')
        return [self._val_states or capture_random_states()]

    def gather(self, runner) -> None:
        """Collect every rank's states for a checkpoint of the current iteration (a collective: call it on
        every rank, before ``runner.save_checkpoint``); nothing to do on one process."""
        if get_dist_info()[1] > 1:
            self._gathered = (runner.iter, all_gather_object(self._val_states or capture_random_states()))

    def _checkpoint_due(self, runner, by_epoch: bool) -> bool:
        for h in runner.hooks:
            if not isinstance(h, CheckpointHook) or h.by_epoch != by_epoch:
                continue
            if by_epoch and (h.every_n_epochs(runner, h.interval, h.save_begin)
                             or (h.save_last and h.is_last_train_epoch(runner))):
                return True
            if not by_epoch and (h.every_n_train_iters(runner, h.interval, h.save_begin)
                                 or (h.save_last and h.is_last_train_iter(runner))):
                return True
        return False

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if get_dist_info()[1] > 1 and self._checkpoint_due(runner, by_epoch=False):
            self.gather(runner)

    def after_train_epoch(self, runner) -> None:
        if get_dist_info()[1] > 1 and self._checkpoint_due(runner, by_epoch=True):
            self.gather(runner)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        ranks = self._all_ranks(runner)
        checkpoint['random_states'] = {'world_size': len(ranks), 'iter': runner.iter, 'ranks': ranks}

    def before_val(self, runner) -> None:
        self._val_states = capture_random_states()
        self.gather(runner)   # a best checkpoint saved after this validation carries these states

    def after_val(self, runner) -> None:
        if self._val_states is not None:
            restore_random_states(self._val_states)
            self._val_states = None

    # ------------------------------------------------------------------ restoring
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._loaded = checkpoint.get('random_states')

    def before_train(self, runner) -> None:
        loaded, self._loaded = self._loaded, None
        rank, world = get_dist_info()
        if runner.iter == 0 or not self.restore:
            return   # a fresh run (``load_from`` without resume loads weights only)
        if loaded is None:
            runner.logger.warning('RandomStatesHook: the resumed checkpoint carries no random states (written '
                                  'without this hook); the run continues, but not as the uninterrupted one would')
            return
        if loaded['world_size'] != world:
            runner.logger.warning(f'RandomStatesHook: the checkpoint was written by {loaded["world_size"]} '
                                  f'processes, this run has {world}; random states not restored')
            return
        self._pending = loaded['ranks'][rank]

    def before_train_epoch(self, runner) -> None:
        if isinstance(runner.train_loop, EpochBasedTrainLoop):
            self._restore_pending(runner)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._restore_pending(runner)

    def _restore_pending(self, runner) -> None:
        if self._pending is not None:
            note = restore_random_states(self._pending)
            self._pending = None
            runner.logger.info(f'RandomStatesHook: random states restored (iteration {runner.iter})')
            if note:
                runner.logger.warning(f'RandomStatesHook: {note}')
