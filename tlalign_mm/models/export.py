"""Exporting our checkpoints into other libraries' layouts: timm, mmseg, mmdet, mmpretrain, or ours.

The reverse of reading (``tlalign_mm/models/layouts.py``): a checkpoint of any layout we read is
converted into ours, then the backbone file that owns its architecture writes it under the
target's names (``export_state_dict`` in ``tlalign_mm/models/backbones/{vit,swin,pvt}.py``, from
the same key tables its ``checkpoint_filter_fn`` reads with).  What goes where:

============  =========================================  =============================================
target        DeiT / ViT                                 Swin / PVT
============  =========================================  =============================================
``timm``      ``VisionTransformer`` + head               ``SwinTransformer`` + head; ``pvt_v2_b*`` + head
``mmseg``     ``VisionTransformer``                      ``SwinTransformer``
``mmdet``     (none: an error)                           ``SwinTransformer``; ``PyramidVisionTransformer(V2)``
``mmpretrain`` ``VisionTransformer`` / ``Distilled...``  (an error)
``tlalign``   ours (:func:`backbone_export`)             ours
============  =========================================  =============================================

Imports point one way: this module reads ``models.layouts`` (the registry the backbone files fill)
and ``models.loading``; ``tlalign_mm/checkpoint.py`` re-exports it.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from ..utils.checkpoint_io import atomic_save, load_checkpoint_file
from ..version import __version__
from .layouts import (
    EXPORT_TARGETS,
    ExportResult,
    _detect_or_raise,
    convert_state_dict,
    extract_state_dict,
    layout_families,
)
from .loading import foreign_readout

__all__ = ['EXPORT_TARGETS', 'READOUTS', 'backbone_export', 'export_state_dict', 'export_checkpoint',
           'checkpoint_head', 'checkpoint_readout']

READOUTS = ('cls_token', 'avg_featmap')
"""Our classifier's pooled features (the backbone's ``out_type``): the class token or the token mean."""

_LABEL_ONLY_PREFIXES = ('label_rule.',)
"""Classifier parameters used in pretraining only (DenseTLAlign's token head): never exported."""


def backbone_export(state_dict, **meta) -> dict:
    """The one backbone-export format: ``{'state_dict': tensors (our layout, no prefix, contiguous,
    on the CPU), 'meta': {'layout': 'tlalign', 'tlalign_mm_version': ..., **meta}}``, what
    :func:`export_checkpoint` (``to='tlalign'``), ``tools/convert_checkpoint.py`` and the
    ``BackboneExportHook`` write and ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` reads
    (:func:`~tlalign_mm.models.layouts.load_backbone_checkpoint`).

    Args:
        state_dict: backbone tensors in our layout.
        meta: what to record besides the layout and version (source, epoch, backbone type ...).
    """
    sd = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    return {'state_dict': sd, 'meta': dict(layout='tlalign', tlalign_mm_version=__version__, **meta)}


def _check_target(to: str) -> str:
    if to not in EXPORT_TARGETS:
        raise ValueError(f'unknown export target {to!r}; choose one of {", ".join(EXPORT_TARGETS)}')
    return to


def _family(state_dict: Mapping):
    """The registered family that recognises a state dict in our layout (ViT, Swin or PVT)."""
    for family in layout_families():
        if family.detect(state_dict) is not None:
            return family
    raise ValueError('the state dict is not a DeiT / Swin / PVT backbone in our layout '
                     f'(first keys: {list(state_dict)[:5]})')


def export_state_dict(state_dict: Mapping, to: str, head: Mapping | None = None, readout: str | None = None,
                      allow_drop: bool = False) -> ExportResult:
    """Write a backbone state dict in our layout under the names of another library's model.

    Args:
        state_dict: our backbone keys (what :func:`~tlalign_mm.models.layouts.convert_state_dict`
            returns, or a model's ``state_dict()``).
        to: one of :data:`~tlalign_mm.models.layouts.EXPORT_TARGETS`.
        head: ``{'weight': (K, C), 'bias': (K,)}``, our classifier's linear head, written where the
            target model has a head (timm), else left out.
        readout: ``'cls_token'`` or ``'avg_featmap'`` (:data:`READOUTS`): which pooled feature our
            classifier read; it picks timm's ``global_pool`` for a ViT (needed there with a head).
        allow_drop: write even when the target cannot hold some of our parameters (they are left
            out and listed in ``ExportResult.dropped``).

    Returns:
        :class:`~tlalign_mm.models.layouts.ExportResult` (``build``: the call that builds the
        target model this state dict loads into with ``strict=True``).

    Raises:
        ValueError: an unknown target or readout; an architecture the target cannot hold (names both,
            e.g. PVT v1 to timm); parameters the target cannot hold without ``allow_drop`` (lists
            them); a state dict that is no backbone of ours.
    """
    _check_target(to)
    if readout is not None and readout not in READOUTS:
        raise ValueError(f'unknown readout {readout!r}; choose one of {", ".join(READOUTS)}')
    sd = dict(state_dict)
    family = _family(sd)
    if to == 'tlalign':
        return ExportResult(sd, 'tlalign', f'tlalign_mm {family.name} backbone',
                            "backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=DST))")
    result = family.export(sd, to, dict(head) if head else None, readout)
    if result.dropped and not allow_drop:
        raise ValueError(f'exporting to {to!r} would drop {len(result.dropped)} parameter(s) {result.model} has no '
                         f'place for: {result.dropped[:8]}{" ..." if len(result.dropped) > 8 else ""}; pass '
                         'allow_drop=True (--allow-drop) to write the rest')
    return result


def checkpoint_head(full_state_dict: Mapping) -> dict | None:
    """The classifier head of a checkpoint: ours (``head.fc.*``, as the Runner saves
    :class:`~tlalign_mm.TLAImageClassifier`), timm Swin's (``head.fc.*``) or the official / timm
    ViT / PVT one (``head.weight`` / ``head.bias``); None when there is none."""
    for pre in ('head.fc.', 'head.'):
        if f'{pre}weight' in full_state_dict and f'{pre}bias' in full_state_dict:
            return {'weight': full_state_dict[f'{pre}weight'], 'bias': full_state_dict[f'{pre}bias']}
    return None


_OUT_TYPE = re.compile(r"""out_type\s*=\s*['"](\w+)['"]""")


def checkpoint_readout(checkpoint: Mapping, full_state_dict: Mapping, layout: str, prefix: str) -> str | None:
    """Which pooled feature the checkpoint's head read, when the checkpoint tells.

    * a classifier checkpoint of ours (keys under ``prefix``): the backbone ``out_type`` in the config
      the mmengine Runner stores as text in ``meta['cfg']``, when it names one of :data:`READOUTS`;
    * a foreign checkpoint: its keys (:func:`~tlalign_mm.models.loading.foreign_readout`: a
      ``cls_token`` without ``fc_norm`` means the class token).

    Returns:
        ``'cls_token'``, ``'avg_featmap'`` or None (not known).
    """
    if prefix or layout == 'tlalign':
        meta = checkpoint.get('meta') if isinstance(checkpoint, Mapping) else None
        cfg = meta.get('cfg') if isinstance(meta, Mapping) else None
        found = {m for m in _OUT_TYPE.findall(cfg) if m in READOUTS} if isinstance(cfg, str) else set()
        return found.pop() if len(found) == 1 else None
    return foreign_readout(full_state_dict)[0]


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, to: str = 'tlalign', prefix: str | None = None,
                      readout: str | None = None, allow_drop: bool = False, with_head: bool = True) -> dict:
    """Read any checkpoint we read and write its backbone (and head) for another library.

    ``DST`` ending in ``.safetensors`` holds the flat ``{name: tensor}``; otherwise
    ``{'state_dict': ..., 'meta': ...}`` (what mmengine's and timm's ``load_checkpoint`` unwrap;
    ``meta`` records the source, both layouts, the target model and the line that builds it).
    ``to='tlalign'`` writes :func:`backbone_export` (what :func:`~tlalign_mm.checkpoint.export_backbone`
    always wrote).  Written atomically (:func:`~tlalign_mm.utils.checkpoint_io.atomic_save`); sizes
    are kept as stored.  The classifier's pretraining-only parameters (``label_rule.*``) are never
    written (counted in ``label_params``).

    Args:
        src: a checkpoint (full pretraining checkpoint, ``backbone.pth`` export, official release ...).
        dst: the output file (``.pth`` / ``.safetensors``).
        to: one of :data:`~tlalign_mm.models.layouts.EXPORT_TARGETS`.
        prefix: the backbone's key prefix in ``src`` (as :func:`~tlalign_mm.models.layouts.extract_state_dict`).
        readout: our classifier's pooled feature, when the checkpoint does not tell
            (:func:`checkpoint_readout`); needed to take a DeiT head to timm.
        allow_drop: see :func:`export_state_dict`.
        with_head: take the classifier head along where the target has one.

    Returns:
        dict with ``layout`` (source), ``prefix``, ``ignored`` (source keys dropped on reading: heads,
        buffers), ``num_keys`` (written), ``dst``, ``to``, ``target_layout``, ``model``, ``build``,
        ``readout``, ``head`` (whether written), ``dropped``, ``notes``, ``label_params``.

    Raises:
        FileNotFoundError, pickle.UnpicklingError: see :func:`~tlalign_mm.utils.checkpoint_io.load_checkpoint_file`.
        ValueError: an unknown target or readout, an unrecognised source, an architecture the target
            cannot hold, parameters it would drop (see :func:`export_state_dict`).
    """
    _check_target(to)
    src, dst = os.fspath(src), os.fspath(dst)
    ckpt = load_checkpoint_file(src)
    sd, used_prefix = extract_state_dict(ckpt, prefix)
    layout = _detect_or_raise(sd, src, used_prefix, 'pass --prefix')
    converted, layout, ignored = convert_state_dict(sd, layout)
    full, _ = extract_state_dict(ckpt, '')
    label_params = [k for k in full if k.startswith(_LABEL_ONLY_PREFIXES)]
    head = checkpoint_head(full) if with_head and to != 'tlalign' else None
    if readout is None and to != 'tlalign':
        readout = checkpoint_readout(ckpt, full, layout, used_prefix)
    result = export_state_dict(converted, to, head, readout, allow_drop)
    safetensors = dst.endswith('.safetensors')
    if to == 'tlalign':
        obj: Any = converted if safetensors else backbone_export(converted, source=src, source_layout=layout,
                                                                 prefix=used_prefix)
    else:
        obj = result.state_dict if safetensors else {
            'state_dict': {k: v.detach().cpu().contiguous() for k, v in result.state_dict.items()},
            'meta': dict(layout=result.layout, target=to, model=result.model, build=result.build,
                         readout=readout, source=src, source_layout=layout, prefix=used_prefix,
                         dropped=list(result.dropped), tlalign_mm_version=__version__)}
    atomic_save(obj, dst)
    return {'layout': layout, 'prefix': used_prefix, 'ignored': ignored, 'num_keys': len(result.state_dict),
            'dst': dst, 'to': to, 'target_layout': result.layout, 'model': result.model, 'build': result.build,
            'readout': readout, 'head': bool(head) and any(k.startswith('head.') for k in result.state_dict),
            'dropped': list(result.dropped), 'notes': list(result.notes), 'label_params': label_params}
