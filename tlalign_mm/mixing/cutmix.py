"""CutMix on pixels: a box of the partner image pasted into each image (timm ``Mixup``'s CutMix).

Box and lam follow timm ``cutmix_bbox_and_lam`` / ``rand_bbox`` / ``rand_bbox_minmax``
(``timm/data/mixup.py``): a box of side ``sqrt(1 - lam)`` times the image's, centred uniformly and
clipped (``cut // 2`` before and ``(cut + 1) // 2`` after the centre), or a box of uniformly
drawn sides in ``cutmix_minmax``; ``correct_lam`` reports the area actually kept.  Partial patches
get their area share.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor

from .base import BatchAugment, MixOut, box_token_share

__all__ = ['CutMix']


class CutMix(BatchAugment):
    """Pixel CutMix (mode ``'cutmix'``).

    Args:
        alpha: ``lam ~ Beta(alpha, alpha)``.
        minmax: ``(min, max)`` box side ratios (timm ``cutmix_minmax``; lam then always corrected).
        correct_lam: report the area actually kept from A (timm ``correct_lam``).

    Raises:
        ValueError: ``minmax`` not two ratios with ``0 <= min < max <= 1``.
    """

    mode = 'cutmix'

    def __init__(self, alpha: float = 1.0, minmax: Optional[Sequence[float]] = None, correct_lam: bool = True):
        super().__init__(alpha)
        self.minmax = None if minmax is None else tuple(float(v) for v in minmax)
        if self.minmax is not None and (len(self.minmax) != 2 or not 0.0 <= self.minmax[0] < self.minmax[1] <= 1.0):
            raise ValueError(f'cutmix_minmax must be (min, max) with 0 <= min < max <= 1, got {self.minmax}')
        self.correct_lam = bool(correct_lam)

    def cell_size(self, patch_size: int) -> int:
        """The grid, in pixels, the box is drawn on (1: any pixel)."""
        return 1

    def rand_box(self, h: int, w: int, lam: float, rng) -> tuple[int, int, int, int]:
        """Box ``(yl, yh, xl, xh)`` on an ``h x w`` grid (timm ``rand_bbox`` / ``rand_bbox_minmax``)."""
        if self.minmax is not None:
            lo, hi = self.minmax
            cut_h = rng.randrange(int(h * lo), max(int(h * hi), int(h * lo) + 1))
            cut_w = rng.randrange(int(w * lo), max(int(w * hi), int(w * lo) + 1))
            yl = rng.randrange(0, h - cut_h + 1)
            xl = rng.randrange(0, w - cut_w + 1)
            return yl, yl + cut_h, xl, xl + cut_w
        ratio = math.sqrt(max(0.0, 1.0 - lam))
        cut_h, cut_w = int(h * ratio), int(w * ratio)
        cy = rng.randrange(0, h)
        cx = rng.randrange(0, w)
        yl, yh = max(cy - cut_h // 2, 0), min(cy + (cut_h + 1) // 2, h)
        xl, xh = max(cx - cut_w // 2, 0), min(cx + (cut_w + 1) // 2, w)
        return yl, yh, xl, xh

    def __call__(self, images: Tensor, lam: float, rng, patch_size: int, want_mask: bool) -> MixOut:
        h, w = images.shape[-2:]
        g = self.cell_size(patch_size)
        yl, yh, xl, xh = (v * g for v in self.rand_box(h // g, w // g, lam, rng))
        out = images.clone()
        out[:, :, yl:yh, xl:xh] = images[:, :, yl:yh, xl:xh].flip(0)
        share = box_token_share(yl, yh, xl, xh, h, w, patch_size, images.device)
        if self.correct_lam or self.minmax is not None:
            lam = 1.0 - (yh - yl) * (xh - xl) / float(h * w)
        mask = None
        if want_mask:
            mask = torch.zeros(h, w, dtype=torch.float32, device=images.device)
            mask[yl:yh, xl:xh] = 1.0
        return MixOut(out, share, mask, lam)
