"""What makes two launches the same run: the config keys that decide the trained weights.

The resumable loops store :func:`run_config` of their config in the message hub, so every checkpoint
carries it; a launch that resumes compares its own with the checkpoint's (:func:`config_changes`) and
refuses to continue a different run under the same work dir.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ['RUN_SECTIONS', 'NOT_RUN_KEYS', 'run_config', 'run_config_digest', 'config_changes',
           'IncompatibleResumeError']

#: The top-level config sections whose values decide the trained weights.
RUN_SECTIONS = ('model', 'train_dataloader', 'optim_wrapper', 'param_scheduler', 'train_cfg', 'randomness',
                'auto_scale_lr')

#: Keys inside those sections that change how a run is carried out, not what it computes: the data
#: loader's processes (every sample has its own seeded stream, whatever loads it), how often it is
#: validated (validation draws no random numbers) and the resumable loops' own fault options.
NOT_RUN_KEYS = ('train_dataloader.num_workers', 'train_dataloader.persistent_workers',
                'train_dataloader.pin_memory', 'train_dataloader.prefetch_factor', 'train_cfg.val_begin',
                'train_cfg.val_interval', 'train_cfg.dynamic_intervals', 'train_cfg.max_bad_fraction',
                'train_cfg.check_files', 'train_cfg.allow_config_change')


class IncompatibleResumeError(ValueError):
    """A resumed checkpoint belongs to another run (its config differs in keys that decide the weights),
    or its position no longer fits the data.  The message is one line naming what differs."""


def _flatten(value: Any, prefix: str, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for k in sorted(value, key=str):
            _flatten(value[k], f'{prefix}.{k}' if prefix else str(k), out)
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if not value:
            out[prefix] = '[]'
        for i, v in enumerate(value):
            _flatten(v, f'{prefix}.{i}', out)
    else:
        out[prefix] = repr(value)


def run_config(cfg: Mapping) -> dict[str, str]:
    """The leaves of :data:`RUN_SECTIONS` in ``cfg``, as ``{'optim_wrapper.optimizer.lr': '0.001', ...}``.

    Nested dicts and lists flatten to dotted keys (list items by position); values are their ``repr``.
    :data:`NOT_RUN_KEYS` and everything under them are left out.
    """
    out: dict[str, str] = {}
    for section in RUN_SECTIONS:
        if section in cfg:
            _flatten(cfg[section], section, out)
    return {k: v for k, v in out.items()
            if not any(k == skip or k.startswith(skip + '.') for skip in NOT_RUN_KEYS)}


def run_config_digest(leaves: Mapping[str, str]) -> str:
    """SHA-256 (hex, 16 characters) of :func:`run_config`'s leaves, independent of their order."""
    h = hashlib.sha256()
    for k in sorted(leaves):
        h.update(f'{k}={leaves[k]}\n'.encode())
    return h.hexdigest()[:16]


def config_changes(saved: Mapping[str, str], current: Mapping[str, str], limit: int = 4) -> str | None:
    """``None`` when ``saved`` and ``current`` (two :func:`run_config`) agree, else one phrase naming up to
    ``limit`` differing keys with both values, e.g.
    ``'train_cfg.max_epochs (10 in the checkpoint, 12 now), model.head.num_classes (...)'``."""
    keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if not keys:
        return None
    parts = [f'{k} ({saved.get(k, "absent")} in the checkpoint, {current.get(k, "absent")} now)' for k in keys[:limit]]
    more = f' and {len(keys) - limit} more' if len(keys) > limit else ''
    return ', '.join(parts) + more
