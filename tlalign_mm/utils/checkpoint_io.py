"""Reading checkpoint files without ever executing pickled code.

:func:`load_checkpoint_file` reads through mmengine's ``CheckpointLoader`` (every scheme mmseg /
mmdet configs use) with ``torch.load``'s ``weights_only=True`` and only the allow-list of
:func:`~tlalign_mm.utils.torch_compat.mmengine_safe_globals`; local ``.safetensors`` files through
``safetensors``.  :func:`atomic_save` writes a file so that a crash leaves the old file or the new one,
never part of one.  A leaf module: torch, mmengine (lazily) and the allow-list only.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from typing import Any

import torch

from .torch_compat import mmengine_safe_globals

__all__ = ['load_checkpoint_file', 'atomic_save', 'atomic_write_bytes', 'atomic_write_text', 'CheckpointFileError',
           'CheckpointNotFoundError', 'diagnose_checkpoint_file', 'load_local_checkpoint',
           'register_checkpoint_loader', 'find_resumable_checkpoint', 'exit_on_checkpoint_error']


class CheckpointFileError(pickle.UnpicklingError):
    """A checkpoint file that cannot be used; the message is one line naming the path and what it is
    (empty, truncated, not a checkpoint, refused types).  Subclasses ``pickle.UnpicklingError``, what
    ``torch.load`` raises for such files, so existing handlers keep working."""


class CheckpointNotFoundError(CheckpointFileError, FileNotFoundError):
    """No file at the checkpoint path (also a ``FileNotFoundError``)."""


_ZIP_MAGIC = b'PK\x03\x04'


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
    """What is wrong with a local checkpoint file, judged from its structure alone, or ``None``.

    Reads the first bytes and, for torch's zip format, the zip's central directory (at the end of
    the file; nothing is unpickled).  Kinds: missing, a folder, empty (0 bytes), truncated (a zip
    archive without its central directory: a save or download cut off), a zip that is not a torch
    checkpoint (no ``data.pkl``), a ``.safetensors`` file whose header or data is cut, a text file,
    or bytes that are neither a zip nor a pickle.  A file that passes may still hold types
    ``weights_only`` loading refuses; :func:`load_local_checkpoint` says so when it loads.

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
    if head.startswith(_ZIP_MAGIC):
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


def _load_failure_reason(e: BaseException) -> str:
    """One line on why ``torch.load`` failed, without torch's advice to turn ``weights_only`` off."""
    text = str(e)
    m = re.search(r'WeightsUnpickler error: (.*?)(?: was not an allowed global|\n|$)', text)
    if m:
        return m.group(1).strip()
    # torch's message opens with a paragraph on the weights_only default and how to turn it off;
    # the reason is the first line that is not part of that advice
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    reasons = [ln for ln in lines if 'weights_only' not in ln and not ln.startswith('Check the documentation')]
    first = (reasons or [''])[0]
    return f'{type(e).__name__}: {first[:200]}' if first else type(e).__name__


@contextlib.contextmanager
def _weights_only_everywhere(force: bool):
    """Every ``torch.load`` inside runs with ``weights_only=True`` and the allow-list.

    Local files need nothing more: mmengine's local backend calls ``torch.load`` without
    ``weights_only``, whose default is True since torch 2.6.  Remote schemes (``force``) may pass
    ``weights_only=False`` (mmengine's http backend reads through
    ``torch.hub.load_state_dict_from_url``, whose default is False), so for them alone torch's
    ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` is set for the duration of the load and restored after.
    """
    key = 'TORCH_FORCE_WEIGHTS_ONLY_LOAD'
    old = os.environ.get(key)
    if force:
        os.environ[key] = '1'
    # torch's safe_globals context removes its entries on exit, even ones registered before it
    # (import tlalign_mm registers the list process-wide): hand it only the missing ones.
    registered = set(torch.serialization.get_safe_globals())
    missing = [g for g in mmengine_safe_globals() if g not in registered]
    try:
        with torch.serialization.safe_globals(missing):
            yield
    finally:
        if force and old is None:
            os.environ.pop(key, None)
        elif force:
            os.environ[key] = old


