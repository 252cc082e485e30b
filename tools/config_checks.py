"""Checks and CPU fallbacks for downstream (mmseg UperNet / mmdet Cascade Mask R-CNN) configs.

Used by ``tools/train.py`` / ``tools/test.py`` (and ``tools/launch.py``, ``tools/analysis/``); not
part of the ``tlalign_mm`` package.  Nothing here imports mmseg or mmdet at module level: the
functions read an mmengine ``Config`` (or any nested mapping) so that the tools can call them
before the runner builds anything, and a mistake is reported by the config field that holds it
instead of a shape error deep inside a forward pass.

* :func:`check_downstream_config` -- crop / pad sizes divisible by the backbone's output stride,
  and ``num_classes`` of every head equal to the dataset's number of classes (when the config or
  the registered dataset class tells it; otherwise mmseg / mmdet report it when they build).
* :func:`check_data_roots` -- the dataset folders (``data_root``) a run would read that are not
  there, so that a tool stops with their config fields instead of a traceback from the dataset.
* :func:`sync_bn_to_bn` -- ``norm_cfg`` ``SyncBN`` -> ``BN`` in ``cfg.model`` (distributed runs on
  CPU processes: torch's ``SyncBatchNorm`` refuses CPU tensors).  Single-process runs need
  nothing: mmengine 0.10.7's ``Runner.wrap_model`` already calls ``revert_sync_batchnorm`` when
  the run is not distributed.
* :func:`config_file`, :class:`CfgOptions`, :func:`writable_file`, :func:`writable_dir` -- the tools' ``CONFIG``,
  ``--cfg-options`` and output arguments, refused at parsing (a usage error naming them, before any work)
  when the file is missing or not a config, an item has no ``=``, or an output cannot be made;
* :func:`amp_to_fp32_without_cuda` -- ``AmpOptimWrapper`` -> ``OptimWrapper`` on a machine
  without CUDA (mmengine's ``AmpOptimWrapper`` asserts a GPU in its constructor).
"""
from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from mmengine.config import DictAction

__all__ = ['cfg_get', 'DownstreamConfigError', 'check_downstream_config', 'backbone_stride',
           'dataset_num_classes', 'DataRootError', 'check_data_roots', 'sync_bn_to_bn', 'amp_to_fp32_without_cuda',
           'config_file', 'CfgOptions', 'CONFIG_SUFFIXES', 'writable_file', 'writable_dir']

_WRAPPERS = ('RepeatDataset', 'ClassBalancedDataset', 'MultiImageMixDataset', 'ConcatDataset')
_DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


CONFIG_SUFFIXES = ('.py', '.json', '.yml', '.yaml')


def config_file(value: str) -> str:
    """argparse ``type`` of a ``CONFIG`` argument: ``value`` when it is an existing mmengine config file
    (:data:`CONFIG_SUFFIXES`); else an ``ArgumentTypeError`` (a usage error naming the argument, exit 2)."""
    if not os.path.exists(value):
        raise argparse.ArgumentTypeError(f'config file not found: {value!r}')
    if os.path.isdir(value) or not value.endswith(CONFIG_SUFFIXES):
        raise argparse.ArgumentTypeError(f'{value!r} is not a config file ({", ".join(CONFIG_SUFFIXES)}); '
                                         'the tools take the config first, then the checkpoint')
    return value


def _creatable(path: str, want_dir: bool) -> str:
    """``path`` when a file (``want_dir``: a folder) can be made there: it is not the other kind, and its nearest
    existing ancestor is a folder; else an ``ArgumentTypeError`` naming what is in the way."""
    if os.path.exists(path) and os.path.isdir(path) != want_dir:
        raise argparse.ArgumentTypeError(f'{path!r} is a {"file" if want_dir else "folder"}, not a '
                                         f'{"folder" if want_dir else "file"}')
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise argparse.ArgumentTypeError(f'{path!r} cannot be written: {parent} is '
                                         f'{"not writable" if os.path.isdir(parent) else "a file, not a folder"}')
    return path


def writable_file(value: str) -> str:
    """argparse ``type`` of an output file argument (``--out``): refused at parsing unless it can be written."""
    return _creatable(value, want_dir=False)


def writable_dir(value: str) -> str:
    """argparse ``type`` of an output folder argument (``--work-dir``): refused at parsing unless it can be made."""
    return _creatable(value, want_dir=True)


