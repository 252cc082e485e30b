"""What the batch augments share: option checks, the Beta draw on the host, the per-patch share of a box.

Each augment (:mod:`~tlalign_mm.mixing.token_cutmix`, :mod:`~tlalign_mm.mixing.cutmix`,
:mod:`~tlalign_mm.mixing.mixup`, :mod:`~tlalign_mm.mixing.tokenmix`) mixes a batch with its
flipped copy for a given ``lam``, drawing whatever else it needs from the host ``random.Random``
it is handed; :class:`~tlalign_mm.mixing.switch.BatchMixer` picks one per batch and draws
``lam`` (timm ``Mixup._params_per_batch``).  numpy's global RNG is never used.
"""
from __future__ import annotations

import abc
import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

__all__ = ['BatchAugment', 'MixOut', 'beta_draw', 'check_alpha', 'check_prob', 'check_cell', 'box_token_share']


class MixOut(NamedTuple):
    """One augment's result for the batch: ``images`` (B, C, H, W), ``share`` (H/p, W/p) float32
    share of the partner per patch token, ``mask`` (H, W) float32 pixel share of the partner or
    None (not asked for), and the reported ``lam`` (corrected where the augment corrects it)."""
    images: Tensor
    share: Tensor
    mask: Optional[Tensor]
    lam: float


class BatchAugment(abc.ABC):
    """Mix a batch with its flipped copy (timm's ``mode='batch'``: sample ``i`` with ``B - 1 - i``).

    Attributes:
        mode: the :attr:`~tlalign_mm.structures.MixResult.mode` it reports.
        alpha: ``lam ~ Beta(alpha, alpha)`` when the switch draws lam for it.
    """

    mode = ''

    def __init__(self, alpha: float):
        self.alpha = check_alpha(f'{self.mode} alpha', alpha)

    def draw_lam(self, rng) -> float:
        """The batch's raw lam, drawn on the host (the switch calls it after choosing the augment)."""
        return beta_draw(self.alpha, rng)

    @abc.abstractmethod
    def __call__(self, images: Tensor, lam: float, rng, patch_size: int, want_mask: bool) -> MixOut:
        """Mix ``images`` (B, C, H, W; H, W divisible by ``patch_size``) for ``lam`` in (0, 1)."""


def beta_draw(alpha: float, rng) -> float:
    """One draw of ``Beta(alpha, alpha)`` as ``X / (X + Y)`` with ``X, Y ~ Gamma(alpha)`` from the
    host ``rng`` (``random.Random`` or the ``random`` module)."""
    x, y = rng.gammavariate(alpha, 1.0), rng.gammavariate(alpha, 1.0)
    if x + y == 0.0:  # both underflowed (tiny alpha): Beta mass sits at 0 and 1 equally
        return float(rng.random() < 0.5)
    return x / (x + y)


def check_alpha(name: str, value: float) -> float:
    value = float(value)
    if not value >= 0.0 or math.isinf(value):
        raise ValueError(f'{name} must be a finite number >= 0, got {value}')
    return value


def check_cell(cell: int, patch_size: int, hw: tuple[int, int] | None = None) -> int:
    """``cell``, the grid in pixels that token-aligned masks are drawn on, after checking that it is a
    multiple of ``patch_size`` and, with ``hw``, divides the image size; ValueError naming both otherwise."""
    if cell < 1 or cell % patch_size or (hw is not None and (hw[0] % cell or hw[1] % cell)):
        size = '' if hw is None else f' dividing the {hw[0]}x{hw[1]} images'
        raise ValueError(f'the mask cell must be a positive multiple of patch_size={patch_size}{size}, '
                         f'got {cell} px (token_grid_size / cell)')
    return cell


def check_prob(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f'{name} must be in [0, 1], got {value}')
    return value


def box_token_share(yl: int, yh: int, xl: int, xh: int, h: int, w: int, p: int,
                     device: torch.device) -> Tensor:
    """(H/p, W/p) float32 area share of the pixel box ``[yl, yh) x [xl, xh)`` in each p x p patch.

    Equals ``token_share_from_mask(box_mask, p)`` (the per-patch mean of the 0/1 box mask) but is
    computed per axis, without an (H, W) mask: the share of patch (r, c) is
    ``overlap_y(r) * overlap_x(c) / p**2``; exactly 0 or 1 for grid-aligned boxes.
    """
    def overlap(lo: int, hi: int, size: int) -> Tensor:
        start = torch.arange(0, size, p, device=device)
        return (torch.clamp(start + p, max=hi) - torch.clamp(start, min=lo)).clamp(min=0).float()

    return overlap(yl, yh, h)[:, None] * overlap(xl, xh, w)[None, :] / float(p * p)


