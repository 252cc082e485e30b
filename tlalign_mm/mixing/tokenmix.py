"""TokenMix masks: a set of alignment cells taken from the partner, in blocks or scattered.

* ``mask='block'``: rectangles of random area and aspect ratio until the count is covered, as
  TokenMix's ``generate_mask`` (github Sense-X/TokenMix ``tokenmix.py``; BEiT's block masking);
* ``mask='random'``: a uniformly random subset, as TL-Align's ``tokenmix_mask_and_lam``
  (Euphoria16/TL-Align ``tla.py``).

Both count ``int((1 - lam) * N) + min_tokens`` cells (at most N; ``int`` truncates, as both
releases do); TokenMix fixes lam at 0.5 (``lam_constant``) and adds 14 (``minimum_tokens``).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .base import BatchAugment, MixOut, check_cell, check_prob

__all__ = ['TokenMix', 'TOKENMIX_MASKS', 'block_mask_cells']

#: Values of ``TokenMix(mask=...)`` (``BatchMixer(tokenmix_mask=...)``).
TOKENMIX_MASKS = ('random', 'block')


def block_mask_cells(h: int, w: int, count: int, rng, min_aspect: float = 0.3,
                     attempts: int = 10) -> list[list[int]]:
    """A 0/1 (h, w) grid with about ``count`` ones made of random rectangles (TokenMix blocks).

    Rectangles of area ``U(1, cells still to cover)`` and aspect ratio ``exp(U(log a, -log a))``
    (``a = min_aspect``) at a random position are added while they cover new cells, up to
    ``attempts`` tries per rectangle, until ``count`` cells are covered or no try adds any:
    TokenMix's ``generate_mask`` (github Sense-X/TokenMix ``tokenmix.py``), the block masking of
    BEiT.  All draws come from the host ``rng`` (``random.Random`` or the ``random`` module).

    Returns:
        h lists of w ints (0 or 1); the ones may fall short of ``count`` when no rectangle fits.
    """
    grid = [[0] * w for _ in range(h)]
    lo, hi = math.log(min_aspect), math.log(1.0 / min_aspect)
    covered = 0
    while covered < count:
        budget = count - covered
        added = 0
        for _ in range(attempts):
            area = rng.uniform(1, budget)
            aspect = math.exp(rng.uniform(lo, hi))
            bh, bw = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if not (0 < bh < h and 0 < bw < w):
                continue
            top, left = rng.randint(0, h - bh), rng.randint(0, w - bw)
            new = sum(1 - grid[r][c] for r in range(top, top + bh) for c in range(left, left + bw))
            if 0 < new <= budget:
                for r in range(top, top + bh):
                    for c in range(left, left + bw):
                        grid[r][c] = 1
                added = new
                break
        if added == 0:
            break
        covered += added
    return grid


class TokenMix(BatchAugment):
    """TokenMix masks (mode ``'tokenmix'``).

    Args:
        alpha: ``lam ~ Beta(alpha, alpha)`` unless ``fixed_lam`` is set.
        mask: 'random' or 'block'.
        min_tokens: cells added to the partner's count (TokenMix: 14).
        fixed_lam: a fixed lam instead of the Beta draw (TokenMix: 0.5), or None.
        correct_lam: report the fraction of cells actually kept from A.
        cell: the cell size in pixels, a multiple of the patch size, or None (the patch).

    Raises:
        ValueError: an unknown ``mask``, a negative or fractional ``min_tokens``, ``fixed_lam``
            outside [0, 1]; on a call, a ``cell`` that is no multiple of the patch size or does not
            divide the images.
    """

    mode = 'tokenmix'

    def __init__(self, alpha: float = 1.0, mask: str = 'random', min_tokens: int = 0,
                 fixed_lam: Optional[float] = None, correct_lam: bool = True, cell: Optional[int] = None):
        super().__init__(alpha)
        if mask not in TOKENMIX_MASKS:
            raise ValueError(f'tokenmix_mask must be one of {TOKENMIX_MASKS}, got {mask!r}')
        if int(min_tokens) != min_tokens or min_tokens < 0:
            raise ValueError(f'tokenmix_min_tokens must be an integer >= 0, got {min_tokens!r}')
        self.mask = mask
        self.min_tokens = int(min_tokens)
        self.fixed_lam = None if fixed_lam is None else check_prob('tokenmix_lam', fixed_lam)
        self.correct_lam = bool(correct_lam)
        self.cell = cell

    def draw_lam(self, rng) -> float:
        return self.fixed_lam if self.fixed_lam is not None else super().draw_lam(rng)

    def __call__(self, images: Tensor, lam: float, rng, patch_size: int, want_mask: bool) -> MixOut:
        h, w = images.shape[-2:]
        device = images.device
        g = check_cell(self.cell or patch_size, patch_size, (h, w))
        gh, gw = h // g, w // g
        n_cells = gh * gw
        n_b = min(n_cells, int((1.0 - lam) * n_cells) + self.min_tokens)
        if self.mask == 'block':
            grid_cells = block_mask_cells(gh, gw, n_b, rng)          # drawn on the host
            n_b = sum(map(sum, grid_cells))
            cells = torch.tensor(grid_cells, dtype=torch.float32).to(device, non_blocking=True)
        else:
            dev_gen = torch.Generator(device=device)
            dev_gen.manual_seed(rng.getrandbits(63))
            cells = torch.zeros(n_cells, dtype=torch.float32, device=device)
            cells[torch.randperm(n_cells, generator=dev_gen, device=device)[:n_b]] = 1.0
            cells = cells.view(gh, gw)
        share = cells.repeat_interleave(g // patch_size, 0).repeat_interleave(g // patch_size, 1)
        pix = cells.repeat_interleave(g, 0).repeat_interleave(g, 1)
        out = torch.where(pix.bool()[None, None], images.flip(0), images)
        if self.correct_lam:
            lam = 1.0 - n_b / float(n_cells)
        return MixOut(out, share, pix if want_mask else None, lam)
