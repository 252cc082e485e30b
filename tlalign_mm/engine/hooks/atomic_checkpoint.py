"""Checkpoints a crash cannot cut in half: mmengine's ``CheckpointHook`` with atomic local writes."""
from __future__ import annotations

import contextlib
import os
import os.path as osp
import shutil
from pathlib import Path

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook

from ...checkpoint.io import atomic_write
from ...registry import HOOKS

__all__ = ['AtomicLocalBackend', 'AtomicCheckpointHook']


@register_backend('atomic_local', force=True)
class AtomicLocalBackend(LocalBackend):
    """mmengine's ``LocalBackend`` whose ``put`` / ``put_text`` write a temporary file in the same
    folder, fsync it and rename it over the name (:func:`tlalign_mm.checkpoint.atomic_save`'s
    writer).  Reads and listing are ``LocalBackend``'s.  Inside :meth:`deferred_removals`, ``remove`` and
    ``rmtree`` only note the path; the removals happen when the outermost block ends without an error.
    Registered as ``'atomic_local'`` (``backend_args=dict(backend='atomic_local')``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._depth = 0
        self._removals: list = []

    def put(self, obj: bytes, filepath: str | Path) -> None:
        atomic_write(obj, filepath)

    def put_text(self, obj: str, filepath: str | Path, encoding: str = 'utf-8') -> None:
        atomic_write(obj, filepath, encoding)

    def remove(self, filepath: str | Path) -> None:
        if self._deferring():
            self._removals.append((super().remove, filepath))
        else:
            super().remove(filepath)

    def rmtree(self, dir_path: str | Path) -> None:
        if self._deferring():
            self._removals.append((super().rmtree, dir_path))
        else:
            super().rmtree(dir_path)

    def _deferring(self) -> bool:
        return self._depth > 0

    @contextlib.contextmanager
    def deferred_removals(self):
        """Hold back removals until the block (the outermost, when nested) has finished without an error;
        on an error they are dropped, so nothing is removed for a file that was not written."""
        if not self._deferring():
            self._removals = []
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            if not self._depth:
                self._removals = []
            raise
        self._depth -= 1
        if not self._depth:
            removals, self._removals = self._removals, []
            for remove, path in removals:
                if osp.exists(path):
                    remove(path)


class _StagedPointer:
    """The runner as ``CheckpointHook`` sees it, with ``work_dir`` pointing at a staging folder.

    mmengine 0.10.7 writes the ``last_checkpoint`` pointer with a plain ``open(work_dir/...)``
    (``CheckpointHook._save_checkpoint_with_step``); handing it this view makes it write the pointer
    into the staging folder, from where :class:`AtomicCheckpointHook` renames it into place.
    Everything else (``save_checkpoint``, ``message_hub``, ``logger``...) is the runner's own.
    """

    def __init__(self, runner, staging: str):
        object.__setattr__(self, '_runner', runner)
        object.__setattr__(self, 'work_dir', staging)

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def __setattr__(self, name, value):
        setattr(self._runner, name, value)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` whose checkpoints and ``last_checkpoint`` pointer are written atomically, and
    which removes an old checkpoint only after the new one is on disk.

    Every argument is ``mmengine.hooks.CheckpointHook``'s.  When the checkpoints go to a local folder
    (``out_dir`` unset or a path, no ``backend_args``), each file (``epoch_N.pth``, ``iter_N.pth``,
    ``best_*.pth``) is written to ``.<name>.<random>.tmp`` in the same folder, flushed, fsynced and
    renamed over its name (:class:`AtomicLocalBackend`); then the pointer is written the same way.
    mmengine's hook removes the oldest checkpoint (``max_keep_ckpts``) and the previous best one before it
    writes the new one; here those removals wait until the new file and the pointer are durable
    (:meth:`AtomicLocalBackend.deferred_removals`).  A ``kill -9`` at any moment therefore leaves a
    resumable set for any ``max_keep_ckpts``: the previous checkpoint and pointer, or the new ones, never
    a truncated file under a checkpoint's name (at most a ``.tmp`` file, which
    :func:`tlalign_mm.engine.find_resumable_checkpoint` removes on auto-resume).  The keep
    list and the best-checkpoint bookkeeping are mmengine's (message-hub ``keep_ckpt_ids``,
    ``best_score``, ``best_ckpt``), saved in every checkpoint and restored on resume.
    Remote ``out_dir`` URIs and explicit ``backend_args`` are left to their backends.
    """

    def __init__(self, *args, **kwargs):
        out_dir = kwargs.get('out_dir')
        local = out_dir is None or '://' not in str(out_dir)
        if local and kwargs.get('backend_args') is None and kwargs.get('file_client_args') is None:
            kwargs['backend_args'] = dict(backend='atomic_local')
        super().__init__(*args, **kwargs)

    def _removals_deferred(self):
        backend = getattr(self, 'file_backend', None)
        return backend.deferred_removals() if isinstance(backend, AtomicLocalBackend) else contextlib.nullcontext()

    def _save_best_checkpoint(self, runner, metrics) -> None:
        with self._removals_deferred():
            super()._save_best_checkpoint(runner, metrics)

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        with self._removals_deferred():
            self._save_with_pointer(runner, step, meta)

    def _save_with_pointer(self, runner, step, meta) -> None:
        staging = osp.join(runner.work_dir, '.last_checkpoint.staging')
        if is_main_process():
            os.makedirs(staging, exist_ok=True)
        super()._save_checkpoint_with_step(_StagedPointer(runner, staging), step, meta)
        if not is_main_process():
            return
        staged = osp.join(staging, 'last_checkpoint')
        with open(staged) as f:
            pointer = f.read()
        atomic_write(pointer, osp.join(runner.work_dir, 'last_checkpoint'))
        shutil.rmtree(staging, ignore_errors=True)
