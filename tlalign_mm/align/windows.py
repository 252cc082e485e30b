"""Swin window rules shared by the features and the labels.

Labels must see exactly the attention the features see, so the Swin block puts them through
the same cyclic shift, partition and reverse as the tokens, with the same window and shift
(``docs/advanced_guides/method.md``, "Propagation through a block").
References: Liu et al., "Swin Transformer", ICCV 2021 (github.com/microsoft/Swin-Transformer,
``window_partition``, ``window_reverse``, the shifted-window ``attn_mask``, ``PatchMerging``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['window_partition', 'window_reverse', 'shifted_window_mask', 'relative_position_index',
           'merge_patch_labels', 'patch_merge_gather']


def window_partition(x: Tensor, window: tuple[int, int]) -> Tensor:
    """Split a map into non-overlapping windows.

    Args:
        x: (B, H, W, C); H and W must be multiples of the window.
        window: (wh, ww).

    Returns:
        (B * nW, wh * ww, C) with nW = (H / wh) * (W / ww), windows in row-major order.

    Raises:
        ValueError: the map is not divisible by the window.
    """
    b, h, w, c = x.shape
    wh, ww = window
    if h % wh or w % ww:
        raise ValueError(f'feature map {h}x{w} is not divisible by window_size {wh}x{ww}')
    x = x.view(b, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, c)


def window_reverse(windows: Tensor, window: tuple[int, int], h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition`: (B * nW, wh * ww, C) -> (B, H, W, C)."""
    wh, ww = window
    c = windows.shape[-1]
    x = windows.view(-1, h // wh, w // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def shifted_window_mask(h: int, w: int, window: tuple[int, int], shift: tuple[int, int],
                        device: torch.device | None = None, neg: float = -100.0) -> Tensor:
    """Additive attention mask of shifted-window attention.

    After a cyclic shift by ``-shift``, a window can hold tokens from up to four regions that
    were not adjacent in the image; tokens only attend within their region.

    Args:
        h, w: size of the (padded) map, multiples of the window.
        window: (wh, ww); shift: (sh, sw), each 0 <= s < window.
        neg: value put between regions (the official code's -100; exp(-100) ~ 4e-44, exactly 0
            in float32 after softmax's max-subtraction).

    Returns:
        (nW, wh * ww, wh * ww) float32 with 0 inside a region and ``neg`` across regions.
    """
    wh, ww = window
    sh, sw = shift
    img = torch.zeros(1, h, w, 1, device=device)
    cnt = 0
    for hs in ((0, h - wh), (h - wh, h - sh), (h - sh, h)) if sh else ((0, h),):
        for ws in ((0, w - ww), (w - ww, w - sw), (w - sw, w)) if sw else ((0, w),):
            img[:, hs[0]:hs[1], ws[0]:ws[1], :] = cnt
            cnt += 1
    ids = window_partition(img, window).squeeze(-1)  # (nW, wh*ww)
    diff = ids[:, None, :] - ids[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, neg)


def relative_position_index(window: tuple[int, int], table_window: tuple[int, int],
                            device: torch.device | None = None) -> Tensor:
    """Index into a ``(2*Wh-1) * (2*Ww-1)`` relative-position bias table for a window.

    Args:
        window: (wh, ww) window actually used, each <= the table's window.
        table_window: (Wh, Ww) window the bias table was built for.
        device: where the index is built (default CPU).

    Returns:
        (wh*ww, wh*ww) long tensor; for ``window == table_window`` this is the official
        ``relative_position_index`` buffer.
    """
    wh, ww = window
    th, tw = table_window
    coords = torch.stack(torch.meshgrid(torch.arange(wh, device=device), torch.arange(ww, device=device),
                                        indexing='ij')).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]
    return (rel[0] + th - 1) * (2 * tw - 1) + (rel[1] + tw - 1)


def patch_merge_gather(x: Tensor) -> Tensor:
    """Gather the 2x2 children of each merged token, official Swin order.

    Args:
        x: (B, H, W, C) with even H and W.

    Returns:
        (B, H/2, W/2, 4C): concatenation of the children at offsets (0,0), (1,0), (0,1), (1,1)
        (row, column), the order of the official ``PatchMerging`` (x0, x1, x2, x3).
    """
    return torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)


def merge_patch_labels(labels: Tensor) -> Tensor:
    """Patch-merging rule for labels: sum the 2x2 children, renormalise to unit mass.

    Args:
        labels: (B, H, W, K) label embedding, H and W even (pad with zeros first: a padded
            child carries zero mass and so does not count).

    Returns:
        (B, H/2, W/2, K) float32.  Each merged token's label is the children's sum divided by
        the children's total mass (so it sums to 1 when the children each do); a token whose
        children all carry zero mass stays zero.
    """
    b, h, w, k = labels.shape
    s = labels.float().view(b, h // 2, 2, w // 2, 2, k).sum(dim=(2, 4))
    mass = s.sum(dim=-1, keepdim=True)
    return s / mass.clamp_min(torch.finfo(s.dtype).tiny)


def pad_to_multiple(x: Tensor, multiple: tuple[int, int]) -> tuple[Tensor, int, int]:
    """Zero-pad a (B, H, W, C) map at the bottom/right to multiples of ``multiple``.

    Returns:
        (padded map, pad_h, pad_w).
    """
    h, w = x.shape[1:3]
    ph, pw = (-h) % multiple[0], (-w) % multiple[1]
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    return x, ph, pw
