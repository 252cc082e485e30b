"""Pretrained checkpoints for the TL-Align backbones: the public face of safe loading, layout conversion,
resizing and export.

Where each part lives (imports point one way: ``utils.checkpoint_io`` <- ``models.layouts`` <-
the backbones and ``models.loading`` <- this module):

* :func:`load_checkpoint_file` (``tlalign_mm/utils/checkpoint_io.py``): reading a file without
  executing pickled code;
* the layouts (ours, official DeiT / TL-Align and timm ViT, mmseg / mmpretrain ViT, official /
  timm / mm Swin, official / mmdet PVT: the list with each one's keys is in
  ``tlalign_mm/models/layouts.py``), their detection, conversion and resizing, and
  :func:`load_backbone_checkpoint`, which refuses a checkpoint that matches little of the model;
* the classifier's own checkpoints and the head readout check (``tlalign_mm/models/loading.py``);
* :func:`export_backbone`, here.
"""
from __future__ import annotations

import os

from .models import backbones as _backbones  # noqa: F401  (the backbone files register their layouts)
from .models.layouts import (
    LAYOUTS,
    LoadReport,
    _detect_or_raise,
    convert_state_dict,
    detect_layout,
    extract_state_dict,
    filter_state_dict,
    has_key,
    is_recomputed_buffer,
    layout_families,
    load_backbone_checkpoint,
    register_layouts,
    rename_key,
    resize_pos_embed,
    resize_relative_position_bias_table,
    stage_ids,
)
from .models.loading import check_head_readout, foreign_head_state, load_classifier_checkpoint, load_head_state
from .utils.checkpoint_io import atomic_save, load_checkpoint_file
from .utils.torch_compat import mmengine_safe_globals
from .version import __version__

__all__ = ['LAYOUTS', 'LoadReport', 'mmengine_safe_globals', 'load_checkpoint_file', 'has_key', 'stage_ids',
           'is_recomputed_buffer', 'filter_state_dict', 'rename_key', 'register_layouts', 'layout_families',
           'extract_state_dict', 'detect_layout', 'convert_state_dict', 'resize_pos_embed',
           'resize_relative_position_bias_table', 'load_backbone_checkpoint', 'backbone_export', 'export_backbone',
           'load_classifier_checkpoint', 'foreign_head_state', 'check_head_readout', 'load_head_state']


def backbone_export(state_dict, **meta) -> dict:
    """The one backbone-export format: ``{'state_dict': tensors (our layout, no prefix, contiguous,
    on the CPU), 'meta': {'layout': 'tlalign', 'tlalign_mm_version': ..., **meta}}``, what
    :func:`export_backbone`, ``tools/convert_checkpoint.py`` and the ``BackboneExportHook`` write and
    ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` reads (:func:`load_backbone_checkpoint`).

    Args:
        state_dict: backbone tensors in our layout.
        meta: what to record besides the layout and version (source, epoch, backbone type ...).
    """
    sd = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    return {'state_dict': sd, 'meta': dict(layout='tlalign', tlalign_mm_version=__version__, **meta)}


def export_backbone(src_checkpoint_path: str | os.PathLike, dst_path: str | os.PathLike,
                    prefix: str | None = None) -> dict:
    """Write a backbone-only checkpoint in our layout, for ``init_cfg=dict(type='Pretrained', ...)``.

    The file holds ``{'state_dict': converted, 'meta': {'source', 'layout', 'prefix',
    'tlalign_mm_version'}}`` with keys as the backbones name their parameters (no prefix):
    heads and recomputed buffers dropped, mm / timm-swin layouts renamed and reordered, the
    Swin final ``norm`` renamed ``norm{last}``.  Sizes are kept (resizing happens at load time,
    for the model that loads it).

    Args:
        src_checkpoint_path: any checkpoint :func:`load_backbone_checkpoint` reads.
        dst_path: output file (parent folders are created; written atomically, :func:`atomic_save`).
        prefix: as :func:`extract_state_dict`.

    Returns:
        dict with ``layout``, ``num_keys`` (written), ``ignored`` (dropped source keys),
        ``prefix`` and ``dst``.

    Raises:
        FileNotFoundError, pickle.UnpicklingError: see :func:`load_checkpoint_file`.
        ValueError: prefix with no keys, or unrecognised layout.
    """
    src = os.fspath(src_checkpoint_path)
    dst = os.fspath(dst_path)
    sd, used_prefix = extract_state_dict(load_checkpoint_file(src), prefix)
    layout = _detect_or_raise(sd, src, used_prefix, 'pass --prefix')
    converted, layout, ignored = convert_state_dict(sd, layout)
    atomic_save(backbone_export(converted, source=src, source_layout=layout, prefix=used_prefix), dst)
    return {'layout': layout, 'num_keys': len(converted), 'ignored': ignored,
            'prefix': used_prefix, 'dst': dst}
