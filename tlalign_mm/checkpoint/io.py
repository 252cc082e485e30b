"""Reading checkpoint files without executing pickled code; writing them atomically; finding one to resume.

Every load runs ``torch.load(weights_only=True)`` with the allow-list of :func:`mmengine_safe_globals` handed
to ``torch.serialization.safe_globals`` for its duration only: nothing is registered process-wide and no
environment variable is set (why each entry is safe: ``docs/design.md``, "Loading mmengine checkpoints under
torch >= 2.6").  ``Runner.resume`` / ``load_from`` load through mmengine's ``CheckpointLoader``, which reads
local files through :func:`load_local_checkpoint` once :func:`register_checkpoint_loader` ran (the tools do).
"""
from __future__ import annotations

import contextlib
import inspect
import os
import pickle
import re
import tempfile
import threading
from collections.abc import Mapping
from typing import Any

import torch

from ..registry import FUNCTIONS

__all__ = ['CheckpointFileError', 'CheckpointNotFoundError', 'mmengine_safe_globals', 'diagnose_checkpoint_file',
           'load_local_checkpoint', 'load_checkpoint_file', 'register_checkpoint_loader', 'atomic_save',
           'atomic_write_bytes', 'atomic_write_text', 'find_resumable_checkpoint']


class CheckpointFileError(pickle.UnpicklingError):
    """A checkpoint file that cannot be used; the message is one line naming the path and what it is
    (empty, truncated, not a checkpoint, refused types).  A ``pickle.UnpicklingError``, as ``torch.load`` raises."""


class CheckpointNotFoundError(CheckpointFileError, FileNotFoundError):
    """No file at the checkpoint path (also a ``FileNotFoundError``)."""


# -- the allow-list ------------------------------------------------------------------------------------------
def _history_buffer_getattr(obj: Any, name: Any, *default: Any) -> Any:
    """``builtins.getattr`` inside a weights_only load: only ``getattr(HistoryBuffer, <public plain function of
    HistoryBuffer>)``, how ``HistoryBuffer.__getstate__`` pickles its statistics methods; else UnpicklingError."""
    from mmengine.logging import HistoryBuffer
    if (not default and obj is HistoryBuffer and isinstance(name, str) and not name.startswith('_')
            and inspect.isfunction(vars(HistoryBuffer).get(name))):
        return getattr(obj, name)
    raise pickle.UnpicklingError(f'weights_only load: refusing getattr({obj!r}, {name!r}); tlalign_mm only allows '
                                 'getattr(HistoryBuffer, <statistics method>) (see tlalign_mm.checkpoint.io)')


def _empty_bytes(*args: Any) -> bytes:
    """``builtins.bytes`` inside a weights_only load: the empty ``bytes()`` only, which protocol-2 pickles write
    for an empty numpy array's data (``bytes(10**12)`` would be accepted by the real one)."""
    if args:
        raise pickle.UnpicklingError('weights_only load: refusing bytes(...) with arguments; tlalign_mm only allows '
                                     'the empty bytes() that protocol-2 pickles write')
    return b''


_SAFE_GLOBALS: list | None = None


def mmengine_safe_globals() -> list:
    """The allow-list for ``torch.load(weights_only=True)`` of mmengine / OpenMMLab / DeiT checkpoints.

    Returns:
        A new list for ``torch.serialization.safe_globals``: ``argparse.Namespace`` (DeiT's ``args``);
        mmengine's ``HistoryBuffer`` and a ``builtins.getattr`` stand-in returning only its statistics methods;
        numpy's array reconstructor and scalar constructor under both spellings (``numpy.core`` of numpy 1,
        ``numpy._core`` of numpy 2), ``ndarray``, ``dtype`` and the bool / integer / float / complex dtype
        classes; an empty-``bytes()`` stand-in.  The ``(object, 'pickled.name')`` entries need torch >= 2.6
        and are left out before it; numpy / mmengine entries when they are not importable.
    """
    global _SAFE_GLOBALS
    if _SAFE_GLOBALS is None:
        import argparse
        tuples_ok = tuple(int(x) for x in re.findall(r'\d+', torch.__version__)[:2]) >= (2, 6)
        entries: list = [argparse.Namespace]
        with contextlib.suppress(ImportError):
            from mmengine.logging import HistoryBuffer
            entries += [HistoryBuffer] + ([(_history_buffer_getattr, 'builtins.getattr')] if tuples_ok else [])
        with contextlib.suppress(ImportError):
            import numpy as np
            try:
                from numpy._core import multiarray
            except ImportError:                                         # numpy 1.x
                from numpy.core import multiarray
            entries += [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype]
            for func in (multiarray._reconstruct, multiarray.scalar) if tuples_ok else ():   # the other spelling
                entries += [(func, f'{mod}.multiarray.{func.__name__}') for mod in ('numpy._core', 'numpy.core')
                            if f'{mod}.multiarray' != func.__module__]
            # bool, integer, float and complex dtype classes only: no object / string / void / datetime
            entries += list(dict.fromkeys(type(np.dtype(c)) for c in '?' + np.typecodes['AllInteger']
                                          + np.typecodes['AllFloat'] if type(np.dtype(c)) is not np.dtype))
        _SAFE_GLOBALS = entries + ([(_empty_bytes, 'builtins.bytes')] if tuples_ok else [])
    return list(_SAFE_GLOBALS)