class CfgOptions(DictAction):
    """``--cfg-options KEY=VALUE ...``: mmengine's ``DictAction``, with a usage error naming an item that has
    no ``=`` (mmengine's own raises a bare unpacking ValueError)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if bad := [v for v in values if '=' not in v]:
            parser.error(f'{option_string} {bad[0]!r}: expected KEY=VALUE')
        super().__call__(parser, namespace, values, option_string)


class DownstreamConfigError(ValueError):
    """A downstream config that cannot train as written; the message names each bad field."""


# ------------------------------------------------------------------------------------ helpers
def cfg_get(obj: Any, key: str, default: Any = None) -> Any:
    """``obj[key]`` of a mapping (an mmengine ``ConfigDict``, a dict) or ``obj.key`` of anything
    else, ``default`` when absent."""
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _pair(v: Any) -> Optional[tuple[int, int]]:
    if v is None:
        return None
    if isinstance(v, (int, float)):
        return int(v), int(v)
    if isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 2 \
            and all(isinstance(x, (int, float)) for x in v):
        return int(v[0]), int(v[1])
    return None


def backbone_stride(backbone: Mapping) -> Optional[int]:
    """Largest output stride (input pixels per feature cell) of a backbone config, or None if unknown.

    * a :class:`~tlalign_mm.models.backbones.TLABackbone` (ours): what it declares, the largest
      ``reduction`` of its ``feature_info`` (32 for Swin and PVT, ``patch_size`` for DeiT), read from
      the backbone built on the meta device (no memory, no weights); a config its constructor refuses
      gives None (the build reports it);
    * another backbone with mm's ``strides`` field (mmseg / mmdet ``SwinTransformer``,
      ``PyramidVisionTransformer(V2)``): their product;
    * anything else: None (mmseg / mmdet report a size that does not fit when they build).
    """
    import torch

    from tlalign_mm.models.backbones import TLABackbone
    from tlalign_mm.registry import MODELS

    btype = cfg_get(backbone, 'type', '')
    cls = btype if isinstance(btype, type) else MODELS.get(str(btype))
    if isinstance(cls, type) and issubclass(cls, TLABackbone):
        kwargs = {k: v for k, v in dict(backbone).items() if k != 'type'}
        try:
            with torch.device('meta'):
                built = cls(**kwargs)
        except (TypeError, ValueError):
            return None
        return max(f.reduction for f in built.feature_info)
    strides = cfg_get(backbone, 'strides')
    return math.prod(int(x) for x in strides) if strides else None


def _iter_datasets(ds: Any, path: str):
    """Yield (path, dataset cfg) of the leaf datasets under wrappers (Repeat / Concat / ...)."""
    if ds is None:
        return
    if isinstance(ds, Sequence) and not isinstance(ds, (str, Mapping)):
        for i, d in enumerate(ds):
            yield from _iter_datasets(d, f'{path}[{i}]')
        return
    dtype = str(cfg_get(ds, 'type', ''))
    if dtype.rsplit('.', 1)[-1] in _WRAPPERS or (cfg_get(ds, 'dataset') is not None and not cfg_get(ds, 'pipeline')):
        if cfg_get(ds, 'datasets') is not None:
            yield from _iter_datasets(cfg_get(ds, 'datasets'), f'{path}.datasets')
        if cfg_get(ds, 'dataset') is not None:
            yield from _iter_datasets(cfg_get(ds, 'dataset'), f'{path}.dataset')
        return
    yield path, ds


def _dataset_class(dtype: Any, scope: Optional[str]) -> Optional[type]:
    """The registered dataset class that a dataset config's ``type`` names, or None.

    ``type`` may be a class, ``'scope.Name'`` or ``'Name'`` (looked up under ``scope``, the
    config's ``default_scope``) in mmengine's root ``DATASETS`` registry, which imports the scope's
    ``registry`` / ``datasets`` modules itself; a scope that does not import (mmseg / mmdet not
    installed, a broken mmcv) or a name it does not know gives None.
    """
    if isinstance(dtype, type):
        return dtype
    key = str(dtype or '')
    if '.' not in key:
        if not key or not scope:
            return None
        key = f'{scope}.{key}'
    try:
        from mmengine.registry import DATASETS
        return DATASETS.get(key)
    except Exception:  # the scope's modules failed to import: nothing to check against
        return None


def dataset_num_classes(ds: Mapping, scope: Optional[str] = None) -> Optional[int]:
    """Number of classes of a (leaf) dataset config, or None when it cannot be told.

    Order: ``metainfo.classes`` in the config; the ``METAINFO['classes']`` of the registered
    dataset class (:func:`_dataset_class`: e.g. 150 for mmseg's ``ADE20KDataset``, 80 for mmdet's
    ``CocoDataset``).  None when neither gives a sequence of classes.
    """
    meta = cfg_get(ds, 'metainfo')
    classes = cfg_get(meta, 'classes') if meta is not None else None
    if classes is not None and not isinstance(classes, str):
        return len(classes)
    cls = _dataset_class(cfg_get(ds, 'type'), scope)
    classes = (getattr(cls, 'METAINFO', None) or {}).get('classes') if cls is not None else None
    if classes is not None and not isinstance(classes, str):
        return len(classes)
    return None


def _head_num_classes(model: Mapping) -> list[tuple[str, int]]:
    """(config path, num_classes) of every classifying head of an mmseg / mmdet model config."""
    found: list[tuple[str, int]] = []

    def visit(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            if 'num_classes' in node and isinstance(node['num_classes'], int):
                found.append((f'{path}.num_classes', node['num_classes']))
            for k, v in node.items():
                if k in ('backbone', 'data_preprocessor', 'train_cfg', 'test_cfg', 'init_cfg'):
                    continue
                if isinstance(v, (Mapping, list, tuple)):
                    visit(v, f'{path}.{k}')
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                visit(v, f'{path}[{i}]')

    visit(model, 'model')
    return found


def _crop_fields(cfg: Any) -> list[tuple[str, tuple[int, int]]]:
    """(config path, (h, w)) of every size that becomes the network's input size.

    Under ``default_scope='mmdet'`` a ``RandomCrop`` is followed by a resize (the input size is
    set by ``pad_size_divisor``), so only mmseg-style crops are collected there.
    """
    out: list[tuple[str, tuple[int, int]]] = []
    top = _pair(cfg_get(cfg, 'crop_size'))
    if top is not None:
        out.append(('crop_size', top))
    model = cfg_get(cfg, 'model') or {}
    pre = cfg_get(model, 'data_preprocessor') or {}
    size = _pair(cfg_get(pre, 'size'))
    if size is not None:
        out.append(('model.data_preprocessor.size', size))
    test_cfg = cfg_get(model, 'test_cfg') or {}
    if isinstance(test_cfg, Mapping) and cfg_get(test_cfg, 'mode') == 'slide':
        cs = _pair(cfg_get(test_cfg, 'crop_size'))
        if cs is not None:
            out.append(('model.test_cfg.crop_size', cs))
    train_dl = cfg_get(cfg, 'train_dataloader') or {}
    if cfg_get(cfg, 'default_scope') == 'mmdet':
        return out
    for dpath, ds in _iter_datasets(cfg_get(train_dl, 'dataset'), 'train_dataloader.dataset'):
        for i, t in enumerate(cfg_get(ds, 'pipeline') or []):
            if isinstance(t, Mapping) and str(cfg_get(t, 'type', '')).rsplit('.', 1)[-1] == 'RandomCrop' \
                    and cfg_get(t, 'crop_type', 'absolute') == 'absolute':
                cs = _pair(cfg_get(t, 'crop_size'))
                if cs is not None:
                    out.append((f'{dpath}.pipeline[{i}].crop_size', cs))
    return out


# ------------------------------------------------------------------------------------ checks
def check_downstream_config(cfg: Any) -> None:
    """Validate a downstream (mmseg / mmdet) config before anything is built.

    Checks (each failure names the config field):

    * segmentation (a ``model.data_preprocessor.size`` / ``crop_size`` / ``RandomCrop`` in the
      train pipeline / slide-test ``crop_size``): every such (h, w) divisible by the backbone's
      output stride (:func:`backbone_stride`: 32 for Swin, 16 for DeiT); those sizes agreeing
      with each other;
    * detection (``model.data_preprocessor.pad_size_divisor``): a multiple of the stride;
    * ``num_classes`` of every head (``decode_head``, ``auxiliary_head``, ``roi_head.bbox_head``,
      ``roi_head.mask_head``...) equal to the classes of every dataset in the train / val / test
      dataloaders (:func:`dataset_num_classes`; datasets whose class count cannot be told are
      skipped: mmseg / mmdet report those when they build the dataset).

    Configs whose backbone is not a ViT / Swin (stride unknown) get only the class check; configs
    without ``model`` are accepted unchanged (pretraining configs may be passed too).

    Args:
        cfg: mmengine ``Config`` (or a nested mapping with the same fields).

    Raises:
        DownstreamConfigError: listing every problem found.
    """
    model = cfg_get(cfg, 'model')
    if not isinstance(model, Mapping):
        return
    scope = cfg_get(cfg, 'default_scope')
    problems: list[str] = []

    backbone = cfg_get(model, 'backbone') or {}
    stride = backbone_stride(backbone) if isinstance(backbone, Mapping) else None
    if stride:
        bdesc = f"model.backbone ({cfg_get(backbone, 'type')}, output stride {stride})"
        crops = _crop_fields(cfg)
        for path, (h, w) in crops:
            if h % stride or w % stride:
                problems.append(f'{path}={(h, w)} is not divisible by the output stride of {bdesc}; '
                                f'use a multiple of {stride}, e.g. '
                                f'{(max(stride, h // stride * stride), max(stride, w // stride * stride))}')
        distinct = {hw for p, hw in crops if p != 'model.test_cfg.crop_size'}
        if len(distinct) > 1:
            problems.append('the training input sizes disagree: '
                            + ', '.join(f'{p}={hw}' for p, hw in crops if p != 'model.test_cfg.crop_size')
                            + ' (the data preprocessor pads every crop to model.data_preprocessor.size)')
        pre = cfg_get(model, 'data_preprocessor') or {}
        div = cfg_get(pre, 'pad_size_divisor')
        if isinstance(div, int) and div > 1 and div % stride:
            problems.append(f'model.data_preprocessor.pad_size_divisor={div} is not a multiple of the '
                            f'output stride of {bdesc}')

    heads = _head_num_classes(model)
    for dl_name in _DATALOADERS:
        dl = cfg_get(cfg, dl_name)
        if not isinstance(dl, Mapping):
            continue
        for dpath, ds in _iter_datasets(cfg_get(dl, 'dataset'), f'{dl_name}.dataset'):
            n = dataset_num_classes(ds, scope)
            if n is None:
                continue
            src = 'metainfo.classes' if cfg_get(cfg_get(ds, 'metainfo'), 'classes') is not None \
                else str(cfg_get(ds, 'type'))
            for hpath, hn in heads:
                if hn != n:
                    problems.append(f'{hpath}={hn} but {dpath} ({src}) has {n} classes')
    if problems:
        uniq = list(dict.fromkeys(problems))
        raise DownstreamConfigError('invalid downstream config:\n  - ' + '\n  - '.join(uniq))


class DataRootError(FileNotFoundError):
    """Dataset folders a run would read are not there; the message names each config field."""


def check_data_roots(cfg: Any, dataloaders: Sequence[str] = _DATALOADERS) -> None:
    """Check that the ``data_root`` of every dataset in ``dataloaders`` (leaf datasets under wrappers) is a folder
    on this machine; roots with a scheme (``s3://`` ...) are not checked.  Relative roots are relative to the
    working directory, as the datasets read them.

    Raises:
        DataRootError: naming each missing folder, its config field, and how to fix it.
    """
    missing = []
    for dl_name in dataloaders:
        dl = cfg_get(cfg, dl_name)
        for dpath, ds in _iter_datasets(cfg_get(dl, 'dataset') if isinstance(dl, Mapping) else None,
                                        f'{dl_name}.dataset'):
            root = cfg_get(ds, 'data_root')
            if isinstance(root, str) and root and '://' not in root and not os.path.isdir(os.path.expanduser(root)):
                missing.append(f'{dpath}.data_root={root!r}')
    if missing:
        missing = list(dict.fromkeys(missing))
        raise DataRootError(f'no dataset folder at {", ".join(missing)} (relative to {os.getcwd()}): prepare the '
                            'data as docs/user_guides/data.md says, or point the config at it, e.g. --cfg-options '
                            f'{missing[0].split("=", 1)[0]}=PATH')


# ------------------------------------------------------------------------------------ fallbacks
def sync_bn_to_bn(cfg: Any) -> list[str]:
    """Replace every ``SyncBN`` norm config under ``cfg.model`` by ``BN``, in place.

    For distributed runs on CPU processes (gloo): torch's ``SyncBatchNorm`` refuses CPU input, and
    mmengine reverts SyncBN only for non-distributed runs.  Statistics are then per process.

    Returns:
        the config paths changed (e.g. ``['model.decode_head.norm_cfg', ...]``).
    """
    changed: list[str] = []

    def visit(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            if node.get('type') in ('SyncBN', 'MMSyncBN', 'TorchSyncBN') and path.endswith('norm_cfg'):
                node['type'] = 'BN'
                changed.append(path)
                return
            for k, v in node.items():
                if isinstance(v, (Mapping, list)):
                    visit(v, f'{path}.{k}')
        elif isinstance(node, list):
            for i, v in enumerate(node):
                visit(v, f'{path}[{i}]')

    model = cfg_get(cfg, 'model')
    if model is not None:
        visit(model, 'model')
    return changed


def amp_to_fp32_without_cuda(cfg: Any, cuda_available: Optional[bool] = None) -> bool:
    """``optim_wrapper.type`` ``AmpOptimWrapper`` -> ``OptimWrapper`` when CUDA is not available.

    mmengine 0.10.7's ``AmpOptimWrapper.__init__`` asserts a GPU / NPU / MLU / MUSA device; the
    AMP-only keys ``loss_scale`` and ``dtype`` are dropped with it.  Returns True if changed.
    """
    if cuda_available is None:
        import torch
        cuda_available = torch.cuda.is_available()
    ow = cfg_get(cfg, 'optim_wrapper')
    if cuda_available or not isinstance(ow, Mapping) or ow.get('type') != 'AmpOptimWrapper':
        return False
    ow['type'] = 'OptimWrapper'
    for k in ('loss_scale', 'dtype', 'use_fsdp'):
        if k in ow:
            del ow[k]
    return True
