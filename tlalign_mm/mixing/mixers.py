"""Batch mixers for TL-Align pretraining: token-aligned CutMix, pixel CutMix, Mixup, TokenMix.

Every mixer here works in timm's ``mode='batch'`` fashion (``timm/data/mixup.py``, class
``Mixup``): one augmentation and one ``lam`` per batch, and sample ``i`` is mixed with its
partner ``B - 1 - i`` (the batch flipped).  Besides the mixed images a :class:`MixResult` reports,
for every patch token, the share of its pixels that came from the partner image -- the input
TL-Align needs (``docs/tl-align.md``, "Inputs"; :func:`tlalign_mm.align.token_share_from_mask`).

Behaviour and where it comes from:

* Choice of augmentation, ``prob``, ``switch_prob``, ``cutmix_minmax``, ``correct_lam`` and the
  ``Beta(alpha, alpha)`` draw of ``lam`` follow timm ``Mixup._params_per_batch`` /
  ``cutmix_bbox_and_lam`` / ``rand_bbox`` / ``rand_bbox_minmax``.
* Token-aligned CutMix (``cutmix_mode='token'``, the default) follows the reference TL-Align
  mixer (``tla.py`` of github.com/Euphoria16/TL-Align, ``TL_AlignMix`` / ``rand_token_bbox``):
  the box is drawn on the token grid, so every token is wholly from A or from B, and ``lam`` is
  the token fraction actually kept.  Difference: the box extent uses timm's rounding
  (``cut // 2`` before and ``(cut + 1) // 2`` after the centre), so an unclipped box has exactly
  ``cut`` cells; the reference uses ``cut // 2`` on both sides (even sizes only).
* TokenMix masks (``tokenmix_alpha > 0``): ``tokenmix_mask='random'`` (scattered) follows the
  ``tokenmix_mask_and_lam`` helper in the same ``tla.py``: a uniformly random subset of
  ``int((1 - lam) * N)`` tokens comes from B (``int`` truncates, as both releases count);
  ``tokenmix_mask='block'`` draws rectangles of random area and aspect ratio until that many
  cells are covered, as TokenMix's
  ``generate_mask`` (github Sense-X/TokenMix ``tokenmix.py``; BEiT's block masking).
  ``tokenmix_min_tokens`` adds cells as TokenMix's ``minimum_tokens`` (14 there, with
  ``int``), and ``tokenmix_lam`` fixes lam as its ``lam_constant`` (0.5 there).
* Unlike ``TL_AlignMix`` (which asserts an even batch and redraws until ``lam != 1``), odd
  batches are accepted -- the middle sample is its own partner and is reported unmixed -- and
  ``prob`` is honoured as in timm.

Random numbers: the batch's scalars (mode, lam, box) are drawn on the host from the
``random.Random`` passed to :meth:`BatchMixer.__call__` or, when none is given, from Python's
global ``random`` (seeded by mmengine's ``randomness.seed``), so mixing never reads a number back
from the device.  TokenMix's token subset is drawn on the images' device by a
``torch.Generator`` seeded from the same host stream.  numpy's global RNG is never used.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..align.token_labels import (
    initial_source_labels,
    mixed_target,
    partner_index,
    smooth_one_hot,
)

__all__ = ['MixResult', 'BatchMixer', 'MIX_MODES', 'CUTMIX_MODES', 'TOKENMIX_MASKS', 'block_mask_cells']

#: Values of :attr:`MixResult.mode`.
MIX_MODES = ('token_cutmix', 'cutmix', 'mixup', 'tokenmix', 'none')
#: Values of ``BatchMixer(cutmix_mode=...)``.
CUTMIX_MODES = ('token', 'pixel')
#: Values of ``BatchMixer(tokenmix_mask=...)``.
TOKENMIX_MASKS = ('random', 'block')


@dataclass
class MixResult:
    """What a :class:`BatchMixer` produced for one batch.

    Attributes:
        images: (B, C, H, W) mixed images, same dtype and device as the input.  For
            ``mode == 'none'`` this is the input tensor itself (not a copy).
        share_b: (B, N) float32 in [0, 1]: share of each patch token's pixels that came from the
            partner image, tokens in row-major order of the ``grid_size`` grid of
            ``patch_size`` patches (N = H/p * W/p).  All zeros when unmixed and for the middle
            sample of an odd batch.  0/1 only for token CutMix and TokenMix.
        lam: (B,) float32 in [0, 1]: the (corrected) share of image A in the target, equal to
            ``1 - share_b.mean(1)`` when ``correct_lam`` (always for the middle sample of an odd
            batch and for ``mode == 'none'``, where it is 1).
        partner: (B,) long, the partner index ``B - 1 - i`` of each sample.
        mode: one of :data:`MIX_MODES`.
        mask: (B, H, W) float32 in [0, 1], the pixel share of B, or ``None`` when the mixer was
            built with ``return_mask=False``.  ``share_b`` is its per-patch mean.
        patch_size: token stride in pixels ``share_b`` refers to.
        grid_size: (H / patch_size, W / patch_size), the token grid ``share_b`` flattens.
        source_images: the (B, C, H, W) batch before mixing (the input tensor itself, not a
            copy), for rules that look at the unmixed images (TokenMix's teacher).
    """
    images: Tensor
    share_b: Tensor
    lam: Tensor
    partner: Tensor
    mode: str
    mask: Tensor | None = None
    patch_size: int = 16
    grid_size: tuple[int, int] = (0, 0)
    source_images: Tensor | None = None

    #: whether any mixing happened (``mode != 'none'``); a stored bool rather than a property of
    #: ``mode``, so that a compiled model specialises on two cases instead of one per mode
    mixed: bool = field(init=False)

    def __post_init__(self) -> None:
        self.mixed = self.mode != 'none'

    def targets(self, labels: Tensor, num_classes: int, smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
        """Smoothed one-hot targets of each image and of its partner.

        Args:
            labels: (B,) integer class indices.
            num_classes: K.
            smoothing: label smoothing in [0, 1) (timm ``mixup_target`` convention).

        Returns:
            ``(y_a, y_b)``, each (B, K) float32; ``y_b = y_a[partner]``.
        """
        if labels.shape[0] != self.partner.shape[0]:
            raise ValueError(f'labels has {labels.shape[0]} entries but the batch has '
                             f'{self.partner.shape[0]} samples')
        y_a = smooth_one_hot(labels, num_classes, smoothing)
        return y_a, y_a[self.partner.to(y_a.device)]

    def mixed_target(self, labels: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
        """The plain area target ``lam * y_a + (1 - lam) * y_b``, (B, K) float32."""
        y_a, y_b = self.targets(labels, num_classes, smoothing)
        return mixed_target(self.lam.to(y_a.device), y_a, y_b)

    def source_labels(self, num_prefix_tokens: int = 1) -> Tensor:
        """Initial 2-channel TL-Align source embedding, (B, num_prefix_tokens + N, 2) float32.

        See :func:`tlalign_mm.align.initial_source_labels`: patch rows ``[1 - s, s]`` with
        ``s = share_b``, prefix rows (class / distillation tokens) ``[lam, 1 - lam]``.
        """
        return initial_source_labels(self.share_b, self.lam, num_prefix_tokens)


def _check_alpha(name: str, value: float) -> float:
    value = float(value)
    if not value >= 0.0 or math.isinf(value):
        raise ValueError(f'{name} must be a finite number >= 0, got {value}')
    return value


def _check_prob(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f'{name} must be in [0, 1], got {value}')
    return value


def _box_token_share(yl: int, yh: int, xl: int, xh: int, h: int, w: int, p: int,
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


class BatchMixer:
    """Mix a batch with its flipped copy and report per-token source shares (timm 'batch' mode).

    Args:
        mixup_alpha: Mixup is active if > 0; ``lam ~ Beta(mixup_alpha, mixup_alpha)``.
        cutmix_alpha: CutMix is active if > 0; ``lam ~ Beta(cutmix_alpha, cutmix_alpha)``.
        cutmix_minmax: ``(min, max)`` box side ratios, ``0 <= min < max <= 1``; when given, CutMix
            is active with ``cutmix_alpha`` forced to 1 and boxes drawn as timm
            ``rand_bbox_minmax`` (lam is then always corrected).
        tokenmix_alpha: TokenMix masks are active if > 0: ``int((1 - lam) * N)``
            (+ ``tokenmix_min_tokens``, at most N) alignment cells come from the partner; ``int``
            truncates, as TokenMix's ``generate_mask`` and TL-Align's ``tokenmix_mask_and_lam``.
        tokenmix_mask: 'random' (scattered cells) or 'block' (rectangles of random area and
            aspect ratio in [0.3, 1/0.3], TokenMix's ``generate_mask``).
        tokenmix_min_tokens: cells added to the partner's count (TokenMix: 14).
        tokenmix_lam: a fixed lam for TokenMix draws instead of the Beta draw (TokenMix: 0.5);
            None draws ``Beta(tokenmix_alpha, tokenmix_alpha)``.
        prob: probability that a batch is mixed at all.
        switch_prob: when Mixup and a spatial mix (CutMix and/or TokenMix) are both active, the
            probability of the spatial mix (timm: of CutMix instead of Mixup).
        cutmix_mode: ``'token'`` -- box aligned to the alignment grid (each token wholly A or
            B; mode ``'token_cutmix'``), as the TL-Align reference; ``'pixel'`` -- timm's
            ``rand_bbox`` on pixels (mode ``'cutmix'``), partial patches get their area share.
        correct_lam: report ``lam`` as the fraction actually kept from A (timm
            ``correct_lam``), applied to CutMix and TokenMix.  Keep it ``True`` for TL-Align so
            the class-token target matches the token shares; with ``False`` the Beta draw is
            reported (timm behaviour, area mismatch from clipping/rounding remains).
        patch_size: token stride in pixels of the grid ``share_b`` is reported on (16 for DeiT,
            4 for Swin's patch embedding).  Images must have H, W divisible by it.
        token_grid_size: cell size in pixels of the grid boxes (and TokenMix cells) are
            aligned to, a multiple of ``patch_size``; ``None`` means ``patch_size``.  For Swin
            (patch 4, tokens 56x56 at 224 px) boxes aligned to 4 px keep stage-1 tokens pure
            but patch merging then mixes sources; ``token_grid_size=32`` (Swin's last-stage
            stride) keeps every token of every stage wholly A or B, while ``share_b`` is still
            reported on the patch-4 grid.  H, W must then be divisible by it.
        tokenmix_switch_prob: when CutMix and TokenMix are both active, the probability that a
            spatial draw uses TokenMix.
        return_mask: also return the (B, H, W) pixel mask in :attr:`MixResult.mask`.

    Attributes:
        mixing_enabled: set to ``False`` to switch mixing off (e.g. by a hook for the last
            epochs); calls then return mode ``'none'``, ``lam = 1`` (timm ``mixup_enabled``).

    Raises:
        ValueError: invalid options (negative alpha, probabilities outside [0, 1], unknown
            ``cutmix_mode``, bad ``cutmix_minmax``, ``token_grid_size`` not a multiple of
            ``patch_size``, or no augmentation active while ``prob > 0``).
    """

    def __init__(self,
                 mixup_alpha: float = 0.0,
                 cutmix_alpha: float = 1.0,
                 cutmix_minmax: Sequence[float] | None = None,
                 tokenmix_alpha: float = 0.0,
                 prob: float = 1.0,
                 switch_prob: float = 0.5,
                 cutmix_mode: str = 'token',
                 correct_lam: bool = True,
                 patch_size: int = 16,
                 token_grid_size: int | None = None,
                 tokenmix_switch_prob: float = 0.5,
                 tokenmix_mask: str = 'random',
                 tokenmix_min_tokens: int = 0,
                 tokenmix_lam: float | None = None,
                 return_mask: bool = True) -> None:
        self.mixup_alpha = _check_alpha('mixup_alpha', mixup_alpha)
        self.cutmix_alpha = _check_alpha('cutmix_alpha', cutmix_alpha)
        self.tokenmix_alpha = _check_alpha('tokenmix_alpha', tokenmix_alpha)
        if cutmix_minmax is not None:
            cutmix_minmax = tuple(float(v) for v in cutmix_minmax)
            if len(cutmix_minmax) != 2 or not 0.0 <= cutmix_minmax[0] < cutmix_minmax[1] <= 1.0:
                raise ValueError(f'cutmix_minmax must be (min, max) with 0 <= min < max <= 1, '
                                 f'got {cutmix_minmax}')
            self.cutmix_alpha = 1.0  # as timm: minmax forces CutMix on with alpha 1
        self.cutmix_minmax = cutmix_minmax
        self.prob = _check_prob('prob', prob)
        self.switch_prob = _check_prob('switch_prob', switch_prob)
        self.tokenmix_switch_prob = _check_prob('tokenmix_switch_prob', tokenmix_switch_prob)
        if cutmix_mode not in CUTMIX_MODES:
            raise ValueError(f'cutmix_mode must be one of {CUTMIX_MODES}, got {cutmix_mode!r}')
        self.cutmix_mode = cutmix_mode
        self.correct_lam = bool(correct_lam)
        if int(patch_size) != patch_size or patch_size < 1:
            raise ValueError(f'patch_size must be a positive integer, got {patch_size}')
        self.patch_size = int(patch_size)
        if token_grid_size is not None:
            if (int(token_grid_size) != token_grid_size or token_grid_size < 1
                    or token_grid_size % self.patch_size):
                raise ValueError(f'token_grid_size must be a positive multiple of patch_size '
                                 f'({self.patch_size}), got {token_grid_size}')
            token_grid_size = int(token_grid_size)
        self.token_grid_size = token_grid_size
        if tokenmix_mask not in TOKENMIX_MASKS:
            raise ValueError(f'tokenmix_mask must be one of {TOKENMIX_MASKS}, got {tokenmix_mask!r}')
        self.tokenmix_mask = tokenmix_mask
        if int(tokenmix_min_tokens) != tokenmix_min_tokens or tokenmix_min_tokens < 0:
            raise ValueError(f'tokenmix_min_tokens must be an integer >= 0, got {tokenmix_min_tokens!r}')
        self.tokenmix_min_tokens = int(tokenmix_min_tokens)
        if tokenmix_lam is not None:
            tokenmix_lam = _check_prob('tokenmix_lam', tokenmix_lam)
        self.tokenmix_lam = tokenmix_lam
        self.return_mask = bool(return_mask)
        if self.prob > 0 and not self._active_modes():
            raise ValueError('no augmentation is active: set mixup_alpha, cutmix_alpha or '
                             'tokenmix_alpha > 0 (or cutmix_minmax), or prob=0')
        self.mixing_enabled = True

    # ------------------------------------------------------------------ helpers
    @property
    def align_size(self) -> int:
        """Cell size in pixels that token CutMix boxes and TokenMix cells are aligned to."""
        return self.token_grid_size or self.patch_size

    def _active_modes(self) -> list[str]:
        modes = []
        if self.mixup_alpha > 0:
            modes.append('mixup')
        if self.cutmix_alpha > 0:
            modes.append('token_cutmix' if self.cutmix_mode == 'token' else 'cutmix')
        if self.tokenmix_alpha > 0:
            modes.append('tokenmix')
        return modes

    def __repr__(self) -> str:
        keys = ('mixup_alpha', 'cutmix_alpha', 'cutmix_minmax', 'tokenmix_alpha', 'prob',
                'switch_prob', 'cutmix_mode', 'correct_lam', 'patch_size', 'token_grid_size',
                'mixing_enabled')
        return f'{type(self).__name__}(' + ', '.join(f'{k}={getattr(self, k)!r}' for k in keys) + ')'

    @staticmethod
    def _beta(alpha: float, rng) -> float:
        """One draw of ``Beta(alpha, alpha)`` as ``X / (X + Y)`` with ``X, Y ~ Gamma(alpha)``."""
        x, y = rng.gammavariate(alpha, 1.0), rng.gammavariate(alpha, 1.0)
        if x + y == 0.0:  # both underflowed (tiny alpha): Beta mass sits at 0 and 1 equally
            return float(rng.random() < 0.5)
        return x / (x + y)

    def _params(self, rng) -> tuple[str, float]:
        """Mode and raw lam of one batch (timm ``Mixup._params_per_batch`` + TokenMix)."""
        if not self.mixing_enabled or not rng.random() < self.prob:
            return 'none', 1.0
        modes = self._active_modes()
        spatial = [m for m in modes if m != 'mixup']
        if 'mixup' in modes and spatial:
            mode = spatial[0] if rng.random() < self.switch_prob else 'mixup'
        else:
            mode = modes[0]
        if mode in ('token_cutmix', 'cutmix') and 'tokenmix' in spatial:
            if rng.random() < self.tokenmix_switch_prob:
                mode = 'tokenmix'
        if mode == 'tokenmix' and self.tokenmix_lam is not None:
            return mode, self.tokenmix_lam
        alpha = {'mixup': self.mixup_alpha, 'tokenmix': self.tokenmix_alpha}.get(mode, self.cutmix_alpha)
        return mode, self._beta(alpha, rng)

    def _rand_box(self, h: int, w: int, lam: float, rng) -> tuple[int, int, int, int]:
        """Box ``(yl, yh, xl, xh)`` on an ``h x w`` grid (timm ``rand_bbox`` / ``rand_bbox_minmax``)."""
        if self.cutmix_minmax is not None:
            lo, hi = self.cutmix_minmax
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

    def _check_size(self, images: Tensor) -> tuple[int, int]:
        if images.dim() != 4:
            raise ValueError(f'images must be (B, C, H, W), got shape {tuple(images.shape)}')
        h, w = images.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f'image size {h}x{w} is not divisible by patch_size={self.patch_size}; '
                             'resize or pad the images to a multiple of the patch size')
        if self.token_grid_size is not None and (h % self.token_grid_size or w % self.token_grid_size):
            raise ValueError(f'image size {h}x{w} is not divisible by token_grid_size='
                             f'{self.token_grid_size} (patch_size={self.patch_size})')
        return h, w

    # --------------------------------------------------------------------- call
    def __call__(self, images: Tensor, generator: random.Random | None = None) -> MixResult:
        """Mix ``images`` with ``images.flip(0)``.

        Args:
            images: (B, C, H, W) batch, H and W divisible by ``patch_size`` (and by
                ``token_grid_size`` if set).  Any device; not modified.  Mixup needs a floating
                dtype; the other modes copy pixels and accept any dtype.
            generator: optional ``random.Random`` for reproducible draws; Python's global
                ``random`` otherwise.  Scalars are drawn on the host and nothing is read back
                from the device (no host-device synchronisation); TokenMix's token subset is
                drawn on ``images.device`` by a ``torch.Generator`` seeded from this stream.

        Returns:
            :class:`MixResult`; all its tensors are on ``images.device``.  For an odd batch the
            middle sample (its own partner) is returned unchanged with ``share_b = 0`` and
            ``lam = 1``; every other sample gets the batch's single ``lam``.

        Raises:
            ValueError: wrong rank or a size not divisible by ``patch_size`` /
                ``token_grid_size``.
            TypeError: Mixup drawn for non-floating-point images.
        """
        h, w = self._check_size(images)
        b = images.shape[0]
        device = images.device
        p = self.patch_size
        grid = (h // p, w // p)
        partner = partner_index(b, device=device)

        rng = random if generator is None else generator
        mode, lam = self._params(rng)
        if mode != 'none' and lam >= 1.0:
            mode, lam = 'none', 1.0  # nothing of B would be visible
        # share: (Hp, Wp) share of B per patch token; pix: (H, W) pixel share of B, built only
        # when needed (TokenMix images, return_mask).
        share = torch.zeros(grid, dtype=torch.float32, device=device)
        pix = None
        if mode == 'none':
            out = images
        elif mode == 'mixup':
            if not images.is_floating_point():
                raise TypeError(f'Mixup needs floating-point images, got {images.dtype}')
            out = images * lam + images.flip(0) * (1.0 - lam)
            share.fill_(1.0 - lam)
        elif mode == 'tokenmix':
            g = self.align_size
            gh, gw = h // g, w // g
            n_cells = gh * gw
            n_b = min(n_cells, int((1.0 - lam) * n_cells) + self.tokenmix_min_tokens)
            if self.tokenmix_mask == 'block':
                grid_cells = block_mask_cells(gh, gw, n_b, rng)          # drawn on the host
                n_b = sum(map(sum, grid_cells))
                cells = torch.tensor(grid_cells, dtype=torch.float32).to(device, non_blocking=True)
            else:
                dev_gen = torch.Generator(device=device)
                dev_gen.manual_seed(rng.getrandbits(63))
                cells = torch.zeros(n_cells, dtype=torch.float32, device=device)
                cells[torch.randperm(n_cells, generator=dev_gen, device=device)[:n_b]] = 1.0
                cells = cells.view(gh, gw)
            share = cells.repeat_interleave(g // p, 0).repeat_interleave(g // p, 1)
            pix = cells.repeat_interleave(g, 0).repeat_interleave(g, 1)
            out = torch.where(pix.bool()[None, None], images.flip(0), images)
            if self.correct_lam:
                lam = 1.0 - n_b / float(n_cells)
        else:  # box: token_cutmix on the alignment grid, cutmix on pixels
            g = self.align_size if mode == 'token_cutmix' else 1
            yl, yh, xl, xh = (v * g for v in self._rand_box(h // g, w // g, lam, rng))
            out = images.clone()
            out[:, :, yl:yh, xl:xh] = images[:, :, yl:yh, xl:xh].flip(0)
            share = _box_token_share(yl, yh, xl, xh, h, w, p, device)
            if self.correct_lam or self.cutmix_minmax is not None:
                lam = 1.0 - (yh - yl) * (xh - xl) / float(h * w)
        if self.return_mask and pix is None:
            pix = torch.zeros(h, w, dtype=torch.float32, device=device)
            if mode == 'mixup':
                pix.fill_(1.0 - lam)
            elif mode in ('cutmix', 'token_cutmix'):
                pix[yl:yh, xl:xh] = 1.0

        share_b = share.reshape(1, -1).repeat(b, 1)
        lam_t = torch.full((b,), lam, dtype=torch.float32, device=device)
        mask = pix[None].repeat(b, 1, 1) if self.return_mask else None
        if b % 2 == 1 and mode != 'none':
            # The middle sample is its own partner: report it unmixed and return it untouched
            # (Mixup's lam*x + (1-lam)*x may differ from x in the last bit).
            mid = b // 2
            out[mid] = images[mid]
            share_b[mid] = 0.0
            lam_t[mid] = 1.0
            if mask is not None:
                mask[mid] = 0.0
        return MixResult(images=out, share_b=share_b, lam=lam_t, partner=partner, mode=mode,
                         mask=mask, patch_size=p, grid_size=grid, source_images=images)