_LOCK, _FORCED = threading.Lock(), threading.local()
_ACTIVE: dict = {'users': 0}


def _forced_load(*args, **kwargs):
    """``torch.load`` while one of our loads runs: ``weights_only=True`` in a thread that loads a remote
    checkpoint (its backend may pass ``weights_only=False``: torch.hub's default), unchanged in any other."""
    if getattr(_FORCED, 'on', False):
        kwargs['weights_only'] = True
        kwargs.pop('pickle_module', None)
    return _ACTIVE['load'](*args, **kwargs)


@contextlib.contextmanager
def _safe_loading(force: bool):
    """The allow-list (the entries not registered already), and for ``force`` every ``torch.load`` of this
    thread held to ``weights_only``, for the block.  Shared by concurrent loads: set up by the first, undone
    by the last (torch's ``safe_globals`` context alone would drop the list while another thread loads)."""
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


# -- what is wrong with a file -------------------------------------------------------------------------------
def _safetensors_problem(path: str, size: int, head: bytes) -> str | None:
    import json
    import struct
    if size < 8:
        return f'not a .safetensors file ({size} bytes, shorter than its header length field)'
    (n,) = struct.unpack('<Q', head[:8])
    if n > size - 8:
        return f'truncated .safetensors file: its header announces {n} bytes, the file has {size - 8} after it'
    with open(path, 'rb') as f:
        f.seek(8)
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            return 'not a .safetensors file (its header is not JSON)'
    ends = [v['data_offsets'][1] for k, v in header.items()
            if k != '__metadata__' and isinstance(v, dict) and 'data_offsets' in v]
    if ends and 8 + n + max(ends) > size:
        return f'truncated .safetensors file: {size} bytes, its tensors need {8 + n + max(ends)}'
    return None


def diagnose_checkpoint_file(path: str | os.PathLike) -> str | None:
    """What is wrong with a local checkpoint file, judged from its structure alone (nothing is unpickled).

    Kinds: missing, a folder, empty, truncated (a zip without its central directory: a save or download cut
    off), a zip without ``data.pkl``, a cut ``.safetensors`` file, a text file, bytes that are neither a zip nor
    a pickle.  A file that passes may still hold types weights_only loading refuses.

    Returns:
        ``None`` for a plausible checkpoint, else a reason phrase (no path, no final period).
    """
    path = os.path.expanduser(os.fspath(path))
    if not os.path.exists(path):
        return 'no such file'
    if os.path.isdir(path):
        return 'a folder, not a checkpoint file'
    size = os.path.getsize(path)
    if size == 0:
        return 'empty (0 bytes): an interrupted save or download'
    with open(path, 'rb') as f:
        head = f.read(64)
    if path.endswith('.safetensors'):
        return _safetensors_problem(path, size, head)
    if head.startswith(b'PK\x03\x04'):
        import zipfile
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return (f'truncated: a zip archive without its central directory ({size} bytes; the save '
                    f'or download was cut off)')
        if not any(n == 'data.pkl' or n.endswith('/data.pkl') for n in names):
            return 'a zip archive, but not a torch checkpoint (it has no data.pkl)'
        return None
    if head[:1] == b'\x80':      # a pickle (torch's legacy format starts with a pickled magic number)
        return None
    try:
        text = head.decode('utf-8')
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in '\r\n\t' for c in text):
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


