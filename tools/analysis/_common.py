"""Shared set-up of the analysis tools: config -> classifier (+ checkpoint) and dataloaders.

A module of the analysis tools (``token_fluctuation.py``, ``visualize_aligned_labels.py``,
``rule_lambdas.py``, ``robustness.py``, ``model_cost.py``), imported as ``_common`` with this
folder on ``sys.path`` (a script's own folder is); not part of the ``tlalign_mm`` package, which
measures models and does not read configs.

The analysis tools run over the installed ``tlalign_mm`` (``pip install -e .``, as
``tools/setup_env.sh`` does); on import this module warns on stderr when that is not this
checkout's package (:func:`tlalign_mm.utils.checkout.checkout_mismatch`).  It also appends
``tools/`` to ``sys.path``, the one entry the analysis tools add: ``model_cost.py`` and
``gpu_check.py`` reach the launch plumbing they share with ``tools/train.py`` (``config_checks``,
``launch``) through it.  Appended, not prepended: ``tools/test.py`` must not shadow the standard
library's ``test`` package.
"""
from __future__ import annotations

import argparse
import copy
import os.path as osp
import sys
from collections.abc import Sequence
from typing import Optional

import torch

from tlalign_mm.utils.checkout import checkout_mismatch

__all__ = ['RANDOM_INIT', 'quiet_init_weights', 'load_config', 'build_classifier', 'build_dataloader',
           'build_train_dataloader', 'build_dataset', 'class_names', 'pick_device', 'device_arg',
           'add_config_checkpoint_args', 'output_dir', 'weights_title']

_TOOLS = osp.dirname(osp.dirname(osp.abspath(__file__)))
if _TOOLS not in sys.path:
    sys.path.append(_TOOLS)

if (_other := checkout_mismatch(__file__)) is not None:       # two clones: this one is not installed
    print(f'warning: {_other}', file=sys.stderr)

RANDOM_INIT = 'random-init'


def add_config_checkpoint_args(parser) -> None:
    """The positional ``config`` and optional ``checkpoint`` of the tools that trace one classifier."""
    from config_checks import config_file  # tools/config_checks.py
    parser.add_argument('config', type=config_file)
    parser.add_argument('checkpoint', nargs='?', default=None,
                        help='checkpoint (classifier or backbone); omitted: random initialisation')


def output_dir(config: str, out_dir: Optional[str], tool: str) -> tuple[str, str]:
    """``(stem, folder)``: the config file's stem and ``out_dir``, or ``work_dirs/<tool>/<stem>``."""
    stem = osp.splitext(osp.basename(config))[0]
    return stem, out_dir or osp.join('work_dirs', tool, stem)


def weights_title(weights: str) -> str:
    """What a figure's title says of the weights :func:`build_classifier` reported."""
    return 'RANDOM INIT (untrained)' if weights == RANDOM_INIT else osp.basename(weights)


def load_config(path: str, cfg_options: Optional[dict] = None, dataloaders: Sequence[str] = ()):
    """``mmengine.Config.fromfile(path)`` with ``cfg_options`` merged in and the config's default
    scope (``tlalign_mm`` when it sets none) made current.

    Raises:
        DataRootError: a ``data_root`` of the ``dataloaders`` the tool will read is not a folder
            (``config_checks.check_data_roots``: names the field and the fix), before any model is built.
    """
    from config_checks import check_data_roots  # tools/config_checks.py
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import tlalign_mm  # noqa: F401  (registries)

    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get('default_scope', None) or 'tlalign_mm')
    check_data_roots(cfg, dataloaders)
    return cfg


def pick_device(device: Optional[str]) -> torch.device:
    """``device`` as given, else CUDA when available, else CPU."""
    if device:
        return torch.device(device)
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def device_arg(value: str) -> str:
    """argparse ``type`` of ``--device``: ``value`` when it names a device this machine has (``cpu``,
    ``cuda``, ``cuda:1`` ...); else an ``ArgumentTypeError`` (a usage line, exit status 2) saying what
    it has, before anything is built."""
    try:
        dev = torch.device(value)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f'{value!r} is not a torch device (cpu, cuda, cuda:1 ...)') from None
    if dev.type == 'cuda' and (dev.index or 0) >= (n := torch.cuda.device_count()):
        raise argparse.ArgumentTypeError(f'{value!r}: this machine has {n} CUDA device(s)'
                                         + ('' if n else ' (torch.cuda.is_available() is False); use --device cpu'))
    backend = getattr(torch, dev.type, None)            # torch.mps, torch.xpu ...
    if dev.type not in ('cpu', 'cuda') and not (hasattr(backend, 'is_available') and backend.is_available()):
        raise argparse.ArgumentTypeError(f'{value!r}: torch has no {dev.type} device on this machine')
    return value


