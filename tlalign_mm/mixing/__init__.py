"""Batch mixers for TL-Align pretraining, one class per augment, returning a :class:`MixResult`.

* :class:`BatchMixer` (:mod:`~tlalign_mm.mixing.switch`): picks one augment per batch and its lam
  (timm ``Mixup``'s switch); the data preprocessor's ``mixer=dict(...)`` builds it;
* :class:`TokenCutMix`, :class:`CutMix`, :class:`Mixup`, :class:`TokenMix`: the augments (each
  module names its source: TL-Align ``tla.py``, timm ``mixup.py``, TokenMix ``tokenmix.py``);
* what a mixer reports is a :class:`tlalign_mm.structures.MixResult`.

Pure torch, on the host's ``random`` stream; numpy's global RNG is never used.
"""
from .base import BatchAugment, MixOut
from .cutmix import CutMix
from .mixup import Mixup
from .switch import CUTMIX_MODES, BatchMixer
from .token_cutmix import TokenCutMix
from .tokenmix import TOKENMIX_MASKS, TokenMix, block_mask_cells

__all__ = ['BatchMixer', 'CUTMIX_MODES', 'TOKENMIX_MASKS', 'BatchAugment', 'MixOut',
           'TokenCutMix', 'CutMix', 'Mixup', 'TokenMix', 'block_mask_cells']
