"""Checkpoints of the TL-Align backbones and classifier: safe reading, layouts, strict loading, export.

* ``io.py``: :func:`load_checkpoint_file` (``weights_only``, local or any mmengine scheme), the one-line
  errors on a bad file, :func:`atomic_save`, :func:`find_resumable_checkpoint`, and
  :func:`register_checkpoint_loader` (mmengine's own loads, for resume; the tools call it);
* ``layouts.py``: :func:`detect_layout`, :func:`convert_state_dict`, :func:`load_backbone_checkpoint`,
  :func:`load_classifier_checkpoint`, over one module per family (``vit.py``, ``swin.py``, ``pvt.py``: key
  tables read both ways, read filter, writer, stock model; ``keys.py``: what they share);
* ``export.py``: :func:`export_checkpoint` / :func:`export_state_dict` to timm, mmseg, mmdet, mmpretrain or
  ours (:func:`backbone_export`), and the stock backbone of a config (the cost tools').

Imports point one way: this package reads ``models``, never the reverse.
"""
from .export import EXPORT_TARGETS, READOUTS, backbone_export, export_checkpoint, export_state_dict
from .io import (
    CheckpointFileError,
    CheckpointNotFoundError,
    atomic_save,
    find_resumable_checkpoint,
    load_checkpoint_file,
    register_checkpoint_loader,
)
from .keys import ExportResult
from .layouts import (
    LAYOUTS,
    LoadReport,
    convert_state_dict,
    detect_layout,
    extract_state_dict,
    load_backbone_checkpoint,
    load_classifier_checkpoint,
    load_head_state,
)

__all__ = ['load_checkpoint_file', 'CheckpointFileError', 'CheckpointNotFoundError', 'atomic_save',
           'find_resumable_checkpoint', 'register_checkpoint_loader', 'LAYOUTS', 'detect_layout',
           'extract_state_dict', 'convert_state_dict', 'LoadReport', 'load_backbone_checkpoint',
           'load_classifier_checkpoint', 'load_head_state', 'EXPORT_TARGETS', 'READOUTS', 'ExportResult',
           'export_state_dict', 'export_checkpoint', 'backbone_export']