def quiet_init_weights(model) -> None:
    """``model.init_weights()`` without mmengine's per-parameter INFO report."""
    import logging

    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)


def build_classifier(cfg, checkpoint: Optional[str] = None, device: str | torch.device = 'cpu',
                     seed: int = 0, log=print, require_head: bool = False):
    """Build ``cfg.model`` (a :class:`~tlalign_mm.models.TLAImageClassifier`) and its weights.

    Args:
        cfg: config from :func:`load_config`.
        checkpoint: a checkpoint path (full classifier checkpoint from mmengine, a backbone-only
            export, or any layout :func:`tlalign_mm.checkpoint.load_backbone_checkpoint` reads),
            or None for a random initialisation (``init_weights`` after ``torch.manual_seed(seed)``).
        device: where to put the model.
        log: called with one line describing what was loaded.
        require_head: raise ``ValueError`` unless the checkpoint also holds a head of this
            model's shape (tools that score predictions need the trained classifier).

    Returns:
        ``(model, weights)``: the model in eval mode and a short description of its weights
        (the checkpoint path, or ``'random-init'``).  The token-fluctuation figures depend on the
        backbone only, so only the backbone is loaded from the checkpoint (the loader raises
        when under 90% of it would be matched); a classifier checkpoint's head is loaded too
        when its shape fits.
    """
    from tlalign_mm.models import TLAImageClassifier
    from tlalign_mm.registry import MODELS

    torch.manual_seed(seed)
    model = MODELS.build(copy.deepcopy(cfg.model))
    if not isinstance(model, TLAImageClassifier):
        raise TypeError(f'cfg.model builds {type(model).__name__}; the analysis tools need a '
                        'TLAImageClassifier (a pretraining config)')
    quiet_init_weights(model)
    weights = RANDOM_INIT
    if checkpoint:
        from tlalign_mm.checkpoint import load_backbone_checkpoint, load_checkpoint_file
        from tlalign_mm.checkpoint.layouts import load_head_state
        ckpt = load_checkpoint_file(checkpoint)                  # read once: backbone, then head
        report = load_backbone_checkpoint(model.backbone, ckpt, source=str(checkpoint))
        head_note = load_head_state(model, ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else {})
        if require_head and head_note != 'head loaded':
            raise ValueError(f'{checkpoint}: {head_note}; scoring predictions needs a classifier checkpoint '
                             f'whose head has {model.num_classes} classes (a full training checkpoint, not a '
                             'backbone export)')
        log(f'loaded {checkpoint}: {report.summary()}; {head_note}')
        weights = str(checkpoint)
    elif require_head:
        raise ValueError('no checkpoint given: scoring predictions needs a trained classifier checkpoint')
    else:
        log('no checkpoint given: the model is RANDOMLY INITIALISED (seed '
            f'{seed}); figures describe an untrained network')
    model.to(device)
    model.eval()
    return model, weights


def build_dataloader(dataloader_cfg, batch_size: Optional[int] = None, num_workers: int = 0, seed: int = 0,
                     shuffle: Optional[bool] = None):
    """``Runner.build_dataloader`` of a copy of ``dataloader_cfg`` with the batch size / workers
    overridden (``persistent_workers`` off, so the tool exits promptly); ``shuffle`` set replaces
    the sampler by mmengine's ``DefaultSampler`` with that shuffle."""
    from mmengine.runner import Runner

    dl = copy.deepcopy(dataloader_cfg)
    if batch_size is not None:
        dl['batch_size'] = batch_size
    dl['num_workers'] = num_workers
    dl['persistent_workers'] = False
    if num_workers == 0:
        dl.pop('prefetch_factor', None)
    if shuffle is not None:
        dl['sampler'] = dict(type='DefaultSampler', shuffle=shuffle)
    return Runner.build_dataloader(dl, seed=seed)


def build_train_dataloader(cfg, batch_size: Optional[int] = None, num_workers: int = 0, seed: int = 0):
    """:func:`build_dataloader` of ``cfg.train_dataloader``."""
    return build_dataloader(cfg.train_dataloader, batch_size, num_workers, seed)


def build_dataset(cfg, split: str = 'val'):
    """The dataset of ``cfg.{split}_dataloader`` (``split`` in 'train', 'val', 'test')."""
    from tlalign_mm.registry import DATASETS

    key = f'{split}_dataloader'
    if key not in cfg or cfg[key] is None:
        raise ValueError(f'the config has no {key}')
    return DATASETS.build(copy.deepcopy(cfg[key]['dataset']))


def class_names(dataset) -> Optional[Sequence[str]]:
    """``dataset.metainfo['classes']`` when present."""
    meta = getattr(dataset, 'metainfo', None) or {}
    classes = meta.get('classes') if isinstance(meta, dict) else None
    return list(classes) if classes else None
