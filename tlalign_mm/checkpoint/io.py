"""Reading checkpoints without executing pickled code, and writing them atomically.  Every load (mmengine's too, by
:func:`register_checkpoint_loader`) is ``torch.load(weights_only=True)`` with :func:`mmengine_safe_globals` in
``torch.serialization.safe_globals`` for its duration: nothing process-wide, no environment variable (why each entry
is safe: ``docs/advanced_guides/checkpoint_safety.md``).
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import pickle
import re
import tempfile
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

from ..registry import FUNCTIONS

__all__ = ['CheckpointFileError', 'CheckpointNotFoundError', 'mmengine_safe_globals', 'diagnose_checkpoint_file',
           'load_checkpoint_file', 'register_checkpoint_loader', 'atomic_save', 'atomic_write']


class CheckpointFileError(pickle.UnpicklingError):
    """An unusable checkpoint file: one line, the path and the fault (a ``pickle.UnpicklingError``, as torch raises)."""


class CheckpointNotFoundError(CheckpointFileError, FileNotFoundError):
    """No file at the checkpoint path (also a ``FileNotFoundError``)."""


def _history_buffer_getattr(obj: Any, name: Any, *default: Any) -> Any:
    """``builtins.getattr`` inside a weights_only load: only ``getattr(HistoryBuffer, <public plain function of
    HistoryBuffer>)``, how ``HistoryBuffer.__getstate__`` pickles its statistics methods; else UnpicklingError."""
    if (not default and obj is HistoryBuffer and isinstance(name, str) and not name.startswith('_')
            and inspect.isfunction(vars(HistoryBuffer).get(name))):
        return getattr(obj, name)
    raise pickle.UnpicklingError(f'weights_only load: refusing getattr({obj!r}, {name!r}); tlalign_mm only allows '
                                 'getattr(HistoryBuffer, <statistics method>) (see tlalign_mm.checkpoint.io)')


def _empty_bytes(*args: Any) -> bytes:
    """``builtins.bytes`` inside a weights_only load: the empty ``bytes()`` only, which protocol-2 pickles write
    for an empty numpy array's data (``bytes(10**12)`` would be accepted by the real one)."""
    if args:
        raise pickle.UnpicklingError('weights_only load: refusing bytes(...) with arguments (only bytes() is allowed)')
    return b''


def mmengine_safe_globals() -> list:
    """The allow-list for ``weights_only`` loads of mmengine / OpenMMLab / DeiT checkpoints, a new list:
    ``argparse.Namespace``; ``HistoryBuffer`` and the getattr stand-in; numpy's reconstructor and scalar (both
    numpy 1 and 2 spellings), ``ndarray``, ``dtype`` and the bool / integer / float / complex dtype classes; the
    empty-``bytes()`` stand-in (``(object, 'name')`` entries: torch >= 2.6)."""
    funcs = (np.empty(0).__reduce__()[0], np.float64(0).__reduce__()[0])   # multiarray's _reconstruct, scalar
    entries: list = [argparse.Namespace, HistoryBuffer, (_history_buffer_getattr, 'builtins.getattr'), *funcs,
                     np.ndarray, np.dtype, (_empty_bytes, 'builtins.bytes')]
    for func in funcs:   # the other numpy's spelling
        entries += [(func, f'{mod}.multiarray.{func.__name__}') for mod in ('numpy._core', 'numpy.core')
                    if f'{mod}.multiarray' != func.__module__]
    # bool, integer, float and complex dtype classes only: no object / string / void / datetime
    entries += list(dict.fromkeys(type(np.dtype(c)) for c in '?' + np.typecodes['AllInteger']
                                  + np.typecodes['AllFloat'] if type(np.dtype(c)) is not np.dtype))
    return entries


_LOCK, _FORCED = threading.Lock(), threading.local()
_ACTIVE: dict = {'users': 0}


def _forced_load(*args, **kwargs):
    """``torch.load`` while our loads run: ``weights_only=True`` in a thread loading a remote file (its backend may
    pass False: torch.hub's default), unchanged elsewhere."""
    if getattr(_FORCED, 'on', False):
        kwargs['weights_only'] = True
        kwargs.pop('pickle_module', None)
    return _ACTIVE['load'](*args, **kwargs)


