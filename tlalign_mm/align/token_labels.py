"""Initial token-label embeddings and their expansion to class targets.

TL-Align (Xiao et al., "Token-Label Alignment for Vision Transformers", ICCV 2023,
arXiv:2210.06455; reference code ``tla.py`` of github.com/Euphoria16/TL-Align) starts every
token with the label of the image its pixels came from, and the class token with the usual
mixed target.  Because every later operation on the labels is linear in the token axis, the
project carries a 2-channel *source embedding* ``R`` (share of image A, share of image B) and
expands it to class targets at the end::

    Y = R[..., 0:1] * y_A + R[..., 1:2] * y_B

which is exactly what propagating ``K = num_classes`` channels gives (``docs/advanced_guides/method.md``).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    'smooth_one_hot', 'partner_index', 'token_share_from_mask', 'initial_source_labels',
    'expand_source_labels', 'initial_class_labels', 'mixed_target'
]


def smooth_one_hot(target: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """Label-smoothed one-hot targets, as timm's ``mixup_target`` builds them.

    Args:
        target: (B,) integer class indices in ``[0, num_classes)``.
        num_classes: K.
        smoothing: label smoothing in ``[0, 1)``; off value ``smoothing / K``,
            on value ``1 - smoothing + smoothing / K`` (rows sum to 1).

    Returns:
        (B, K) float32 tensor.

    Raises:
        ValueError: ``target`` not 1-D integer, or ``smoothing`` outside [0, 1); class indices
            outside ``[0, num_classes)`` in a CPU ``target``.
        RuntimeError: class indices out of range in a ``target`` on another device (CUDA), or
            under ``torch.compile``: the range is checked there by ``torch._assert_async``, a
            device-side assertion that never makes the host wait (and no graph break), so the
            error surfaces at the next synchronisation.
    """
    if target.dim() != 1 or target.is_floating_point():
        raise ValueError(f'target must be a 1-D integer tensor of class indices, got '
                         f'shape {tuple(target.shape)} dtype {target.dtype}')
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f'smoothing must be in [0, 1), got {smoothing}')
    in_range = ((target >= 0) & (target < num_classes)).all()
    if target.device.type == 'cpu' and not torch.compiler.is_compiling():
        if not in_range:
            raise ValueError(f'target has class indices outside [0, {num_classes}): '
                             f'min {int(target.min())}, max {int(target.max())}')
    else:
        torch._assert_async(in_range, f'target has class indices outside [0, {num_classes})')
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    out = torch.full((target.shape[0], num_classes), off, dtype=torch.float32, device=target.device)
    return out.scatter_(1, target.long().view(-1, 1), on)


def partner_index(batch_size: int, device: Optional[torch.device] = None) -> Tensor:
    """Mixing partner of each sample: sample ``i`` mixes with ``B - 1 - i`` (timm 'batch' mode).

    For an odd batch the middle sample is its own partner (it stays unmixed in effect).

    Returns:
        (B,) long tensor.
    """
    return torch.arange(batch_size - 1, -1, -1, device=device)


def token_share_from_mask(mask: Tensor, patch_size: int | tuple[int, int]) -> Tensor:
    """Per-token share of the partner image from a pixel-level mixing mask.

    Args:
        mask: (B, H, W) or (H, W) float in [0, 1], the fraction of each pixel that comes
            from the partner image B (1 = pasted from B, 0 = kept from A; Mixup gives a
            constant 1 - lam).  H and W must be divisible by the patch size.
        patch_size: token stride in pixels (16 for DeiT, 4 for Swin's patch embedding).

    Returns:
        (B, N) float32 share of B per token, N = (H / p_h) * (W / p_w), tokens in row-major
        order (the order patch embeddings are flattened in).  A token wholly inside the pasted
        box gets 1, a partial patch its area share.

    Raises:
        ValueError: mask of the wrong rank or a size not divisible by the patch size.
    """
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    if mask.dim() != 3:
        raise ValueError(f'mask must be (B, H, W) or (H, W), got shape {tuple(mask.shape)}')
    h, w = mask.shape[-2:]
    if h % ph or w % pw:
        raise ValueError(f'mask size {h}x{w} is not divisible by the patch size {ph}x{pw}; '
                         'resize or pad the images to a multiple of the patch size')
    share = F.avg_pool2d(mask[:, None].float(), kernel_size=(ph, pw), stride=(ph, pw))
    return share.flatten(1)


def initial_source_labels(share_b: Tensor, lam: Tensor | float, num_prefix_tokens: int = 1) -> Tensor:
    """Initial 2-channel source embedding ``R0`` (TL-Align-S, ``docs/advanced_guides/method.md`` "Inputs").

    Args:
        share_b: (B, N) float in [0, 1], each patch token's share of the partner image B
            (see :func:`token_share_from_mask`).
        lam: mixing ratio, the share of image A in the mixed target: a float or a (B,) tensor.
            It should be the corrected ratio (token fraction actually kept).
        num_prefix_tokens: rows prepended for class / distillation tokens (1 for DeiT,
            2 for distilled DeiT, 0 for Swin).  Each gets ``[lam, 1 - lam]``.

    Returns:
        (B, num_prefix_tokens + N, 2) float32; channel 0 is the share of A, channel 1 of B;
        every row sums to 1.

    Raises:
        ValueError: ``lam`` with neither one value nor one per sample.
    """
    share_b = share_b.float()
    b = share_b.shape[0]
    lam_t = torch.as_tensor(lam, dtype=torch.float32, device=share_b.device).reshape(-1)
    if lam_t.numel() == 1:
        lam_t = lam_t.expand(b)
    if lam_t.numel() != b:
        raise ValueError(f'lam must be a float or have one value per sample ({b}), got {lam_t.numel()}')
    patches = torch.stack([1.0 - share_b, share_b], dim=-1)
    if num_prefix_tokens == 0:
        return patches
    prefix = torch.stack([lam_t, 1.0 - lam_t], dim=-1)[:, None].expand(b, num_prefix_tokens, 2)
    return torch.cat([prefix, patches], dim=1)


def expand_source_labels(source: Tensor, y_a: Tensor, y_b: Tensor) -> Tensor:
    """Expand a 2-channel source embedding to class-space labels.

    Args:
        source: (B, ..., 2) shares of image A and of image B (any token axes in between).
        y_a: (B, K) (smoothed) targets of the images themselves.
        y_b: (B, K) (smoothed) targets of their mixing partners.

    Returns:
        (B, ..., K) float32 ``source[..., 0] * y_a + source[..., 1] * y_b``.

    Raises:
        ValueError: ``source`` without 2 channels in its last axis.
    """
    if source.shape[-1] != 2:
        raise ValueError(f'source embedding must have 2 channels (A, B), got {source.shape[-1]}')
    shape = (source.shape[0],) + (1,) * (source.dim() - 2) + (y_a.shape[-1],)
    src = source.float()
    return src[..., 0:1] * y_a.float().reshape(shape) + src[..., 1:2] * y_b.float().reshape(shape)


def initial_class_labels(share_b: Tensor, lam: Tensor | float, y_a: Tensor, y_b: Tensor,
                         num_prefix_tokens: int = 1) -> Tensor:
    """Initial labels with ``K = num_classes`` channels, as the reference code builds them.

    Returns:
        (B, num_prefix_tokens + N, K) float32: patch tokens carry ``y_A`` or ``y_B`` (area
        weighted for partial patches), prefix tokens the mixed target.
    """
    return expand_source_labels(initial_source_labels(share_b, lam, num_prefix_tokens), y_a, y_b)


def mixed_target(lam: Tensor | float, y_a: Tensor, y_b: Tensor) -> Tensor:
    """The plain CutMix/Mixup target ``lam * y_A + (1 - lam) * y_B``, (B, K) float32."""
    lam_t = torch.as_tensor(lam, dtype=torch.float32, device=y_a.device).reshape(-1, 1)
    return lam_t * y_a.float() + (1.0 - lam_t) * y_b.float()
