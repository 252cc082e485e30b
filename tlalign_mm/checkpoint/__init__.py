"""Checkpoints of the TL-Align backbones and classifier: safe reading, layouts, strict loading, export.

One name per operation: :func:`load_checkpoint_file` (read without running pickled code; a bad file is
:class:`CheckpointFileError`), :func:`atomic_save`, :func:`register_checkpoint_loader` (mmengine's loads
through the same reader), :func:`detect_layout`, :func:`load_backbone_checkpoint`,
:func:`load_classifier_checkpoint`, :func:`export_checkpoint` (a file) / :func:`export_state_dict` (in memory).
The modules: ``io`` (reading, diagnosis, atomic writes), ``layouts`` (detect, read, load), ``export`` (the
writers to timm, mmseg, mmdet, mmpretrain, ours), one per family (``vit``, ``swin``, ``pvt``: key tables read
both ways, read filter, writer, stock model) and ``keys`` (what the families share).  Imports point one way:
this package reads ``models``, never the reverse.
"""
from .export import export_checkpoint, export_state_dict
from .io import CheckpointFileError, atomic_save, load_checkpoint_file, register_checkpoint_loader
from .layouts import detect_layout, load_backbone_checkpoint, load_classifier_checkpoint

__all__ = ['load_checkpoint_file', 'CheckpointFileError', 'atomic_save', 'register_checkpoint_loader',
           'detect_layout', 'load_backbone_checkpoint', 'load_classifier_checkpoint', 'export_checkpoint',
           'export_state_dict']
