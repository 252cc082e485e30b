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
* export (``tlalign_mm/models/export.py``): :func:`export_checkpoint` writes any checkpoint we
  read for timm, mmseg, mmdet, mmpretrain or ours (:func:`backbone_export`), each backbone file
  writing its own keys (``export_state_dict`` beside its ``checkpoint_filter_fn``);
  :func:`export_backbone`, here, is its ``to='tlalign'``.
"""
from __future__ import annotations

import os

from .models import backbones as _backbones  # noqa: F401  (the backbone files register their layouts)
from .models.export import (
    EXPORT_TARGETS,
    READOUTS,
    backbone_export,
    checkpoint_head,
    checkpoint_readout,
    export_checkpoint,
    export_state_dict,
)
from .models.layouts import (
    LAYOUTS,
    ExportResult,
    KeyMap,
    LoadReport,
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
from .models.loading import (
    check_head_readout,
    foreign_head_state,
    foreign_readout,
    load_classifier_checkpoint,
    load_head_state,
)
from .utils.checkpoint_io import load_checkpoint_file
from .utils.torch_compat import mmengine_safe_globals

__all__ = ['LAYOUTS', 'LoadReport', 'mmengine_safe_globals', 'load_checkpoint_file', 'has_key', 'stage_ids',
           'is_recomputed_buffer', 'filter_state_dict', 'rename_key', 'register_layouts', 'layout_families',
           'extract_state_dict', 'detect_layout', 'convert_state_dict', 'resize_pos_embed',
           'resize_relative_position_bias_table', 'load_backbone_checkpoint', 'backbone_export', 'export_backbone',
           'load_classifier_checkpoint', 'foreign_head_state', 'foreign_readout', 'check_head_readout',
           'load_head_state', 'EXPORT_TARGETS', 'READOUTS', 'ExportResult', 'KeyMap', 'export_state_dict',
           'export_checkpoint', 'checkpoint_head', 'checkpoint_readout']


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
    info = export_checkpoint(src_checkpoint_path, dst_path, to='tlalign', prefix=prefix)
    return {k: info[k] for k in ('layout', 'num_keys', 'ignored', 'prefix', 'dst')}
