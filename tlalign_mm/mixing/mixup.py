"""Mixup: each image blended with its partner, ``lam x + (1 - lam) x_partner`` (timm ``Mixup``)."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import BatchAugment, MixOut

__all__ = ['Mixup']


class Mixup(BatchAugment):
    """Mixup (mode ``'mixup'``): every token and pixel holds ``1 - lam`` of the partner.

    Raises:
        TypeError: non-floating-point images.
    """

    mode = 'mixup'

    def __call__(self, images: Tensor, lam: float, rng, patch_size: int, want_mask: bool) -> MixOut:
        if not images.is_floating_point():
            raise TypeError(f'Mixup needs floating-point images, got {images.dtype}')
        h, w = images.shape[-2:]
        out = images * lam + images.flip(0) * (1.0 - lam)
        share = torch.full((h // patch_size, w // patch_size), 1.0 - lam, dtype=torch.float32, device=images.device)
        mask = torch.full((h, w), 1.0 - lam, dtype=torch.float32, device=images.device) if want_mask else None
        return MixOut(out, share, mask, lam)
