"""Batch mixers (token-aligned CutMix, pixel CutMix, Mixup, TokenMix) returning a :class:`MixResult`.

Pure torch; see :mod:`tlalign_mm.mixing.mixers` for the behaviour and its sources (timm
``Mixup``, TL-Align ``tla.py``).
"""
from .mixers import CUTMIX_MODES, MIX_MODES, BatchMixer, MixResult

__all__ = ['BatchMixer', 'MixResult', 'MIX_MODES', 'CUTMIX_MODES']