@contextlib.contextmanager
def _safe_loading(force: bool):
    """The allow-list (what is not registered already) and, with ``force``, this thread's ``torch.load`` held to
    ``weights_only``, for the block; set up by the first concurrent load, undone by the last."""
    with _LOCK:
        if not _ACTIVE['users']:
            have = set(torch.serialization.get_safe_globals())
            ctx = torch.serialization.safe_globals([g for g in mmengine_safe_globals() if g not in have])
            ctx.__enter__()
            _ACTIVE.update(ctx=ctx, load=torch.load)
            torch.load = _forced_load
        _ACTIVE['users'] += 1
    before = getattr(_FORCED, 'on', False)
    _FORCED.on = before or force
    try:
        yield
    finally:
        _FORCED.on = before
        with _LOCK:
            _ACTIVE['users'] -= 1
            if not _ACTIVE['users']:
                torch.load = _ACTIVE['load']
                _ACTIVE['ctx'].__exit__(None, None, None)


def diagnose_checkpoint_file(path: str | os.PathLike) -> str | None:
    """What is wrong with a local checkpoint file, from its structure alone (nothing unpickled), as a phrase: missing,
    a folder, empty, truncated (a zip without its central directory), a zip without ``data.pkl``, a cut
    ``.safetensors``, text, neither zip nor pickle; None for a plausible one (weights_only may still refuse it)."""
    path = os.path.expanduser(os.fspath(path))
    if not os.path.exists(path):
        return 'no such file'
    if os.path.isdir(path):
        return 'a folder, not a checkpoint file'
    if (size := os.path.getsize(path)) == 0:
        return 'empty (0 bytes): an interrupted save or download'
    if path.endswith('.safetensors'):        # safetensors checks the header and that the data covers the file
        from safetensors import safe_open
        try:
            with safe_open(path, 'pt'):
                return None
        except Exception as e:  # noqa: BLE001  (safetensors raises its own SafetensorError)
            return f'truncated .safetensors file, or not one ({_reason(e)})'
    with open(path, 'rb') as f:
        head = f.read(64)
    if head.startswith(b'PK\x03\x04'):
        import zipfile
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return (f'truncated: a zip archive without its central directory ({size} bytes; the save or download '
                    'was cut off)')
        torch_zip = any(('/' + n).endswith('/data.pkl') for n in names)
        return None if torch_zip else 'a zip archive, but not a torch checkpoint (it has no data.pkl)'
    if head[:1] == b'\x80':      # a pickle (torch's legacy format starts with a pickled magic number)
        return None
    text = head.decode('utf-8', errors='replace')     # a cut or invalid UTF-8 sequence: U+FFFD, not text
    if '\ufffd' not in text and all(c.isprintable() or c in '\r\n\t' for c in text):
        first = text.strip().splitlines()[0][:40] if text.strip() else ''
        return f'a text file, not a checkpoint (it starts with {first!r})'
    return f'not a checkpoint: neither a torch zip archive nor a pickle (it starts with bytes {head[:8].hex()})'


def _reason(e: BaseException) -> str:
    """One line on why a load failed, without torch's advice to turn ``weights_only`` off."""
    text = str(e)
    if m := re.search(r'WeightsUnpickler error: (.*?)(?: was not an allowed global|\n|$)', text):
        return m.group(1).strip()
    # torch's message opens with a paragraph on the weights_only default; the reason is the first other line
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and 'weights_only' not in ln
             and not ln.strip().startswith('Check the documentation')]
    return f'{type(e).__name__}: {lines[0][:200]}' if lines else type(e).__name__


@FUNCTIONS.register_module()
def load_checkpoint_file(path: str | os.PathLike, map_location: Any = 'cpu') -> dict:
    """Load a checkpoint without executing pickled code: a local file, checked by :func:`diagnose_checkpoint_file`,
    by ``torch.load(weights_only=True)`` with the allow-list, ``.safetensors`` by ``safetensors``; else through
    mmengine's ``CheckpointLoader`` (``http(s)://`` cached in torch's hub folder, ``open-mmlab://``, ``s3://``, any
    registered scheme; every ``torch.load`` it makes in this thread held to ``weights_only``).

    Returns:
        The loaded dict (a checkpoint or a state dict).

    Raises:
        CheckpointNotFoundError: no local file at ``path`` (also a ``FileNotFoundError``).
        CheckpointFileError: empty, truncated, not a checkpoint, no dict, or refused types (a
            ``pickle.UnpicklingError``); one line naming the path; nothing from the file was run.
        OSError: what the scheme's backend raises when it cannot fetch a remote file (``URLError`` ...).
    """
    return _load(os.fspath(path), map_location, remote='://' in os.fspath(path))