def _refused(path: str, e: BaseException) -> CheckpointFileError:
    return CheckpointFileError(f'{path}: not a loadable checkpoint, or it holds types that weights_only loading '
                               f'refuses ({_reason(e)}); nothing from it was run')


_LOAD_ERRORS = (pickle.UnpicklingError, KeyError, EOFError, RuntimeError, ValueError, AttributeError)


# -- loading -------------------------------------------------------------------------------------------------
def load_local_checkpoint(filename: str | os.PathLike, map_location: Any = None) -> Any:
    """Load a local checkpoint with ``weights_only=True`` and the allow-list, or raise one line saying what the
    file is (:func:`diagnose_checkpoint_file` first).  A good file gives what mmengine's ``load_from_local``
    gives (``torch.load(filename, map_location)``); ``.safetensors`` files are read by ``safetensors``.

    Raises:
        CheckpointNotFoundError: no file there.
        CheckpointFileError: empty, truncated, not a checkpoint, or refused types.
    """
    path = os.path.expanduser(os.fspath(filename))
    reason = diagnose_checkpoint_file(path)
    if reason == 'no such file':
        raise CheckpointNotFoundError(f'checkpoint file not found: {path!r}')
    if reason is not None:
        raise CheckpointFileError(f'{path}: {reason}')
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        try:
            return load_file(path, device=map_location if isinstance(map_location, str) else 'cpu')
        except Exception as e:  # noqa: BLE001  (safetensors raises its own SafetensorError)
            raise CheckpointFileError(f'{path}: not a readable .safetensors file ({_reason(e)})') from None
    try:
        with _safe_loading(force=False):
            return torch.load(path, map_location=map_location, weights_only=True)
    except _LOAD_ERRORS as e:
        raise _refused(path, e) from None


@FUNCTIONS.register_module()
def load_checkpoint_file(path: str | os.PathLike, map_location: Any = 'cpu') -> dict:
    """Load a checkpoint, local or remote, without ever executing pickled code.

    Local files: :func:`load_local_checkpoint`.  Anything else goes through mmengine's ``CheckpointLoader``
    (``mmengine/runner/checkpoint.py``: ``http(s)://`` cached in torch's hub folder, ``open-mmlab://``,
    ``torchvision://``, ``s3://`` and any registered scheme), every ``torch.load`` it makes in this thread held
    to ``weights_only=True`` whatever the backend passes.

    Returns:
        The loaded dict (a checkpoint or a state dict).

    Raises:
        CheckpointNotFoundError (a ``FileNotFoundError``): no local file at ``path``.
        CheckpointFileError (a ``pickle.UnpicklingError``): empty, truncated, not a checkpoint, no dict, or
            refused types; one line naming the path; nothing from the file was run.
        Whatever the scheme's backend raises when it cannot fetch the file (``URLError`` ...).
    """
    path = os.fspath(path)
    if '://' not in path:
        obj: Any = load_local_checkpoint(path, map_location)
    else:
        from mmengine.runner.checkpoint import CheckpointLoader
        try:
            with _safe_loading(force=True):
                obj = CheckpointLoader.load_checkpoint(path, map_location=map_location, logger='silent')
        except _LOAD_ERRORS as e:
            raise _refused(path, e) from None
    if not isinstance(obj, Mapping):
        raise CheckpointFileError(f'{path}: holds a {type(obj).__name__}, not a checkpoint or state dict (a dict)')
    return dict(obj)


def register_checkpoint_loader() -> None:
    """Make mmengine's ``CheckpointLoader`` read local paths through :func:`load_local_checkpoint` (the empty
    prefix, ``force=True``): ``--resume``, ``load_from`` and ``init_cfg=dict(type='Pretrained')`` of any
    mmengine / mmseg / mmdet module then load mmengine's own checkpoints (``HistoryBuffer``, numpy in ``meta``)
    under torch >= 2.6 and answer a bad file with one line.  ``tools/train.py`` and ``tools/test.py`` call it;
    ``import tlalign_mm`` does not."""
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', force=True)(load_local_checkpoint)


# -- writing -------------------------------------------------------------------------------------------------
def _atomic_replace(dst: str, write) -> None:
    """``write(file)`` on a temporary file beside ``dst``, fsync, ``os.replace`` over ``dst``, fsync the folder;
    on any error the temporary file is removed and ``dst`` left as it was."""
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


