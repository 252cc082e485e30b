"""End a run that has stopped making progress, naming the rank that holds it up."""
from __future__ import annotations

import atexit
import datetime
import json
import os
import sys
import threading
import time
import traceback

from mmengine.dist import get_dist_info
from mmengine.hooks import Hook

from ...registry import HOOKS

__all__ = ['WatchdogHook', 'EXIT_HUNG']

#: Exit status of a rank the watchdog ends (as coreutils ``timeout``).
EXIT_HUNG = 124

#: Frames of these files mean the main thread waits for the other ranks (a collective, DDP's gradient
#: all-reduce inside backward, a barrier).
_WAITING = (os.sep + os.path.join('torch', 'distributed') + os.sep,
            os.sep + os.path.join('torch', 'nn', 'parallel', 'distributed.py'),
            os.sep + os.path.join('torch', 'autograd') + os.sep,
            os.sep + os.path.join('mmengine', 'dist') + os.sep)


def _main_thread_place() -> tuple[str, bool]:
    """Where the main thread is (``'file:line in function'``: the innermost frame of :data:`_WAITING` when
    there is one, else the innermost Python frame) and whether it waits for the other ranks."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    if frame is None:
        return 'unknown', False
    stack = traceback.extract_stack(frame)
    waiting = [fs for fs in stack if any(w in fs.filename for w in _WAITING)]
    inner = waiting[-1] if waiting else stack[-1]
    return f'{inner.filename}:{inner.lineno} in {inner.name}', bool(waiting)


@HOOKS.register_module()
class WatchdogHook(Hook):
    """End the run when it makes no progress for ``timeout`` seconds, with a message naming the rank.

    A rank stuck in a collective (a peer that never arrives, a deadlocked data loader, a hung file system)
    otherwise holds every GPU of the job until the cluster's wall time.  Progress is any training,
    validation or test iteration, and the start and end of validation.  A daemon thread per rank checks
    every ``interval`` seconds; on a job of several ranks it also publishes where its rank's main thread is
    (file, line, function; whether that is inside ``torch.distributed``, DDP or autograd, i.e. waiting for
    the others) to the job's TCP store (``MASTER_ADDR`` / ``MASTER_PORT``, as torchrun and mmengine's
    launchers set them).  When ``timeout`` passes without progress the rank prints one report on stderr,
    e.g.::

        [tlalign_mm] WatchdogHook: rank 0 made no progress for 31 s (timeout 30 s) after train iteration 12;
        held up by rank 1 (at hooks.py:20 in after_train_iter, not in a collective); waiting: rank 0
        (torch/distributed/distributed_c10d.py:2953 in all_reduce); ending rank 0 with exit status 124

    and ends its process with :data:`EXIT_HUNG` (``os._exit``: a rank blocked in a collective cannot
    unwind).  torchrun then ends the other ranks, or restarts the job when a restart budget is left
    (``tools/dist_train.sh``, ``MAX_RESTARTS``), which resumes from the last checkpoint.  A rank whose run
    raised (e.g. a collective whose peer was ended) stops watching when its interpreter exits
    (``atexit``): the error is its report.

    Set ``timeout`` above the longest step without an iteration: the first iteration (workers starting,
    cuDNN autotuning), a checkpoint save on a slow file system, and an evaluation's metric computation
    (COCO mask AP takes minutes on rank 0 while the others wait).

    Args:
        timeout: seconds without progress before the rank is ended (default 30 minutes).
        interval: seconds between checks; default ``min(timeout / 4, 30)``.

    Raises:
        ValueError: ``timeout`` or ``interval`` not above 0 seconds.
    """

    priority = 'VERY_HIGH'

    def __init__(self, timeout: float = 1800.0, interval: float | None = None) -> None:
        if timeout <= 0:
            raise ValueError(f'WatchdogHook: timeout must be > 0 seconds, got {timeout}')
        self.timeout = float(timeout)
        self.interval = float(interval) if interval is not None else min(self.timeout / 4, 30.0)
        if not self.interval > 0:
            raise ValueError(f'WatchdogHook: interval must be > 0 seconds, got {interval}')
        self._last = time.monotonic()
        self._where = 'starting'
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._store = None
        self._rank, self._world = 0, 1

    # ------------------------------------------------------------------ progress
    def _beat(self, where: str) -> None:
        self._last = time.monotonic()
        self._where = where

    def before_run(self, runner) -> None:
        self._rank, self._world = get_dist_info()
        self._store = self._connect() if self._world > 1 else None
        self._beat('the start of the run')
        self._stop.clear()
        # a rank whose run raised (e.g. a collective whose peer the watchdog ended) is exiting, not stuck:
        # its exit is torchrun's to finish, and a report from inside the interpreter's shutdown would
        # name this rank as the one holding the job up
        atexit.register(self._stop.set)
        self._thread = threading.Thread(target=self._watch, name='tlalign-watchdog', daemon=True)
        self._thread.start()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._beat(f'train iteration {runner.iter + 1}')

    def before_val(self, runner) -> None:
        self._beat('the start of validation')

    def after_val_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._beat(f'validation iteration {batch_idx + 1}')

    def after_val(self, runner) -> None:
        self._beat('the end of validation')

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._beat(f'test iteration {batch_idx + 1}')

    def after_run(self, runner) -> None:
        self._stop.set()
        atexit.unregister(self._stop.set)

    # ------------------------------------------------------------------ the thread
    def _connect(self):
        """A client of the job's TCP store, under a prefix of this launch, or None."""
        host, port = os.environ.get('MASTER_ADDR'), os.environ.get('MASTER_PORT')
        if not host or not port:
            return None
        try:
            from torch.distributed import PrefixStore, TCPStore
            store = TCPStore(host, int(port), is_master=False, timeout=datetime.timedelta(seconds=10),
                             wait_for_workers=False)
        except (RuntimeError, ValueError, OSError):
            return None
        return PrefixStore(f'tlalign_watchdog/{os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")}', store)

    def _status(self, now: float) -> dict:
        place, waiting = _main_thread_place()
        return dict(rank=self._rank, idle=round(now - self._last), where=self._where, place=place, waiting=waiting)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            mine = self._status(now)
            if self._store is not None:
                try:
                    self._store.set(str(self._rank), json.dumps(mine))
                except (RuntimeError, OSError):
                    self._store = None
            if now - self._last > self.timeout and not self._stop.is_set():
                self._end(mine)

    def _others(self) -> list[dict]:
        out = []
        for r in range(self._world):
            if r == self._rank or self._store is None:
                continue
            try:
                if self._store.check([str(r)]):
                    out.append(json.loads(self._store.get(str(r))))
                else:
                    out.append(dict(rank=r, idle=None, where='nothing reported', place='unknown', waiting=False))
            except (RuntimeError, OSError, ValueError):
                out.append(dict(rank=r, idle=None, where='unreachable', place='unknown', waiting=False))
        return out

    def _end(self, mine: dict) -> None:
        ranks = sorted([mine, *self._others()], key=lambda s: s['rank'])
        holding = [s for s in ranks if not s['waiting']]
        waiting = [s for s in ranks if s['waiting']]

        def say(s: dict) -> str:
            idle = f', idle {s["idle"]} s' if s['idle'] is not None else ''
            kind = 'waiting for the others' if s['waiting'] else 'not in a collective'
            return f'rank {s["rank"]} ({s["place"]}, {kind}, last: {s["where"]}{idle})'

        parts = [f'rank {self._rank} made no progress for {mine["idle"]} s (timeout {self.timeout:g} s) after '
                 f'{mine["where"]}']
        if holding:
            parts.append('held up by ' + ', '.join(say(s) for s in holding))
        if waiting:
            parts.append('waiting: ' + ', '.join(say(s) for s in waiting))
        parts.append(f'ending rank {self._rank} with exit status {EXIT_HUNG}')
        sys.stderr.write('[tlalign_mm] WatchdogHook: ' + '; '.join(parts) + '\n')
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(EXIT_HUNG)