def _atomic_replace(dst: str, write) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``dst``, flush and fsync it, then
    ``os.replace`` it over ``dst`` (atomic on POSIX and Windows within one file system) and fsync
    the folder.  On any error the temporary file is removed and ``dst`` is left as it was."""
    dst = os.path.abspath(os.path.expanduser(dst))
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
    """Write ``obj`` to ``path`` so that a crash at any moment leaves the old file or the new one.

    ``torch.save`` (or, when ``path`` ends in ``.safetensors``, ``safetensors.torch.save_file``,
    which needs a flat ``{name: tensor}`` dict) writes a temporary file in the same folder
    (``.<name>.<random>.tmp``); it is flushed and fsynced, then renamed over ``path``.  A reader
    never sees a half-written file, and a killed writer leaves at most the temporary file.

    Args:
        obj: what ``torch.save`` accepts; for ``.safetensors``, a dict of tensors (made contiguous
            here; tensors sharing memory are cloned, as safetensors refuses shared storage).
        path: the final file name; missing parent folders are created.

    Returns:
        The absolute path written.

    Raises:
        TypeError: ``.safetensors`` with something other than a ``{str: Tensor}`` dict (the message
            names the first offending key).
        OSError: the folder is not writable (``path`` is untouched).
    """
    dst = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if dst.endswith('.safetensors'):
        if not isinstance(obj, Mapping):
            raise TypeError(f'{dst}: a .safetensors file holds a flat {{name: tensor}} dict, got {type(obj).__name__}')
        bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
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
    else:
        _atomic_replace(dst, lambda f: torch.save(obj, f))
    return dst


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> str:
    """:func:`atomic_save` for bytes already serialised (mmengine's file-backend ``put``)."""
    dst = os.path.abspath(os.path.expanduser(os.fspath(path)))
    _atomic_replace(dst, lambda f: f.write(data))
    return dst


def atomic_write_text(text: str, path: str | os.PathLike, encoding: str = 'utf-8') -> str:
    """:func:`atomic_save` for a text file (mmengine's ``last_checkpoint`` pointer)."""
    return atomic_write_bytes(text.encode(encoding), path)


def _is_local(path: str) -> bool:
    return '://' not in path


def _refused(path: str, e: BaseException) -> CheckpointFileError:
    return CheckpointFileError(
        f'{path}: not a loadable checkpoint, or it holds types that weights_only loading refuses '
        f'({_load_failure_reason(e)}); nothing from it was run')


def load_local_checkpoint(filename: str | os.PathLike, map_location: Any = None) -> Any:
    """Load a local checkpoint with ``weights_only=True``, or raise one line saying what the file is.

    For a good file, the same result as mmengine's local loader (``load_from_local`` in
    ``mmengine/runner/checkpoint.py``: ``torch.load(filename, map_location)``), with the allow-list of
    :func:`~tlalign_mm.utils.torch_compat.mmengine_safe_globals`.  A bad file is named and described
    first (:func:`diagnose_checkpoint_file`); refused types are reported without torch's advice to
    turn ``weights_only`` off.  ``.safetensors`` files are read with ``safetensors.torch.load_file``.

    Args:
        filename: a local path (``~`` expanded).
        map_location: as ``torch.load``.

    Returns:
        What the file holds (for checkpoints, a dict).

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
        device = map_location if isinstance(map_location, str) else 'cpu'
        try:
            return load_file(path, device=device)
        except Exception as e:  # noqa: BLE001  (safetensors raises its own SafetensorError)
            raise CheckpointFileError(f'{path}: not a readable .safetensors file ({_load_failure_reason(e)})') from None
    try:
        with _weights_only_everywhere(force=False):
            return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, KeyError, EOFError, RuntimeError, ValueError, AttributeError) as e:
        raise _refused(path, e) from None


def register_checkpoint_loader() -> None:
    """Make mmengine read local checkpoints through :func:`load_local_checkpoint`.

    Registers it with ``mmengine.runner.CheckpointLoader`` for the empty prefix (local paths;
    ``force=True`` replaces mmengine's ``load_from_local``), so that ``--resume``, ``load_from`` and
    ``init_cfg=dict(type='Pretrained')`` in any mmengine / mmseg / mmdet module answer a bad file
    with one line (:class:`CheckpointFileError`); good files load as before.  ``tools/train.py``
    and ``tools/test.py`` call it at start; ``import tlalign_mm`` does not.
    """
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', force=True)(load_local_checkpoint)


@contextlib.contextmanager
def exit_on_checkpoint_error(prog: str):
    """For command-line tools: a :class:`CheckpointFileError` raised inside ends the program with its
    one line, ``PROG: error: MESSAGE`` on stderr and exit status 1, instead of a traceback."""
    try:
        yield
    except CheckpointFileError as e:
        raise SystemExit(f'{prog}: error: {e}') from None


_CKPT_NAME = re.compile(r'^(epoch|iter)_(\d+)(_interrupted)?\.pth$')


def find_resumable_checkpoint(work_dir: str | os.PathLike, log=None) -> str | None:
    """The checkpoint auto-resume should continue from, after checking that it is readable.

    Reads ``work_dir/last_checkpoint`` (the pointer mmengine's ``CheckpointHook`` writes) and checks
    the file it names with :func:`diagnose_checkpoint_file`.  If the pointer is empty or names an
    unreadable file, the newest readable ``epoch_N.pth`` / ``iter_N.pth`` / ``iter_N_interrupted.pth`` in
    ``work_dir`` (the latest modified; the larger N on a tie) is used instead, and one line says why.
    Temporary files an interrupted :func:`atomic_save` left (``.epoch_N.pth.<random>.tmp``) are removed.

    Args:
        work_dir: the run's work dir.
        log: ``callable(str)`` for the one-line notes (default: ignore).

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
        reason = diagnose_checkpoint_file(path)
        if reason is None:
            log(f'auto-resume: resuming from {path}')
            return path
        log(f'auto-resume: skipping {path}: {reason}')
    return None


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = 'cpu') -> dict:
    """Load a checkpoint (local or remote) without ever executing pickled code.

    The file is read by mmengine's ``CheckpointLoader`` (``mmengine/runner/checkpoint.py``), so
    every scheme mmseg / mmdet configs use works: local paths, ``http://`` / ``https://`` (cached
    in torch's hub folder), ``open-mmlab://``, ``torchvision://``, ``pavi://``, ``s3://`` and
    any scheme registered with ``CheckpointLoader.register_scheme``.  Every ``torch.load`` it
    makes runs with ``weights_only=True`` (forced, whatever the backend passes) and only the
    types of :func:`~tlalign_mm.utils.torch_compat.mmengine_safe_globals` allowed.  Local
    ``.safetensors`` files are read with ``safetensors.torch.load_file``.

    Args:
        path: a local file or a URL of an mmengine checkpoint scheme.
        map_location: as ``torch.load``.

    Returns:
        The loaded object, a dict (checkpoint or state dict).

    Raises:
        CheckpointNotFoundError (a ``FileNotFoundError``): no local file at ``path``.
        CheckpointFileError (a ``pickle.UnpicklingError``): the file is empty, truncated, not a
            checkpoint (a text or random file), holds no dict, or holds objects ``weights_only``
            loading refuses (a class outside the allow-list); one line naming the path and what it
            is; nothing from the file was executed.
        Whatever the scheme's backend raises when it cannot fetch the file (``URLError`` ...).
    """
    path = os.fspath(path)
    if _is_local(path):
        obj: Any = load_local_checkpoint(path, map_location)
    else:
        from mmengine.runner.checkpoint import CheckpointLoader
        try:
            with _weights_only_everywhere(force=True):
                obj = CheckpointLoader.load_checkpoint(path, map_location=map_location, logger='silent')
        except (pickle.UnpicklingError, KeyError, EOFError, RuntimeError, ValueError, AttributeError) as e:
            raise _refused(path, e) from None
    if not isinstance(obj, Mapping):
        raise CheckpointFileError(f'{path}: holds a {type(obj).__name__}, not a checkpoint or state dict (a dict)')
    return dict(obj)