def _load(path: str, map_location: Any, remote: bool) -> dict:
    safetensors = path.endswith('.safetensors') and not remote
    if not remote:
        path = os.path.expanduser(path)
        if (reason := diagnose_checkpoint_file(path)) == 'no such file':
            raise CheckpointNotFoundError(f'checkpoint file not found: {path!r}')
        if reason is not None:
            raise CheckpointFileError(f'{path}: {reason}')
    try:
        if safetensors:
            from safetensors.torch import load_file
            obj: Any = load_file(path, device=map_location if isinstance(map_location, str) else 'cpu')
        else:
            with _safe_loading(force=remote):
                obj = (CheckpointLoader.load_checkpoint(path, map_location=map_location, logger='silent') if remote
                       else torch.load(path, map_location=map_location, weights_only=True))
    except Exception as e:  # noqa: BLE001  (safetensors raises its own SafetensorError)
        if not (safetensors or isinstance(e, (pickle.UnpicklingError, KeyError, EOFError, RuntimeError, ValueError,
                                              AttributeError))):
            raise
        raise CheckpointFileError(f'{path}: not a readable .safetensors file ({_reason(e)})' if safetensors else
                                  f'{path}: not a loadable checkpoint, or it holds types that weights_only loading '
                                  f'refuses ({_reason(e)}); nothing from it was run') from None
    if not isinstance(obj, Mapping):
        raise CheckpointFileError(f'{path}: holds a {type(obj).__name__}, not a checkpoint or state dict (a dict)')
    return dict(obj)


def register_checkpoint_loader() -> None:
    """Have mmengine's ``CheckpointLoader`` read local paths with :func:`load_checkpoint_file`: ``--resume``,
    ``load_from``, ``init_cfg=dict(type='Pretrained')`` of any mmengine / mmseg / mmdet module then load mmengine's
    checkpoints (``HistoryBuffer``, numpy) under torch >= 2.6; a bad file is one line.  The tools call it."""
    CheckpointLoader.register_scheme(prefixes='', force=True)(lambda path, map_location=None: _load(
        os.fspath(path), map_location, remote=False))


def _atomic_replace(path: str | os.PathLike, write) -> str:
    """``write(file)`` to a temporary file beside ``path``, fsync, ``os.replace``, fsync the folder; on error ``path``
    is left as it was.  Returns the absolute path."""
    dst = os.path.abspath(os.path.expanduser(os.fspath(path)))
    folder = os.path.dirname(dst)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(dst)}.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    with contextlib.suppress(OSError):   # make the rename itself durable (not possible on every OS)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return dst


def atomic_save(obj: Any, path: str | os.PathLike) -> str:
    """``torch.save`` (``.safetensors``: a flat dict, each tensor a contiguous copy) into ``.<name>.<random>.tmp``
    beside ``path``, fsynced, renamed over it: a crash leaves the old file or the new one.  Returns the absolute path.

    Raises:
        TypeError: ``.safetensors`` with anything but a ``{str: Tensor}`` dict (names the first bad key).
        OSError: the folder is not writable (``path`` is untouched).
    """
    if not os.fspath(path).endswith('.safetensors'):
        return _atomic_replace(path, lambda f: torch.save(obj, f))
    if not isinstance(obj, Mapping):
        raise TypeError(f'{path}: a .safetensors file holds a flat {{name: tensor}} dict, got {type(obj).__name__}')
    if bad := [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]:
        raise TypeError(f'{path}: a .safetensors file holds only tensors under string names; '
                        f'{bad[0]!r} is a {type(obj[bad[0]]).__name__}')
    from safetensors.torch import save
    blob = save(   # safetensors refuses tensors that share storage: each is copied
        {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in obj.items()})
    return _atomic_replace(path, lambda f: f.write(blob))


def atomic_write(data: bytes | str, path: str | os.PathLike, encoding: str = 'utf-8') -> str:
    """:func:`atomic_save` for bytes already serialised (mmengine's file-backend ``put``) or text (``encoding``;
    mmengine's ``last_checkpoint`` pointer).  Returns the absolute path."""
    return _atomic_replace(path, lambda f: f.write(data.encode(encoding) if isinstance(data, str) else data))
