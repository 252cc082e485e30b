"""A signal becomes a checkpoint and a clean exit."""
from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Sequence

from mmengine.hooks import Hook
from torch.utils.data import DataLoader

from ...registry import HOOKS
from ..loops import EXIT_PREEMPTED, _ResumableLoop

__all__ = ['PreemptionHook']


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``); exit
    at once if the parent is already gone."""
    if not sys.platform.startswith('linux'):
        return
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))      # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(0)


class _WorkerSignals:
    """A data loader's ``worker_init_fn`` under :class:`PreemptionHook`: the worker ignores SIGINT and
    SIGUSR1, and SIGTERM until its parent is exiting, and dies with its parent; then it runs the loader's
    own ``worker_init_fn``.

    Slurm and torchrun signal every process of a job, data-loader workers included (torchrun signals the
    process group); a worker that died would end the main process before it could save.  SIGTERM is also
    how ``multiprocessing`` ends daemonic children when the main process exits (its ``atexit`` handler),
    so a worker obeys it, with a clean exit, once ``exiting`` is set: the hook sets it from an ``atexit``
    handler registered later, which therefore runs first.  A rank that dies without exiting (a crash,
    ``os._exit``, SIGKILL) takes its workers with it (Linux: ``PR_SET_PDEATHSIG``): left behind, they
    would hold the rank's inherited sockets while torchrun relaunches the job.
    """

    def __init__(self, worker_init_fn, exiting) -> None:
        self.worker_init_fn = worker_init_fn
        self.exiting = exiting
        self.parent = os.getpid()

    def __call__(self, worker_id: int) -> None:
        _die_with_parent(self.parent)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        exiting = self.exiting

        def on_sigterm(signum, frame):
            if exiting.is_set():
                os._exit(0)       # a clean exit: torch's SIGCHLD handler takes a death by signal for a crash

        signal.signal(signal.SIGTERM, on_sigterm)
        if self.worker_init_fn is not None:
            self.worker_init_fn(worker_id)


@HOOKS.register_module()
class PreemptionHook(Hook):
    """Stop the run on a signal, at an iteration every rank agrees on, with a checkpoint of that iteration.

    Slurm sends SIGTERM (or, with ``--signal``, a chosen signal some seconds ahead) before it kills a job;
    torchrun forwards SIGTERM to its workers and kills them 30 s later.  This hook turns each of
    ``signals``, on any rank, into a stop request of the resumable train loop
    (:meth:`~tlalign_mm.engine.ResumableEpochBasedTrainLoop.request_stop`): at the next iteration
    boundary, in training or validation, the ranks agree, the loop writes ``iter_<N>_interrupted.pth``
    and points ``last_checkpoint`` at it, and every rank exits with
    :data:`~tlalign_mm.engine.EXIT_PREEMPTED` (75).  ``tools/train.py --resume`` continues the same run
    from there.

    * Data-loader workers (training and validation) ignore the signals: their loaders get a
      ``worker_init_fn`` that says so, and the handler does nothing in a forked worker; the main process
      ends them.
    * A second SIGINT (Ctrl-C twice) raises ``KeyboardInterrupt`` at once.
    * ``requeue=True``: after the checkpoint is written, rank 0 runs ``scontrol requeue $SLURM_JOB_ID``
      (for sites where a preempted or timed-out job is not requeued by Slurm itself;
      ``tools/slurm_train.sh --requeue``).
    * The handlers are installed when training starts (``before_train``) and the previous ones put back
      when it ends; a signal before that ends the process as usual.

    Args:
        signals: signal names, from ``SIGTERM``, ``SIGUSR1``, ``SIGUSR2``, ``SIGINT``, ``SIGHUP``.
        requeue: run ``scontrol requeue`` after a stop on a signal.

    Raises:
        ValueError: an unknown or uncatchable signal name.
        TypeError: from ``before_train``, when the train loop is not a resumable one
            (``ResumableEpochBasedTrainLoop`` / ``ResumableIterBasedTrainLoop``).
    """

    priority = 'LOW'      # after_val_iter: after the logger has written the iteration
    _ALLOWED = ('SIGTERM', 'SIGUSR1', 'SIGUSR2', 'SIGINT', 'SIGHUP')

    def __init__(self, signals: Sequence[str] = ('SIGTERM', 'SIGUSR1', 'SIGINT'), requeue: bool = False) -> None:
        names = (signals,) if isinstance(signals, str) else tuple(signals)
        bad = [s for s in names if s not in self._ALLOWED or not hasattr(signal, s)]
        if bad:
            raise ValueError(f'PreemptionHook: signals must be among {self._ALLOWED}, got {bad}')
        self.signals = names
        self.requeue = bool(requeue)
        self._loop: _ResumableLoop | None = None
        self._previous: dict = {}
        self._owner: int | None = None

    def before_train(self, runner) -> None:
        loop = runner.train_loop
        if not isinstance(loop, _ResumableLoop):
            raise TypeError('PreemptionHook needs a resumable train loop: train_cfg = dict(type='
                            "'ResumableEpochBasedTrainLoop', ...) or dict(type='ResumableIterBasedTrainLoop', ...), "
                            f'got {type(loop).__name__}')
        self._loop = loop
        loop.requeue_on_signal = self.requeue
        exiting = multiprocessing.Event()
        atexit.register(exiting.set)
        for loader in (runner.train_dataloader, getattr(runner.val_loop, 'dataloader', None)):
            if isinstance(loader, DataLoader) and not isinstance(loader.worker_init_fn, _WorkerSignals):
                loader.worker_init_fn = _WorkerSignals(loader.worker_init_fn, exiting)
        if threading.current_thread() is not threading.main_thread():
            runner.logger.warning('PreemptionHook: training runs outside the main thread, where Python cannot '
                                  'install signal handlers; signals end the process as usual')
            return
        self._owner = os.getpid()
        for name in self.signals:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._on_signal)
        runner.logger.info(f'PreemptionHook: {", ".join(self.signals)} stop the run at the next iteration with a '
                           f'checkpoint (exit status {EXIT_PREEMPTED})')

    def _on_signal(self, signum: int, frame) -> None:
        if os.getpid() != self._owner:          # a forked data-loader worker: the main process decides
            return
        loop, name = self._loop, signal.Signals(signum).name
        if loop.stop_requested is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        loop.request_stop(name)
        os.write(2, f'[tlalign_mm] {name}: saving a checkpoint at the next iteration boundary, then exiting '
                    f'with status {EXIT_PREEMPTED}\n'.encode())

    def after_val_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self._loop is not None and self._loop.validating:
            self._loop.boundary(validating=True)

    def after_train(self, runner) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
        self._loop = None
