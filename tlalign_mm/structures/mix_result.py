"""What a batch mixer reports: the mixed images and, per patch token, the share of the partner image.

The input TL-Align needs (``docs/advanced_guides/method.md``, "Inputs"; :func:`tlalign_mm.align.token_share_from_mask`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from ..align.token_labels import initial_source_labels

__all__ = ['MixResult', 'MIX_MODES']

#: Values of :attr:`MixResult.mode`.
MIX_MODES = ('token_cutmix', 'cutmix', 'mixup', 'tokenmix', 'none')


@dataclass
class MixResult:
    """What a :class:`BatchMixer` produced for one batch.

    Attributes:
        images: (B, C, H, W) mixed images, same dtype and device as the input.  For
            ``mode == 'none'`` this is the input tensor itself (not a copy).
        share_b: (B, N) float32 in [0, 1]: share of each patch token's pixels that came from the
            partner image, tokens in row-major order of the ``token_grid`` grid of
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
        token_grid: (H / patch_size, W / patch_size) tokens, the grid ``share_b`` flattens (counted in
            tokens, as the backbones' ``token_grid(img_hw)``; the mixer's ``token_grid_size`` is a
            cell's side in pixels).
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
    token_grid: tuple[int, int] = (0, 0)
    source_images: Tensor | None = None

    #: whether any mixing happened (``mode != 'none'``); a stored bool rather than a property of
    #: ``mode``, so that a compiled model specialises on two cases instead of one per mode
    mixed: bool = field(init=False)

    def __post_init__(self) -> None:
        self.mixed = self.mode != 'none'

    def source_labels(self, num_prefix_tokens: int = 1) -> Tensor:
        """Initial 2-channel TL-Align source embedding, (B, num_prefix_tokens + N, 2) float32.

        See :func:`tlalign_mm.align.initial_source_labels`: patch rows ``[1 - s, s]`` with
        ``s = share_b``, prefix rows (class / distillation tokens) ``[lam, 1 - lam]``.
        """
        return initial_source_labels(self.share_b, self.lam, num_prefix_tokens)
