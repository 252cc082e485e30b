"""The batch mixer: one augment per batch, chosen and given its lam on the host (timm ``Mixup``'s switch).

Every augment works in timm's ``mode='batch'`` fashion (``timm/data/mixup.py``, class ``Mixup``):
one augmentation and one ``lam`` per batch, and sample ``i`` is mixed with its partner ``B - 1 - i``
(the batch flipped).  Besides the mixed images a :class:`~tlalign_mm.structures.MixResult` reports, for
every patch token, the share of its pixels that came from the partner image.

Behaviour and where it comes from:

* Choice of augmentation, ``prob``, ``switch_prob``, ``cutmix_minmax``, ``correct_lam`` and the
  ``Beta(alpha, alpha)`` draw of ``lam`` follow timm ``Mixup._params_per_batch`` /
  ``cutmix_bbox_and_lam``; the augments are :class:`~tlalign_mm.mixing.mixup.Mixup`,
  :class:`~tlalign_mm.mixing.cutmix.CutMix`, :class:`~tlalign_mm.mixing.token_cutmix.TokenCutMix`
  and :class:`~tlalign_mm.mixing.tokenmix.TokenMix` (their modules give their sources).
* Unlike TL-Align's ``TL_AlignMix`` (which asserts an even batch and redraws until ``lam != 1``),
  odd batches are accepted -- the middle sample is its own partner and is reported unmixed -- and
  ``prob`` is honoured as in timm.

Random numbers: the batch's scalars (mode, lam, box, block mask) are drawn on the host from the
``random.Random`` passed to :meth:`BatchMixer.__call__` or, when none is given, from Python's
global ``random`` (seeded by mmengine's ``randomness.seed``), in this order: the ``prob`` draw, the
Mixup / spatial switch, the CutMix / TokenMix switch, lam, then the augment's own draws; so mixing
never reads a number back from the device.  The random TokenMix subset is drawn on the images'
device by a ``torch.Generator`` seeded from the same host stream.  numpy's global RNG is never used.
"""
from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from torch import Tensor

from ..align.token_labels import partner_index
from ..structures import MixResult
from .base import BatchAugment, check_alpha, check_prob
from .cutmix import CutMix
from .mixup import Mixup
from .token_cutmix import TokenCutMix
from .tokenmix import TokenMix

__all__ = ['BatchMixer', 'CUTMIX_MODES']

#: Values of ``BatchMixer(cutmix_mode=...)``.
CUTMIX_MODES = ('token', 'pixel')


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
        if cutmix_minmax is not None:
            cutmix_alpha = 1.0  # as timm: minmax forces CutMix on with alpha 1 (CutMix checks the ratios)
        if cutmix_mode not in CUTMIX_MODES:
            raise ValueError(f'cutmix_mode must be one of {CUTMIX_MODES}, got {cutmix_mode!r}')
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
        self.cutmix_mode = cutmix_mode
        self.correct_lam = bool(correct_lam)
        self.prob = check_prob('prob', prob)
        self.switch_prob = check_prob('switch_prob', switch_prob)
        self.tokenmix_switch_prob = check_prob('tokenmix_switch_prob', tokenmix_switch_prob)
        mixup = Mixup(check_alpha('mixup_alpha', mixup_alpha))
        cutmix_alpha = check_alpha('cutmix_alpha', cutmix_alpha)
        box = (TokenCutMix(cutmix_alpha, cutmix_minmax, correct_lam, token_grid_size) if cutmix_mode == 'token'
               else CutMix(cutmix_alpha, cutmix_minmax, correct_lam))
        tokenmix_alpha = check_alpha('tokenmix_alpha', tokenmix_alpha)
        tokenmix = TokenMix(tokenmix_alpha, tokenmix_mask, tokenmix_min_tokens, tokenmix_lam, correct_lam,
                            token_grid_size)
        #: the active augments by mode, in timm's order (Mixup, then the spatial ones)
        self.augments: dict[str, BatchAugment] = {a.mode: a for a in (mixup, box, tokenmix) if a.alpha > 0}
        self.mixup_alpha, self.cutmix_alpha, self.tokenmix_alpha = mixup.alpha, box.alpha, tokenmix.alpha
        self.cutmix_minmax = box.minmax
        self.tokenmix_mask, self.tokenmix_min_tokens = tokenmix.mask, tokenmix.min_tokens
        self.tokenmix_lam = tokenmix.fixed_lam
        self.return_mask = bool(return_mask)
        if self.prob > 0 and not self.augments:
            raise ValueError('no augmentation is active: set mixup_alpha, cutmix_alpha or '
                             'tokenmix_alpha > 0 (or cutmix_minmax), or prob=0')
        self.mixing_enabled = True

    @property
    def align_size(self) -> int:
        """Cell size in pixels that token CutMix boxes and TokenMix cells are aligned to."""
        return self.token_grid_size or self.patch_size

    def __repr__(self) -> str:
        keys = ('mixup_alpha', 'cutmix_alpha', 'cutmix_minmax', 'tokenmix_alpha', 'prob',
                'switch_prob', 'cutmix_mode', 'correct_lam', 'patch_size', 'token_grid_size',
                'mixing_enabled')
        return f'{type(self).__name__}(' + ', '.join(f'{k}={getattr(self, k)!r}' for k in keys) + ')'

    def _params(self, rng) -> tuple[str, float]:
        """Mode and raw lam of one batch (timm ``Mixup._params_per_batch`` + TokenMix)."""
        if not self.mixing_enabled or not rng.random() < self.prob:
            return 'none', 1.0
        modes = list(self.augments)
        spatial = [m for m in modes if m != 'mixup']
        if 'mixup' in modes and spatial:
            mode = spatial[0] if rng.random() < self.switch_prob else 'mixup'
        else:
            mode = modes[0]
        if mode in ('token_cutmix', 'cutmix') and 'tokenmix' in spatial:
            if rng.random() < self.tokenmix_switch_prob:
                mode = 'tokenmix'
        return mode, self.augments[mode].draw_lam(rng)

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
    def __call__(self, images: Tensor, rng: random.Random | None = None) -> MixResult:
        """Mix ``images`` with ``images.flip(0)``.

        Args:
            images: (B, C, H, W) batch, H and W divisible by ``patch_size`` (and by
                ``token_grid_size`` if set).  Any device; not modified.  Mixup needs a floating
                dtype; the other modes copy pixels and accept any dtype.
            rng: optional ``random.Random`` for reproducible draws; Python's global
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

        rng = random if rng is None else rng
        mode, lam = self._params(rng)
        if mode != 'none' and lam >= 1.0:
            mode, lam = 'none', 1.0  # nothing of B would be visible
        if mode == 'none':
            out, pix = images, None
            share = torch.zeros(grid, dtype=torch.float32, device=device)
        else:
            out, share, pix, lam = self.augments[mode](images, lam, rng, p, self.return_mask)
        if self.return_mask and pix is None:
            pix = torch.zeros(h, w, dtype=torch.float32, device=device)

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
                         mask=mask, patch_size=p, token_grid=grid, source_images=images)
