"""Training loops that survive their cluster: mid-epoch resume to the same run, a stop every rank agrees
on, and bad samples that cost one line.

:class:`ResumableEpochBasedTrainLoop` and :class:`ResumableIterBasedTrainLoop` are mmengine's
``EpochBasedTrainLoop`` / ``IterBasedTrainLoop`` with these additions:

* **The training loader is resumable.**  Its dataset is wrapped in
  :class:`~tlalign_mm.datasets.FaultTolerantDataset` and its batch sampler in
  :class:`~tlalign_mm.datasets.ResumableBatchSampler`: every sample draws its augmentation from a stream
  seeded by ``(seed, epoch, rank, position)``, and a resumed epoch starts after its trained batches by
  drawing and dropping their indices, without reading their images (mmengine's iteration loop loads
  every skipped batch).  The position (epoch, batches done, batches per epoch) is kept in the message
  hub, so every checkpoint carries it.
* **Ranks agree at iteration boundaries.**  After every training iteration (and, through
  :class:`~tlalign_mm.engine.PreemptionHook`, every validation iteration) the ranks sum a few integers
  over a CPU (gloo) group, asynchronously: the sum started at one boundary is read at the next, so the
  step never waits for it.  A stop requested on any rank (a signal) is thus acted on by all ranks at the
  same iteration; so are new bad samples.
* **A stop is a checkpoint and an exit.**  The loop writes ``iter_<N>_interrupted.pth`` (atomically, with
  every rank's random states and the loop's position) and points ``last_checkpoint`` at it, waits for
  every rank, and raises :class:`TrainingStopped`: a ``SystemExit`` with :data:`EXIT_PREEMPTED` (75,
  sysexits' EX_TEMPFAIL: "try again") after a signal, :data:`EXIT_BAD_SAMPLES` (65, EX_DATAERR) when the
  bad samples exceed ``max_bad_fraction``.  The next regular checkpoint replaces the interrupted one,
  which is then deleted.
* **Validation runs exactly once per due point.**  A checkpoint written before a due validation (every
  regular one is) or during it makes the resumed run validate first.
* **A resume must be the same run.**  The config keys that decide the weights
  (:func:`~tlalign_mm.engine.run_config.run_config`) travel in the checkpoints; a resume whose config
  differs stops with one line naming the keys (:class:`~tlalign_mm.engine.run_config.IncompatibleResumeError`),
  unless ``allow_config_change=True`` (``tools/train.py --allow-config-change``).
* **Bad samples** (:class:`~tlalign_mm.datasets.FaultTolerantDataset` substitutes them) are logged once
  each, listed in ``<work_dir>/bad_samples.txt`` (``path<TAB>reason`` per line), carried across resumes,
  and stop the run when more than ``max_bad_fraction`` of the training set is bad.

The loops need the training loader as a config dict (they wrap its dataset and batch sampler).
"""
from __future__ import annotations

import copy
import logging
import os
import os.path as osp
import subprocess
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist
from mmengine.dataset import InfiniteSampler
from mmengine.dist import get_dist_info, is_main_process
from mmengine.logging import print_log
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop
from mmengine.runner.base_loop import BaseLoop
from mmengine.runner.utils import calc_dynamic_intervals

from ..checkpoint.io import atomic_write
from ..datasets.fault_tolerant import RecordingCollate, ResumableBatchSampler
from ..registry import LOOPS
from .hooks.random_states import RandomStatesHook
from .run_config import IncompatibleResumeError, config_changes, run_config

__all__ = ['ResumableEpochBasedTrainLoop', 'ResumableIterBasedTrainLoop', 'TrainingStopped', 'EXIT_PREEMPTED',
           'EXIT_BAD_SAMPLES', 'BAD_SAMPLES_FILE']

