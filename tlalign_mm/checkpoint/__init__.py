"""Checkpoints of the TL-Align backbones and classifier: reading without running pickled code, diagnosis and atomic
writes (``io``), layouts and strict loading (``layouts``), export (``export``), one module per family (``vit``,
``swin``, ``pvt``) and what the families share (``keys``).  One name per operation; a bad file is a
:class:`CheckpointFileError`.  This package reads ``models``, never the reverse.
"""
from .export import export_checkpoint, export_state_dict
from .io import CheckpointFileError, atomic_save, load_checkpoint_file, register_checkpoint_loader
from .layouts import detect_layout, load_backbone_checkpoint, load_classifier_checkpoint

__all__ = ['load_checkpoint_file', 'CheckpointFileError', 'atomic_save', 'register_checkpoint_loader',
           'detect_layout', 'load_backbone_checkpoint', 'load_classifier_checkpoint', 'export_checkpoint',
           'export_state_dict']
