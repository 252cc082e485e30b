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

__all__ = ['load_checkpoint_file', 'atomic_save', 'atomic_write_text']


def _load_failure_reason(e: BaseException) -> str:
    """One line on why ``torch.load`` failed, without torch's advice to turn ``weights_only`` off."""
    text = str(e)
    m = re.search(r'WeightsUnpickler error: (.*?)(?: was not an allowed global|\n|$)', text)
    if m:
        return m.group(1).strip()
    first = text.strip().splitlines()[0] if text.strip() else ''
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


def atomic_write_text(text: str, path: str | os.PathLike) -> str:
    """:func:`atomic_save` for a small text file (mmengine's ``last_checkpoint`` pointer)."""
    dst = os.path.abspath(os.path.expanduser(os.fspath(path)))
    _atomic_replace(dst, lambda f: f.write(text.encode()))
    return dst


def _is_local(path: str) -> bool:
    return '://' not in path


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
        FileNotFoundError: no local file at ``path`` (the message names it).
        pickle.UnpicklingError: the file is not a checkpoint torch can read (a text file, a
            truncated download), or it holds objects ``weights_only`` loading refuses (a class
            outside the allow-list); one line naming the path and the reason; nothing from the
            file was executed.
        TypeError: the file does not hold a dict.
        Whatever the scheme's backend raises when it cannot fetch the file (``URLError`` ...).
    """
    path = os.fspath(path)
    if _is_local(path) and not os.path.isfile(os.path.expanduser(path)):
        raise FileNotFoundError(f'checkpoint file not found: {path!r}')
    if _is_local(path) and path.endswith('.safetensors'):
        from safetensors.torch import load_file
        device = map_location if isinstance(map_location, str) else 'cpu'
        obj: Any = load_file(os.path.expanduser(path), device=device)
    else:
        from mmengine.runner.checkpoint import CheckpointLoader
        try:
            with _weights_only_everywhere(force=not _is_local(path)):
                obj = CheckpointLoader.load_checkpoint(path, map_location=map_location, logger='silent')
        except (pickle.UnpicklingError, KeyError, EOFError, RuntimeError, ValueError, AttributeError) as e:
            raise pickle.UnpicklingError(
                f'{path}: not a loadable checkpoint, or it holds types that weights_only loading refuses '
                f'({_load_failure_reason(e)}); nothing from it was run') from None
    if not isinstance(obj, Mapping):
        raise TypeError(f'{path}: expected a dict checkpoint or state dict, got {type(obj).__name__}')
    return dict(obj)