#: Exit status after a stop signal (sysexits' EX_TEMPFAIL): a checkpoint of the last iteration was saved;
#: run the same command again (with ``--resume``) to continue.
EXIT_PREEMPTED = 75
#: Exit status when more than ``max_bad_fraction`` of the training samples failed to load (EX_DATAERR).
EXIT_BAD_SAMPLES = 65
#: The file in the work dir that lists the skipped samples, ``path<TAB>reason`` per line.
BAD_SAMPLES_FILE = 'bad_samples.txt'

# message-hub keys, saved in every checkpoint and restored on resume (none starts with 'train', 'val' or
# 'test', which mmengine's LogProcessor would print as metrics)
_POSITION = 'loop/position'                  # [epoch (or sampler pass), batches done in it, batches per epoch]
_VALIDATED = 'loop/validated_at_iter'        # the iteration count of the last validation (None: none yet)
_RUN_CONFIG = 'loop/run_config'              # run_config(cfg) of the run
_BAD_SAMPLES = 'loop/bad_samples'            # {path: reason} of the samples skipped so far
_INTERRUPTED = 'loop/interrupted_checkpoint'  # the checkpoint a stop wrote, until a regular one replaces it

class TrainingStopped(SystemExit):
    """The run stopped on purpose, at an iteration every rank agreed on, after saving a checkpoint of it.

    A ``SystemExit``: uncaught, the process exits with :attr:`code` and no traceback.

    Attributes:
        code: :data:`EXIT_PREEMPTED` or :data:`EXIT_BAD_SAMPLES`.
        message: one line: why, where, the checkpoint, what to do.
        checkpoint: the path of the checkpoint written.
    """

    def __init__(self, code: int, message: str, checkpoint: str) -> None:
        super().__init__(code)
        self.message = message
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        return self.message


class _Consensus:
    """Sums of a few ints over all ranks, one round per boundary, asynchronous (gloo, CPU tensors).

    :meth:`exchange` starts the round of this boundary and returns the previous round's sums with the
    payload this rank sent with them, so a boundary never waits for its own round; on one process it
    returns the round at once.
    """

    def __init__(self) -> None:
        self.world = get_dist_info()[1]
        self.group = None
        if self.world > 1 and dist.get_backend() != 'gloo':
            self.group = dist.new_group(backend='gloo')   # keeps the agreement off the GPU stream
        self._work = self._sums = self._payload = None

    def exchange(self, counts: list[int], payload: list) -> tuple[list[int], list] | None:
        if self.world == 1:
            return counts, payload
        done = self.drain()
        self._sums = torch.tensor(counts, dtype=torch.int64)
        self._payload = payload
        self._work = dist.all_reduce(self._sums, group=self.group, async_op=True)
        return done

    def drain(self) -> tuple[list[int], list] | None:
        if self._work is None:
            return None
        self._work.wait()
        self._work = None
        return self._sums.tolist(), self._payload

    def gather(self, payload: list) -> list:
        if self.world == 1:
            return list(payload)
        parts: list = [None] * self.world
        dist.all_gather_object(parts, payload, group=self.group)
        return [item for part in parts for item in part]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier(group=self.group)


def _resumable_loader_cfg(dataloader: Any, runner, check_files: bool) -> dict:
    """The training loader config with :class:`FaultTolerantDataset` around its dataset and
    :class:`ResumableBatchSampler` around its batch sampler."""
    if not isinstance(dataloader, Mapping):
        raise TypeError('the resumable train loops wrap the training dataset and batch sampler, so they need '
                        f'train_dataloader as a config dict, not a built {type(dataloader).__name__}')
    cfg = copy.deepcopy(dict(dataloader))
    cfg['dataset'] = dict(type='tlalign_mm.FaultTolerantDataset', dataset=cfg['dataset'], check_files=check_files)
    cfg['batch_sampler'] = dict(type='tlalign_mm.ResumableBatchSampler', batch_sampler=cfg.pop('batch_sampler', None),
                                drop_last=cfg.pop('drop_last', False), seed=runner.seed, rank=get_dist_info()[0])
    return cfg