def atomic_save(obj: Any, path: str | os.PathLike) -> str:
    """Write ``obj`` so that a crash at any moment leaves the old file or the new one, never part of one.

    ``torch.save`` (``.safetensors``: ``safetensors.torch.save``, tensors made contiguous, ones sharing storage
    cloned) into ``.<name>.<random>.tmp`` in the same folder, fsynced, then renamed over ``path``.

    Returns:
        The absolute path written (missing parent folders are created).

    Raises:
        TypeError: ``.safetensors`` with anything but a ``{str: Tensor}`` dict (names the first bad key).
        OSError: the folder is not writable (``path`` is untouched).
    """
    dst = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not dst.endswith('.safetensors'):
        _atomic_replace(dst, lambda f: torch.save(obj, f))
        return dst
    if not isinstance(obj, Mapping):
        raise TypeError(f'{dst}: a .safetensors file holds a flat {{name: tensor}} dict, got {type(obj).__name__}')
    if bad := [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]:
        raise TypeError(f'{dst}: a .safetensors file holds only tensors under string names; '
                        f'{bad[0]!r} is a {type(obj[bad[0]]).__name__}')
    from safetensors.torch import save
    seen: set[int] = set()
    tensors = {}
    for k, v in obj.items():
        v = v.detach().cpu().contiguous()
        if v.untyped_storage().data_ptr() in seen:
            v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
        tensors[k] = v
    blob = save(tensors)
    _atomic_replace(dst, lambda f: f.write(blob))
    return dst


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> str:
    """:func:`atomic_save` for bytes already serialised (mmengine's file-backend ``put``)."""
    dst = os.path.abspath(os.path.expanduser(os.fspath(path)))
    _atomic_replace(dst, lambda f: f.write(data))
    return dst


def atomic_write_text(text: str, path: str | os.PathLike, encoding: str = 'utf-8') -> str:
    """:func:`atomic_save` for a text file (mmengine's ``last_checkpoint`` pointer)."""
    return atomic_write_bytes(text.encode(encoding), path)


# -- auto-resume ---------------------------------------------------------------------------------------------
_CKPT_NAME = re.compile(r'^(epoch|iter)_(\d+)(_interrupted)?\.pth$')


def find_resumable_checkpoint(work_dir: str | os.PathLike, log=None) -> str | None:
    """The checkpoint auto-resume continues from: the one ``work_dir/last_checkpoint`` names (mmengine's
    ``CheckpointHook`` pointer) when :func:`diagnose_checkpoint_file` passes it, else the newest readable
    ``epoch_N.pth`` / ``iter_N.pth`` / ``iter_N_interrupted.pth`` (latest modified, the larger N on a tie), with
    one line on why.  Temporary files an interrupted :func:`atomic_save` left are removed.

    Args:
        work_dir: the run's work dir; log: ``callable(str)`` for the one-line notes (default: ignore).

    Returns:
        The checkpoint path, or ``None`` when nothing readable is there (a fresh start).
    """
    log = log or (lambda msg: None)
    work_dir = os.fspath(work_dir)
    if not os.path.isdir(work_dir):
        return None
    for name in os.listdir(work_dir):
        if name.startswith('.') and name.endswith('.tmp') and _CKPT_NAME.match(name[1:].rsplit('.', 2)[0]):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(work_dir, name))
                log(f'auto-resume: removed {name}, left by an interrupted checkpoint save')
    pointer = os.path.join(work_dir, 'last_checkpoint')
    named = None
    if os.path.isfile(pointer):
        with open(pointer) as f:
            named = f.read().strip() or None
        if named is None:
            log('auto-resume: last_checkpoint is empty; looking for the newest readable checkpoint')
        elif (reason := diagnose_checkpoint_file(named)) is None:
            return named
        else:
            log(f'auto-resume: {named} (named by last_checkpoint) is {reason}; '
                'looking for the newest readable checkpoint')
    # newest first: by modification time (an epoch count and an iteration count do not compare), then name
    found = sorted(((os.path.getmtime(os.path.join(work_dir, name)), int(m.group(2)), name)
                    for name in os.listdir(work_dir) if (m := _CKPT_NAME.match(name))), reverse=True)
    for *_, name in found:
        path = os.path.join(work_dir, name)
        if os.path.abspath(path) == os.path.abspath(named or ''):
            continue
        if (reason := diagnose_checkpoint_file(path)) is None:
            log(f'auto-resume: resuming from {path}')
            return path
        log(f'auto-resume: skipping {path}: {reason}')
    return None
