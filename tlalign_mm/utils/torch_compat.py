"""Let mmengine 0.10.7 load its own checkpoints under torch >= 2.6 without ``weights_only=False``.

torch >= 2.6 loads with ``weights_only=True``; mmengine's checkpoints hold ``HistoryBuffer`` and numpy
objects, so ``--resume`` breaks.  Instead of turning ``weights_only`` off, :func:`mmengine_safe_globals`
allow-lists exactly the inert types those checkpoints need (with a restricted stand-in for
``builtins.getattr``), :func:`register_mmengine_safe_globals` registers them at ``import tlalign_mm``,
and :func:`tlalign_mm.checkpoint.load_checkpoint_file` passes the same list.  Why each entry is there
and why nothing in it can run code: ``docs/design.md``, "Loading mmengine checkpoints under torch >= 2.6".
"""
from __future__ import annotations

import inspect
import pickle
import re
from typing import Any

import torch

__all__ = ['mmengine_safe_globals', 'register_mmengine_safe_globals']

_SAFE_GLOBALS: list | None = None


def _torch_version() -> tuple[int, int]:
    m = re.match(r'(\d+)\.(\d+)', str(torch.__version__))
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _history_buffer_getattr(obj: Any, name: Any, *default: Any) -> Any:
    """Stand-in for ``builtins.getattr`` inside ``torch.load(weights_only=True)``.

    Only ``getattr(HistoryBuffer, <public plain function defined on HistoryBuffer>)`` is answered --
    that is how ``HistoryBuffer.__getstate__`` pickles ``HistoryBuffer.min/max/current/mean``.  Any
    other object, a private/dunder name, a property/classmethod, or a default argument is refused
    with ``UnpicklingError``.
    """
    from mmengine.logging import HistoryBuffer

    if (not default and obj is HistoryBuffer and isinstance(name, str) and not name.startswith('_')
            and inspect.isfunction(vars(HistoryBuffer).get(name))):
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'weights_only load: refusing getattr({obj!r}, {name!r}); tlalign_mm only allows '
        'getattr(HistoryBuffer, <statistics method>) (see tlalign_mm.utils.torch_compat)')


def _empty_bytes(*args: Any) -> bytes:
    """Stand-in for ``builtins.bytes`` inside ``torch.load(weights_only=True)``: ``bytes()`` only.

    ``torch.save`` pickles with protocol 2, which writes an empty ``bytes`` object as the call
    ``bytes()`` (non-empty ones go through ``_codecs.encode``, which torch already allows).  An
    empty numpy array -- e.g. an empty ``HistoryBuffer`` in an mmengine checkpoint's ``meta`` --
    holds such a value.  The real ``bytes`` would also accept ``bytes(10**12)``, so anything but the
    empty call is refused.
    """
    if args:
        raise pickle.UnpicklingError('weights_only load: refusing bytes(...) with arguments; tlalign_mm '
                                     'only allows the empty bytes() that protocol-2 pickles write')
    return b''


def _numpy_entries(with_aliases: bool) -> list:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is always there with torch in practice
        return []
    try:  # numpy >= 2
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray

    entries: list = [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype]
    if with_aliases:  # the other numpy major's spelling (numpy.core <-> numpy._core)
        for func in (multiarray._reconstruct, multiarray.scalar):
            for mod in ('numpy._core.multiarray', 'numpy.core.multiarray'):
                path = f'{mod}.{func.__name__}'
                if path != f'{func.__module__}.{func.__qualname__}':
                    entries.append((func, path))
    # bool, integer, float and complex dtype classes only: no object / string / void / datetime
    codes = '?' + np.typecodes['AllInteger'] + np.typecodes['AllFloat']
    seen = set()
    for code in codes:
        cls = type(np.dtype(code))  # numpy.dtypes.Float64DType etc. (numpy.dtype[float64] on numpy < 1.25)
        if cls is not np.dtype and cls not in seen:
            seen.add(cls)
            entries.append(cls)
    return entries


def _mmengine_entries(with_getattr: bool) -> list:
    try:
        from mmengine.logging import HistoryBuffer
    except ImportError:
        return []
    entries: list = [HistoryBuffer]
    if with_getattr:
        entries.append((_history_buffer_getattr, 'builtins.getattr'))
    return entries


def mmengine_safe_globals() -> list:
    """The allow-list for ``torch.load(weights_only=True)`` of mmengine / OpenMMLab / DeiT checkpoints.

    mmengine (0.10.x) checkpoints keep, besides tensors, ``message_hub`` / ``meta`` entries holding
    ``mmengine.logging.HistoryBuffer`` objects, numpy arrays, numpy scalars and dtypes; DeiT / timm
    training checkpoints keep an ``argparse.Namespace`` of their arguments.  The list and why each
    entry is safe are in this module's docstring.

    Returns:
        A new list, usable with ``torch.serialization.add_safe_globals`` and
        ``torch.serialization.safe_globals``: plain classes/functions and ``(object, 'pickled.name')``
        tuples.  It holds ``argparse.Namespace``; numpy's array reconstructor and scalar constructor
        under both spellings (``numpy.core.multiarray.*`` written by numpy 1.x,
        ``numpy._core.multiarray.*`` by numpy 2.x), ``numpy.ndarray``, ``numpy.dtype`` and the
        bool / integer / float / complex dtype classes (when numpy is importable); mmengine's
        ``HistoryBuffer`` and a ``builtins.getattr`` stand-in that only returns ``HistoryBuffer``'s
        statistics methods (when mmengine is importable).  The tuple entries need torch >= 2.6 and
        are left out before it (there ``weights_only`` is off by default).
    """
    global _SAFE_GLOBALS
    if _SAFE_GLOBALS is None:
        import argparse

        tuples_ok = _torch_version() >= (2, 6)
        _SAFE_GLOBALS = ([argparse.Namespace] + _mmengine_entries(with_getattr=tuples_ok)
                         + _numpy_entries(with_aliases=tuples_ok)
                         + ([(_empty_bytes, 'builtins.bytes')] if tuples_ok else []))
    return list(_SAFE_GLOBALS)


def register_mmengine_safe_globals() -> list:
    """Allow-list, process-wide, what mmengine checkpoints contain (:func:`mmengine_safe_globals`).

    Why: torch >= 2.6 loads with ``weights_only=True`` by default and mmengine 0.10.7 does not pass
    ``weights_only``, so resuming from (or ``load_from``) an mmengine checkpoint raises
    ``UnpicklingError`` on its ``meta`` (HistoryBuffer, numpy arrays/scalars).  We register just those
    types with :func:`torch.serialization.add_safe_globals` instead of disabling ``weights_only``.

    Idempotent: the list is built once and re-registering it is a set union (so calling again after
    ``torch.serialization.clear_safe_globals()`` restores it).  Returns the registered entries (the
    same as :func:`mmengine_safe_globals`); an empty list when torch has no ``add_safe_globals``
    (torch < 2.4, where nothing needs doing).
    """
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is None:
        return []
    entries = mmengine_safe_globals()
    add(list(entries))
    return entries