def _requeue(logger) -> None:
    """``scontrol requeue $SLURM_JOB_ID`` (Slurm requeues the batch job once this one has ended)."""
    job = os.environ.get('SLURM_JOB_ID')
    if not job:
        logger.warning('requeue asked for, but SLURM_JOB_ID is not set (not a Slurm job): not requeued')
        return
    try:
        out = subprocess.run(['scontrol', 'requeue', job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        logger.warning(f'scontrol requeue {job} failed: {e}')
        return
    if out.returncode:
        logger.warning(f'scontrol requeue {job} failed ({out.returncode}): {out.stderr.strip()}')
    else:
        logger.info(f'Slurm job {job} requeued (scontrol requeue)')


class _BadSamples:
    """The samples skipped so far, all ranks' (message hub ``bad_samples``, ``bad_samples.txt``)."""

    def __init__(self, runner, num_samples: int, max_fraction: float) -> None:
        self.runner = runner
        self.known: dict[str, str] = dict(runner.message_hub.get_info(_BAD_SAMPLES) or {})
        self.pending: list[dict] = []        # this rank's records not yet shared
        self.num_samples, self.max_fraction = num_samples, max_fraction

    def add(self, records: list[dict]) -> None:
        """Log and list the records whose path is new (every rank calls it with the same records)."""
        new = False
        for r in records:
            if r['path'] not in self.known:
                new = True
                self.known[r['path']] = r['reason']
                self.runner.logger.warning(f'skipped bad sample {r["path"]}: {r["reason"]} (index {r["index"]}; '
                                           f'listed in {BAD_SAMPLES_FILE})')
        if not new:
            return
        self.runner.message_hub.update_info(_BAD_SAMPLES, dict(self.known))
        if is_main_process():
            atomic_write(''.join(f'{p}\t{why}\n' for p, why in self.known.items()),
                         osp.join(self.runner.work_dir, BAD_SAMPLES_FILE))

    def exceeded(self) -> str | None:
        if len(self.known) <= self.max_fraction * self.num_samples:
            return None
        first = next(iter(self.known.items()))
        return (f'{len(self.known)} of {self.num_samples} training samples failed to load, more than '
                f'max_bad_fraction={self.max_fraction:g} (first: {first[0]}: {first[1]}; all in '
                f'{osp.join(self.runner.work_dir, BAD_SAMPLES_FILE)}); fix or remove the files, or raise '
                'train_cfg.max_bad_fraction')


class _ResumableLoop:
    """What both resumable loops share (module docstring).  A loop adds ``_resume_position()`` (epoch and
    batches done at the resumed checkpoint), ``_val_due()`` and ``_where(validating)`` (a stop's place in
    words)."""

    # set by the concrete loops' __init__ (mmengine's loop attributes)
    _epoch: int
    _iter: int
    _max_epochs: int
    _max_iters: int

    def _init_resumable(self, max_bad_fraction: float, allow_config_change: bool) -> None:
        if not 0 <= max_bad_fraction <= 1:
            raise ValueError(f'max_bad_fraction must be in [0, 1], got {max_bad_fraction}')
        self.max_bad_fraction = float(max_bad_fraction)
        self.allow_config_change = bool(allow_config_change)
        #: set by PreemptionHook: run ``scontrol requeue`` (rank 0) after a stop on a signal
        self.requeue_on_signal = False
        loader = self.dataloader
        self.batch_sampler: ResumableBatchSampler = loader.batch_sampler
        loader.collate_fn = RecordingCollate(loader.collate_fn)
        # torch draws each loader iterator's base seed from this generator, or from the global one when it
        # is None: a resumed epoch would draw it at another point of the global stream than the original
        # (every sample is seeded on its own, so the value itself does not matter)
        loader.generator = torch.Generator().manual_seed(0)
        self._stop_signal: str | None = None
        self._validating = False
        self._validated_before = None
        self._resume_at: tuple[int, int] | None = None
        self._consensus: _Consensus | None = None
        self._bad: _BadSamples | None = None
        self._interrupted: str | None = None
        self._last_ckpt_at_start = None

    # ------------------------------------------------------------------ public
    @property
    def validating(self) -> bool:
        """Whether this loop's validation is running (the boundaries of :class:`PreemptionHook`)."""
        return self._validating

    @property
    def stop_requested(self) -> str | None:
        """What asked this rank to stop (e.g. ``'SIGTERM'``), or ``None``."""
        return self._stop_signal

    def request_stop(self, reason: str) -> None:
        """Ask for a stop at the next boundary (a signal handler calls it; only sets a flag).

        Args:
            reason: what asked, e.g. ``'SIGTERM'``; the first request is kept.
        """
        if self._stop_signal is None:
            self._stop_signal = reason

    def boundary(self, validating: bool = False) -> None:
        """An iteration boundary: exchange this rank's news (stop requested, new bad samples) with the
        other ranks and act on the previous round's sums (log and list bad samples; stop).

        Called by the loop after every training iteration and by :class:`PreemptionHook` after every
        validation iteration; every rank calls it the same number of times.

        Raises:
            TrainingStopped: the ranks agreed to stop (after the checkpoint is written).
        """
        self._drop_superseded_checkpoint()
        payload, self._bad.pending = self._bad.pending, []
        agreed = self._consensus.exchange([int(self._stop_signal is not None), len(payload)], payload)
        if agreed is not None:
            self._act(agreed, validating)

    # ------------------------------------------------------------------ start and end
    def _begin(self) -> None:
        runner = self.runner
        hub = runner.message_hub
        self._consensus = _Consensus()
        self._bad = _BadSamples(runner, len(self.dataloader.dataset), self.max_bad_fraction)
        self._check_run_config()
        self._last_ckpt_at_start = hub.get_info('last_ckpt')
        self._interrupted = hub.get_info(_INTERRUPTED)
        resumed = self._iter > 0
        ours = hub.get_info(_POSITION) is not None
        self._resume_at = self._resume_position() if resumed else (0, 0)
        if resumed and ours and self._resume_at[1] == 0:
            self._decide_current_val_interval()
            validated = hub.get_info(_VALIDATED)
            if self._val_due() and (validated is None or validated < self._iter):
                runner.logger.info(f'validating iteration {self._iter} first: the checkpoint was written before '
                                   'its validation finished')
                self._validate()

    def _end(self) -> None:
        agreed = self._consensus.drain()
        if agreed is not None and agreed[0][1]:
            self._bad.add(self._consensus.gather(agreed[1]))     # list them; the run has finished anyway

    def _check_run_config(self) -> None:
        hub = self.runner.message_hub
        current = run_config(self.runner.cfg)
        saved = hub.get_info(_RUN_CONFIG)
        if self._iter > 0 and saved is not None:
            changes = config_changes(saved, current)
            if changes and not self.allow_config_change:
                raise IncompatibleResumeError(
                    f'the checkpoint in {self.runner.work_dir} is another run\'s: {changes}; resume it with its own '
                    'config, train into another work dir, or pass --allow-config-change to continue it anyway')
            if changes:
                self.runner.logger.warning(f'resuming with a changed config (allow_config_change): {changes}')
        hub.update_info(_RUN_CONFIG, current)

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        hub = self.runner.message_hub
        self._validated_before = hub.get_info(_VALIDATED)
        hub.update_info(_VALIDATED, self._iter)     # checkpoints written by the validation itself count it
        self._validating = True
        try:
            self.runner.val_loop.run()
        finally:
            self._validating = False

    # ------------------------------------------------------------------ acting on an agreed round
    def _act(self, agreed: tuple[list[int], list], validating: bool) -> None:
        (stops, new_bad), payload = agreed
        if new_bad:
            self._bad.add(self._consensus.gather(payload))
            why = self._bad.exceeded()
            if why is not None:
                self._stop(EXIT_BAD_SAMPLES, why, validating)
        if stops:
            here = self._stop_signal
            reason = f'{here} received' if here else 'a stop signal reached another rank'
            self._stop(EXIT_PREEMPTED, reason, validating)

    def _stop(self, code: int, reason: str, validating: bool) -> None:
        runner = self.runner
        hub = runner.message_hub
        self._consensus.drain()                   # the round this boundary started: every rank waits for it
        if validating:                            # the running validation is not done: the resume redoes it
            hub.update_info(_VALIDATED, self._validated_before)
        name = f'iter_{self._iter}_interrupted.pth'
        path = osp.join(runner.work_dir, name)
        hub.update_info(_INTERRUPTED, path)
        for hook in runner.hooks:
            if isinstance(hook, RandomStatesHook):
                hook.gather(runner)
        runner.save_checkpoint(runner.work_dir, name, meta=dict(epoch=self._epoch, iter=self._iter),
                               backend_args=dict(backend='atomic_local'))
        if is_main_process():
            atomic_write(path, osp.join(runner.work_dir, 'last_checkpoint'))
        self._consensus.barrier()                 # rank 0's file is durable before any rank exits
        if code == EXIT_PREEMPTED and self.requeue_on_signal and is_main_process():
            _requeue(runner.logger)
        message = (f'{reason}: stopped at iteration {self._iter} ({self._where(validating)}) and saved {path}; '
                   'run the same command with --resume to continue')
        runner.logger.warning(message)
        raise TrainingStopped(code, message, path)

    def _drop_superseded_checkpoint(self) -> None:
        """Delete the checkpoint of an earlier stop once a regular checkpoint was written after it."""
        if self._interrupted is None:
            return
        last = self.runner.message_hub.get_info('last_ckpt')
        if last is None or last == self._last_ckpt_at_start:
            return
        if is_main_process() and osp.isfile(self._interrupted):
            os.remove(self._interrupted)
            self.runner.logger.info(f'removed {self._interrupted}: {last} supersedes it')
        self._interrupted = None
        self.runner.message_hub.update_info(_INTERRUPTED, None)


def _check_pass_length(done: int, per_pass: int, n: int, where: str) -> int:
    """``n``, the batches in one pass of this run's loader, when a checkpoint that stopped after ``done`` of
    ``per_pass`` batches in ``where`` can resume on it; else IncompatibleResumeError (the set, its sampler or
    the batch size changed, so the skipped batches would not be the trained ones)."""
    if done and per_pass != n:
        raise IncompatibleResumeError(
            f'the checkpoint stopped after batch {done} of {per_pass} in {where}, but this run has {n} batches '
            'per pass: the training set, its sampler or the batch size changed')
    return n


@LOOPS.register_module()
class ResumableEpochBasedTrainLoop(_ResumableLoop, EpochBasedTrainLoop):
    """mmengine's ``EpochBasedTrainLoop`` that resumes mid-epoch to the same run (module docstring).

    Args:
        runner, dataloader, max_epochs, val_begin, val_interval, dynamic_intervals: as
            ``EpochBasedTrainLoop``; ``dataloader`` must be a config dict.
        max_bad_fraction: the fraction of the training set (``len(dataset)``) that may be bad before the
            run stops with :data:`EXIT_BAD_SAMPLES`; 0 stops at the first bad sample.
        check_files: check each sample's image files before its pipeline
            (:func:`~tlalign_mm.datasets.check_image_file`: empty files, truncated JPEGs, PNG CRCs).
        allow_config_change: resume a checkpoint whose run config differs (a warning names the keys).

    Raises:
        TypeError: ``dataloader`` is a built ``DataLoader``.
        ValueError: ``max_bad_fraction`` outside [0, 1].
        IncompatibleResumeError: from ``run``, when the resumed checkpoint is another run's, or its
            position does not fit the training loader (another number of batches per epoch).
        TrainingStopped: from ``run``, on an agreed stop (a ``SystemExit``).
    """

    def __init__(self, runner, dataloader, max_epochs: int, val_begin: int = 1, val_interval: int = 1,
                 dynamic_intervals=None, max_bad_fraction: float = 0.001, check_files: bool = True,
                 allow_config_change: bool = False) -> None:
        super().__init__(runner, _resumable_loader_cfg(dataloader, runner, check_files), max_epochs,
                         val_begin, val_interval, dynamic_intervals)
        self._init_resumable(max_bad_fraction, allow_config_change)

    def run(self) -> torch.nn.Module:
        self.runner.call_hook('before_train')
        self._begin()
        while self._epoch < self._max_epochs and not self.stop_training:
            self.run_epoch()
            self._decide_current_val_interval()
            if self._val_due():
                self._validate()
        self._end()
        self.runner.call_hook('after_train')
        return self.runner.model

    def run_epoch(self) -> None:
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        start = self._resume_at[1] if self._resume_at is not None else 0
        self._resume_at = None
        self.batch_sampler.set_epoch(self._epoch)
        self.batch_sampler.skip(start)
        hub, per_epoch = self.runner.message_hub, len(self.dataloader)
        for idx, (data_batch, records) in enumerate(self.dataloader, start):
            self._bad.pending.extend(records)
            hub.update_info(_POSITION, [self._epoch, idx + 1, per_epoch])
            self.run_iter(idx, data_batch)
            self.boundary()
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1

    def _val_due(self) -> bool:
        return (self.runner.val_loop is not None and self._epoch >= self.val_begin
                and (self._epoch % self.val_interval == 0 or self._epoch == self._max_epochs))

    def _resume_position(self) -> tuple[int, int]:
        position = self.runner.message_hub.get_info(_POSITION)
        if position is None:                      # a checkpoint of mmengine's loop: an epoch boundary
            return self._epoch, 0
        epoch, done, per_epoch = position
        if done == per_epoch and epoch + 1 == self._epoch:
            epoch, done = epoch + 1, 0             # an epoch's own checkpoint (after_train_epoch)
        n = _check_pass_length(done, per_epoch, len(self.dataloader), f'epoch {epoch + 1}')
        if epoch != self._epoch or (done and self._iter != epoch * n + done):
            raise IncompatibleResumeError(
                f'the checkpoint\'s position (epoch {epoch + 1}, batch {done}) does not match its counters '
                f'(epoch {self._epoch}, iteration {self._iter})')
        if done:   # done == n: a stop after the epoch's last batch; the epoch's end (hooks, validation) follows
            self.runner.logger.info(f'resuming epoch {epoch + 1} after batch {done} of {n} (its indices are drawn '
                                    'and skipped; no image of a skipped batch is read)')
        return epoch, done

    def _where(self, validating: bool) -> str:
        if validating:
            return f'during the validation after epoch {self._epoch}'
        epoch, done, per_epoch = self.runner.message_hub.get_info(_POSITION)
        return f'epoch {epoch + 1}, batch {done} of {per_epoch}'


@LOOPS.register_module()
class ResumableIterBasedTrainLoop(_ResumableLoop, IterBasedTrainLoop):
    """mmengine's ``IterBasedTrainLoop`` that resumes to the same run without loading the trained batches.

    The loader is iterated lazily (mmengine's loop starts its workers when it is built); when a pass of a
    finite sampler ends, the next epoch of the sampler starts (``set_epoch``), as mmengine's
    ``_InfiniteDataloaderIterator`` does.

    Args:
        runner, dataloader, max_iters, val_begin, val_interval, dynamic_intervals: as
            ``IterBasedTrainLoop``; ``dataloader`` must be a config dict.
        max_bad_fraction, check_files, allow_config_change: as :class:`ResumableEpochBasedTrainLoop`.

    Raises:
        As :class:`ResumableEpochBasedTrainLoop`; RuntimeError from ``run`` for a training loader that
        yields no batch.
    """

    def __init__(self, runner, dataloader, max_iters: int, val_begin: int = 1, val_interval: int = 1000,
                 dynamic_intervals=None, max_bad_fraction: float = 0.001, check_files: bool = True,
                 allow_config_change: bool = False) -> None:
        # IterBasedTrainLoop.__init__ without its _InfiniteDataloaderIterator, which starts the workers
        BaseLoop.__init__(self, runner, _resumable_loader_cfg(dataloader, runner, check_files))
        self._max_iters = int(max_iters)
        if self._max_iters != max_iters:
            raise ValueError(f'max_iters must be an integer, got {max_iters}')
        self._max_epochs = 1
        self._epoch = 0
        self._iter = 0
        self.val_begin = val_begin
        self.val_interval = val_interval
        self.stop_training = False
        metainfo = getattr(self.dataloader.dataset, 'metainfo', None)
        if metainfo is not None:
            self.runner.visualizer.dataset_meta = metainfo
        self.dynamic_milestones, self.dynamic_intervals = calc_dynamic_intervals(self.val_interval, dynamic_intervals)
        self._init_resumable(max_bad_fraction, allow_config_change)

    def run(self) -> torch.nn.Module:
        self.runner.call_hook('before_train')
        self.runner.call_hook('before_train_epoch')
        self._begin()
        batches = self._batches()
        while self._iter < self._max_iters and not self.stop_training:
            self.runner.model.train()
            self.run_iter(next(batches))
            self.boundary()
            self._decide_current_val_interval()
            if self._val_due():
                self._validate()
        self._end()
        self.runner.call_hook('after_train_epoch')
        self.runner.call_hook('after_train')
        return self.runner.model

    def _batches(self) -> Iterator[Any]:
        """The training batches from the resume position on, sampler pass after sampler pass."""
        epoch, done = self._resume_at
        hub = self.runner.message_hub
        while True:
            self.batch_sampler.set_epoch(epoch)
            self.batch_sampler.skip(done)
            start, per_epoch = done, len(self.dataloader)
            for data_batch, records in self.dataloader:
                done += 1
                self._bad.pending.extend(records)
                hub.update_info(_POSITION, [epoch, done, per_epoch])
                yield data_batch
            if done == start == 0:
                raise RuntimeError('the training dataloader yields no batch')
            print_log(f'the training sampler finished pass {epoch + 1}; starting pass {epoch + 2}',
                      logger='current', level=logging.INFO)
            epoch, done = epoch + 1, 0

    def _val_due(self) -> bool:
        return (self.runner.val_loop is not None and self._iter >= self.val_begin
                and (self._iter % self.val_interval == 0 or self._iter == self._max_iters))

    def _resume_position(self) -> tuple[int, int]:
        position = self.runner.message_hub.get_info(_POSITION)
        if position is not None:
            epoch, done, per_pass = position
            _check_pass_length(done, per_pass, len(self.dataloader), f'sampler pass {epoch + 1}')
            self.runner.logger.info(f'resuming after {self._iter} iterations: sampler pass {epoch + 1}, batch {done} '
                                    '(the trained batches\' indices are drawn and skipped, their images not read)')
            return epoch, done
        # a checkpoint of mmengine's loop: an infinite sampler ran one pass; a finite one ran whole passes
        if isinstance(self.batch_sampler.sampler, InfiniteSampler):
            return 0, self._iter
        return divmod(self._iter, len(self.dataloader))

    def _where(self, validating: bool) -> str:
        return f'during the validation at iteration {self._iter}' if validating else f'iteration {self._iter}'
