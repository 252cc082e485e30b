"""Token-aligned CutMix: the box drawn on the token grid, so every token is wholly from A or from B.

The TL-Align reference mixer (``tla.py`` of github.com/Euphoria16/TL-Align, ``TL_AlignMix`` /
``rand_token_bbox``): ``lam`` is the token fraction actually kept.  Difference: the box extent
uses timm's rounding (``cut // 2`` before and ``(cut + 1) // 2`` after the centre), so an
unclipped box has exactly ``cut`` cells; the reference uses ``cut // 2`` on both sides (even sizes
only).
"""
from __future__ import annotations

from typing import Optional

from .base import check_cell
from .cutmix import CutMix

__all__ = ['TokenCutMix']


class TokenCutMix(CutMix):
    """Token CutMix (mode ``'token_cutmix'``): :class:`~tlalign_mm.mixing.cutmix.CutMix` on the grid of
    ``cell`` pixels (default: the patch size; Swin's configs align to its 32-px last stage).

    Args:
        alpha, minmax, correct_lam: as :class:`~tlalign_mm.mixing.cutmix.CutMix`.
        cell: the grid's cell size in pixels, a multiple of the patch size, or None (the patch).
    """

    mode = 'token_cutmix'

    def __init__(self, alpha: float = 1.0, minmax=None, correct_lam: bool = True, cell: Optional[int] = None):
        super().__init__(alpha, minmax, correct_lam)
        self.cell = cell

    def cell_size(self, patch_size: int) -> int:
        return check_cell(self.cell or patch_size, patch_size)
