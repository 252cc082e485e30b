"""Trained-like attention for precision checks: structured weights and a mixed batch to trace.

Randomly initialised ViTs attend almost uniformly: every token then carries nearly the batch's
mean label, and any label rule -- right or wrong, float32 or bfloat16 -- lands within rounding
of the area target.  Precision budgets and label-rule tests therefore need attention with the
structure of a trained model: sharp heads next to broad ones, local heads that follow position
or content similarity, and per-head relative position biases in Swin.  :func:`structure_attention_`
gives a freshly built backbone such weights (deterministically, from a seed) and
:func:`structured_mixed_batch` draws a batch of smooth images mixed by a box, with its K = 2
source labels; :func:`tlalign_mm.analysis.precision.attention_stats` shows the attention is far
from uniform and :func:`tlalign_mm.analysis.precision.label_precision` measures the batch.

A module of the analysis tools (``gpu_check.py``), imported as ``structured_attention`` with this
folder on ``sys.path`` (a script's own folder is; the tests put it there too); not part of the
``tlalign_mm`` package: it sets weights up for a check and measures nothing.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from tlalign_mm.align import initial_source_labels
from tlalign_mm.analysis.tracing import iter_blocks
from tlalign_mm.models.backbones import TLAVisionTransformer
from tlalign_mm.models.backbones.swin import TLAWindowAttention

__all__ = ['structure_attention_', 'structured_mixed_batch']


def _sincos_2d(grid: tuple[int, int], dim: int) -> Tensor:
    """(gh * gw, dim) 2-D sine-cosine position embedding (MAE's), rows in row-major order."""
    gh, gw = grid
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64),
                            indexing='ij')
    out = [f(c.reshape(-1, 1) * omega) for c in (ys, xs) for f in (torch.sin, torch.cos)]
    emb = torch.cat(out, dim=1)
    return F.pad(emb, (0, dim - emb.shape[1])).float()


def _structure_qkv_(qkv: nn.Linear, num_heads: int, gains: Tensor, g: torch.Generator) -> None:
    """Even heads: q and k share a projection (similarity / local heads); odd heads: independent
    q and k (content heads that pick out a few keys).  ``gains`` (H,) sets each head's sharpness."""
    c = qkv.in_features
    d = c // num_heads
    w = qkv.weight
    for h in range(num_heads):
        base = torch.randn(d, c, generator=g) / math.sqrt(c)
        other = torch.randn(d, c, generator=g) / math.sqrt(c)
        rows = slice(h * d, (h + 1) * d)
        w[rows] = gains[h] * (base if h % 2 == 0 else other)
        w[c:2 * c][rows] = gains[h] * base
    if qkv.bias is not None:
        qkv.bias[:2 * c].zero_()


@torch.no_grad()
def structure_attention_(backbone: nn.Module, seed: int = 0, gain_range: tuple[float, float] = (0.7, 2.5)) -> nn.Module:
    """Give a label-carrying backbone trained-like attention, in place.

    * every block's q/k projections: per-head gains drawn log-uniformly from ``gain_range``
      (logits grow with the gain squared: broad heads next to nearly one-hot ones); even heads
      share q and k (they attend to similar, mostly nearby tokens), odd heads do not;
    * DeiT: a 2-D sine-cosine position embedding, so that similarity heads are local, and a
      class token of unit scale, whose queries then select keys by content;
    * Swin: relative position biases that fall off with distance at a per-head rate plus noise.

    Args:
        backbone: a ``TLAVisionTransformer`` or ``TLASwinTransformer`` (after ``init_weights``).
        seed: the weights are a deterministic function of it.
        gain_range: (low, high) > 0.

    Returns:
        the backbone.

    Raises:
        TypeError: a backbone without ViT or Swin blocks.
    """
    g = torch.Generator().manual_seed(seed)
    lo, hi = (math.log(v) for v in gain_range)
    for ref in iter_blocks(backbone):
        attn = ref.module.attn
        gains = torch.exp(lo + (hi - lo) * torch.rand(attn.num_heads, generator=g))
        _structure_qkv_(attn.qkv, attn.num_heads, gains, g)
        if isinstance(attn, TLAWindowAttention):
            ws, table = attn.window_size, attn.relative_position_bias_table
            r = torch.arange(-(ws - 1), ws, dtype=torch.float32)
            dist = (r.view(-1, 1).abs() + r.view(1, -1).abs()).reshape(-1, 1)
            rate = 0.2 + 0.8 * torch.rand(attn.num_heads, generator=g)
            table.copy_(-dist * rate + 0.5 * torch.randn(table.shape, generator=g))
    if isinstance(backbone, TLAVisionTransformer):
        pos, p = backbone.pos_embed, backbone.num_prefix_tokens
        pos[0, p:] = _sincos_2d(backbone.patch_grid, pos.shape[-1])
        # a class token with its own content: its query picks keys by what they show
        backbone.cls_token.copy_(torch.randn(backbone.cls_token.shape, generator=g))
    return backbone


def structured_mixed_batch(backbone: nn.Module, batch: int = 4, img: int = 224, box_cell: int = 32,
                           seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Smooth random images mixed with their flipped batch by a grid-aligned box.

    Args:
        backbone: a TLABackbone: gives ``token_grid``, ``num_prefix_tokens`` and the device.
        batch: B (even).
        img: image side in pixels, a multiple of ``box_cell``.
        box_cell: the box is aligned to cells of this many pixels (32 keeps every Swin stage's
            tokens wholly A or B).
        seed: draws are a deterministic function of it.

    Returns:
        ``(images (B, 3, img, img) float32, token_labels (B, P + N, 2) float32, lam (B,))`` with
        the K = 2 source embedding of :func:`tlalign_mm.align.initial_source_labels`.
    """
    g = torch.Generator().manual_seed(seed)
    device = next(backbone.parameters()).device
    low = torch.randn(batch, 3, 7, 7, generator=g)
    x = F.interpolate(low, size=(img, img), mode='bicubic', align_corners=False)
    x = x + 0.1 * torch.randn(batch, 3, img, img, generator=g)
    # images of different contrast: tokens of the stronger image stand out to content heads
    x = x * torch.exp(1.5 * torch.randn(batch, 1, 1, 1, generator=g))
    cells = img // box_cell
    y0, x0 = (int(v) for v in torch.randint(0, cells // 2 + 1, (2,), generator=g))
    hc, wc = (int(v) for v in torch.randint(cells // 3, cells // 2 + 2, (2,), generator=g))
    pix = torch.zeros(img, img)
    pix[y0 * box_cell:(y0 + hc) * box_cell, x0 * box_cell:(x0 + wc) * box_cell] = 1.0
    x = torch.where(pix.bool(), x.flip(0), x)
    gh, gw = backbone.token_grid((img, img))
    share = F.adaptive_avg_pool2d(pix[None, None], (gh, gw)).flatten(1).expand(batch, -1)
    lam = 1.0 - share.mean(1)
    return (x.to(device), initial_source_labels(share, lam, backbone.num_prefix_tokens).to(device),
            lam.to(device))
