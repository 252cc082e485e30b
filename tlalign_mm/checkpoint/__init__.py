"""Checkpoints of the TL-Align backbones and classifier: safe reading, layouts, strict loading, export.

One name per operation; a bad file is a :class:`CheckpointFileError`.  Modules: ``io`` (reading without running
pickled code, diagnosis, atomic writes), ``layouts`` (detect, read, load), ``export`` (the writers to timm, mmseg,
mmdet, mmpretrain, ours), one per family (``vit``, ``swin``, ``pvt``: key tables read both ways, read filter,
writer, stock model), ``keys`` (what the families share).  This package reads ``models``, never the reverse.
"""
from .export import export_checkpoint, export_state_dict
from .io import CheckpointFileError, atomic_save, load_checkpoint_file, register_checkpoint_loader
from .layouts import detect_layout, load_backbone_checkpoint, load_classifier_checkpoint

__all__ = ['load_checkpoint_file', 'CheckpointFileError', 'atomic_save', 'register_checkpoint_loader',
           'detect_layout', 'load_backbone_checkpoint', 'load_classifier_checkpoint', 'export_checkpoint',
           'export_state_dict']
