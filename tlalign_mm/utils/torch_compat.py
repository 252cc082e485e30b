"""Let mmengine 0.10.7 load its own checkpoints under torch >= 2.6 without ``weights_only=False``.

What goes wrong
---------------
Since torch 2.6, :func:`torch.load` defaults to ``weights_only=True``: it unpickles with a restricted
unpickler that only builds tensors, containers and primitive types plus whatever was allow-listed with
:func:`torch.serialization.add_safe_globals`.  mmengine 0.10.7 calls ``torch.load(filename,
map_location=...)`` without ``weights_only`` (``mmengine.runner.checkpoint.load_from_local`` /
``load_from_http`` / ``load_from_pavi`` ..., reached from ``_load_checkpoint`` / ``CheckpointLoader``,
so from ``Runner.resume`` and ``load_from``).  The checkpoints mmengine itself writes hold, besides the
weights, ``meta['message_hub']``: the training logs as
:class:`mmengine.logging.HistoryBuffer` objects (numpy arrays of values and counts, plus the buffer's
statistics methods pickled as ``getattr(HistoryBuffer, 'mean')`` ...) and numpy scalars such as the
``eta`` runtime info.  Loading such a file raises ``UnpicklingError``, so ``--resume`` breaks.

What we do instead
------------------
We do *not* turn ``weights_only`` off (that would let any downloaded ``.pth`` run arbitrary code).  We
allow-list exactly the globals that an mmengine checkpoint needs.  The list was found empirically:
checkpoints saved by a real ``Runner`` (``CheckpointHook``, ``LoggerHook``, SGD/AdamW optimizer
wrapper, ``MultiStepLR``) were loaded with ``torch.load(..., weights_only=True)`` again and again,
adding each global the error named, until they loaded.  Required were:

* ``mmengine.logging.history_buffer.HistoryBuffer``                      (log buffers in ``meta``)
* ``numpy._core.multiarray._reconstruct``, ``numpy.ndarray``             (the buffers' arrays)
* ``numpy.dtype``, ``numpy.dtypes.Float64DType``, ``numpy.dtypes.Int64DType`` (their dtypes; the
  dtype *class* is needed because the unpickler BUILDs the dtype instance)
* ``numpy._core.multiarray.scalar``                                      (numpy scalars, e.g. ``eta``)
* ``builtins.getattr`` -- only as a **restricted stand-in** (see below);
* ``builtins.bytes`` -- only as a stand-in that builds the empty ``bytes()`` (protocol-2 pickles write
  an empty numpy array's data, e.g. an empty ``HistoryBuffer``'s, as that call).

Beyond that minimum we also allow, as equally inert data types:

* ``argparse.Namespace``: DeiT / timm training checkpoints keep their command-line arguments in one
  (``checkpoint['args']``); it is a plain attribute container;
* the numpy-1 spellings ``numpy.core.multiarray._reconstruct`` / ``numpy.core.multiarray.scalar``
  (mapped to the current functions), so checkpoints written under numpy 1 (e.g. OpenMMLab model-zoo
  files) load under numpy 2 and vice versa;
* the dtype classes of the other numeric/bool dtypes (bool, int8..int64, uint8..uint64,
  float16/32/64, longdouble, complex64/128, clongdouble): a HistoryBuffer takes the dtype of the
  first value logged (an ``np.float32`` loss, an int counter) and ``CheckpointHook(save_best=...)``
  keeps the metric's numpy scalar in the runtime info, so other widths do occur.  Object, string,
  void/structured and datetime dtypes are *not* allowed.

``getattr``: HistoryBuffer pickles its statistics methods (``min``/``max``/``current``/``mean``) as
``getattr(HistoryBuffer, name)``.  Allow-listing the real ``builtins.getattr`` would let a pickle walk
attributes freely (``getattr(getattr, '__self__')`` is the ``builtins`` module; from there ``eval``
...), and ``HistoryBuffer.__setstate__`` copies the pickled methods into a *class-level* dict that
mmengine later calls.  So under the name ``builtins.getattr`` we register :func:`_history_buffer_getattr`,
which only returns public plain functions defined on ``HistoryBuffer`` and raises ``UnpicklingError``
for anything else.

This module is the single source of truth for the list: :func:`mmengine_safe_globals` builds it,
:func:`register_mmengine_safe_globals` (run at ``import tlalign_mm``) registers it process-wide, and
:func:`tlalign_mm.checkpoint.load_checkpoint_file` passes the same list to
``torch.serialization.safe_globals``, so only one function is ever registered as ``builtins.getattr``.
numpy and mmengine are imported lazily (inside the functions), so importing this module needs torch only.

Nothing in this list can execute code from the file: the classes are data containers; the two numpy
functions only build arrays/scalars from bytes; the restricted getattr hands back HistoryBuffer's own
methods.  Custom statistics methods registered with ``HistoryBuffer.register_statistics`` live in user
modules and are still refused (allow-list them yourself if you trust them).
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
