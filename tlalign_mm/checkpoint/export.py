"""Writing our checkpoints for timm, mmseg, mmdet, mmpretrain or ours: a checkpoint of any layout we read is converted
into ours, then its family module writes it under the target's names from the key tables it reads with, and a build
line from its ``stock`` (which target holds which family: ``docs/user_guides/export.md``).
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping

from ..version import __version__
from .io import atomic_save, load_checkpoint_file
from .keys import ExportResult
from .layouts import checkpoint_head, extract_state_dict, family_of, foreign_readout, read_backbone

__all__ = ['EXPORT_TARGETS', 'READOUTS', 'backbone_export', 'export_state_dict', 'export_checkpoint']

EXPORT_TARGETS = ('tlalign', 'timm', 'mmseg', 'mmdet', 'mmpretrain')
READOUTS = ('cls_token', 'avg_featmap')
"""Our classifier's pooled features (the backbone's ``out_type``): the class token or the token mean."""


def backbone_export(state_dict: Mapping, **meta) -> dict:
    """The one backbone-export format, ``{'state_dict': tensors (our layout, no prefix, contiguous, on the CPU),
    'meta': {'layout': 'tlalign', 'tlalign_mm_version': ..., **meta}}`` (``meta``: source, epoch ...), that
    :func:`export_checkpoint`, ``BackboneExportHook`` and ``init_cfg=dict(type='Pretrained')`` write and read."""
    sd = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    return {'state_dict': sd, 'meta': {'layout': 'tlalign', 'tlalign_mm_version': __version__, **meta}}


def export_state_dict(state_dict: Mapping, to: str, head: Mapping | None = None, readout: str | None = None,
                      allow_drop: bool = False) -> ExportResult:
    """Write a backbone state dict in our layout under the names of another library's model.

    Args:
        state_dict: our backbone keys (a model's ``state_dict()``, :func:`~.layouts.convert_state_dict`'s).
        to: one of :data:`EXPORT_TARGETS`.
        head: ``{'weight': (K, C), 'bias': (K,)}``, our classifier's linear head, written where the target model
            has one (timm), else left out.
        readout: the feature our classifier read (:data:`READOUTS`): timm's ``global_pool`` for a ViT head.
        allow_drop: write even when the target cannot hold some of our parameters (listed in ``dropped``).

    Returns:
        :class:`~tlalign_mm.checkpoint.keys.ExportResult`; its ``build`` makes the model it loads into strictly.

    Raises:
        ValueError: an unknown target or readout; an architecture the target cannot hold (names both); parameters
            it cannot hold without ``allow_drop`` (lists them); a state dict that is no backbone of ours (names its
            layout).
    """
    if to not in EXPORT_TARGETS:
        raise ValueError(f'unknown export target {to!r}; choose one of {", ".join(EXPORT_TARGETS)}')
    if readout is not None and readout not in READOUTS:
        raise ValueError(f'unknown readout {readout!r}; choose one of {", ".join(READOUTS)}')
    sd = dict(state_dict)
    family = family_of(sd)
    if (layout := family.detect(sd)) != 'tlalign':
        raise ValueError(f"export_state_dict takes our layout ('tlalign'), this state dict is {layout!r}: convert it "
                         'first (convert_state_dict), or export the file with export_checkpoint')
    if to == 'tlalign':
        return ExportResult(sd, 'tlalign', f'tlalign_mm {family.NAME} backbone',
                            "backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=DST))")
    result = family.export(sd, to, dict(head) if head else None, readout)
    if result.dropped and not allow_drop:
        raise ValueError(f'exporting to {to!r} would drop {len(result.dropped)} parameter(s) {result.model} has no '
                         f'place for: {result.dropped[:8]}{" ..." if len(result.dropped) > 8 else ""}; pass '
                         'allow_drop=True (--allow-drop) to write the rest')
    return result


def _checkpoint_readout(checkpoint: Mapping, full: Mapping, layout: str, prefix: str) -> str | None:
    """The feature the checkpoint's head read, when it tells: ours by the backbone ``out_type`` in the Runner's config
    text (``meta['cfg']``), a foreign one by its keys (:func:`~tlalign_mm.checkpoint.layouts.foreign_readout`)."""
    if prefix or layout == 'tlalign':
        cfg = meta.get('cfg') if isinstance(meta := checkpoint.get('meta'), Mapping) else ''
        found = set(re.findall(r"""out_type\s*=\s*['"](\w+)['"]""", cfg if isinstance(cfg, str) else '')) & {*READOUTS}
        return found.pop() if len(found) == 1 else None
    return foreign_readout(full)[0]


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, to: str = 'tlalign', prefix: str | None = None,
                      readout: str | None = None, allow_drop: bool = False, with_head: bool = True) -> dict:
    """Read any checkpoint we read and write its backbone (and head) for ``to``, atomically (:func:`atomic_save`).

    ``dst`` ending in ``.safetensors`` holds the flat ``{name: tensor}``; otherwise :func:`backbone_export`'s
    ``{'state_dict', 'meta'}`` (``meta``: the source, its layout and, for another target, the target layout, model
    and build line).  Sizes are kept as stored; the classifier's pretraining-only ``label_rule.*`` is never written.

    Args:
        src: a checkpoint (pretraining checkpoint, backbone export, official release ...); dst: the output file.
        to, allow_drop: as :func:`export_state_dict`; prefix: as :func:`~.layouts.extract_state_dict`.
        readout: our classifier's pooled feature when the checkpoint does not tell (needed for a DeiT head to timm).
        with_head: take the head along where the target has one.

    Returns:
        dict with ``layout`` (source), ``prefix``, ``ignored`` (source keys dropped on reading), ``num_keys``
        (written), ``dst``, ``to``, ``target_layout``, ``model``, ``build``, ``readout``, ``head`` (whether
        written), ``dropped``, ``notes``, ``label_params``.

    Raises:
        FileNotFoundError, pickle.UnpicklingError: see :func:`~tlalign_mm.checkpoint.load_checkpoint_file`.
        ValueError: as :func:`export_state_dict`; an unrecognised source.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    ckpt = load_checkpoint_file(src)
    converted, layout, ignored, used_prefix = read_backbone(ckpt, prefix, src, 'pass --prefix')
    full, _ = extract_state_dict(ckpt, '')
    label_params = [k for k in full if k.startswith('label_rule.')]
    head = checkpoint_head(full) if with_head and to != 'tlalign' else None
    if readout is None and to != 'tlalign':
        readout = _checkpoint_readout(ckpt, full, layout, used_prefix)
    result = export_state_dict(converted, to, head, readout, allow_drop)
    meta = {} if to == 'tlalign' else dict(layout=result.layout, target=to, model=result.model, build=result.build,
                                           readout=readout, dropped=list(result.dropped))
    atomic_save(result.state_dict if dst.endswith('.safetensors') else backbone_export(
        result.state_dict, **meta, source=src, source_layout=layout, prefix=used_prefix), dst)
    return {'layout': layout, 'prefix': used_prefix, 'ignored': ignored, 'num_keys': len(result.state_dict),
            'dst': dst, 'to': to, 'target_layout': result.layout, 'model': result.model, 'build': result.build,
            'readout': readout, 'head': bool(head) and any(k.startswith('head.') for k in result.state_dict),
            'dropped': list(result.dropped), 'notes': list(result.notes), 'label_params': label_params}

