"""How far mixed precision moves the aligned labels, and how structured the attention is.

Randomly initialised ViTs attend almost uniformly: every token then carries nearly the batch's
mean label, and any label rule -- right or wrong, float32 or bfloat16 -- lands within rounding
of the area target.  Precision budgets and label-rule tests therefore need attention with the
structure of a trained model (``tools/analysis/structured_attention.py`` gives a freshly built
backbone such weights); :func:`attention_stats` measures how structured a backbone's attention
is, so that a check can show it is far from uniform.

:func:`label_precision` traces the same mixed batch through the backbone in float32 and under
``torch.autocast`` and compares the aligned share of image A (the class-token row for DeiT, the
token mean for Swin) and the label mass.  ``tools/gpu_check.sh`` and the tests use it.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn as nn
from torch import Tensor

from ..align import read_labels
from ..models.backbones.swin import TLAWindowAttention
from .tracing import iter_blocks

__all__ = ['attention_stats', 'label_precision']


@contextlib.contextmanager
def _capture_attention(backbone: nn.Module) -> Iterator[list]:
    """Record the head-mean attention of every block by re-running its q/k projection."""
    rows: list[Tensor] = []

    def hook(mod, args, kwargs, out):
        x = args[0]
        b, n, c = x.shape
        q, k, _ = mod.qkv(x).reshape(b, n, 3, mod.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        logits = (q @ k.transpose(-2, -1)) * mod.scale
        if isinstance(mod, TLAWindowAttention):                       # Swin: its relative position bias
            window = args[1] if len(args) > 1 else kwargs['window']
            logits = logits + mod.position_bias(window).unsqueeze(0)
        rows.append(logits.float().softmax(-1).flatten(0, 2))

    handles = [ref.module.attn.register_forward_hook(hook, with_kwargs=True) for ref in iter_blocks(backbone)]
    try:
        yield rows
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def attention_stats(backbone: nn.Module, images: Tensor) -> dict:
    """How far from uniform a backbone's attention is (shifted-window masks left out).

    Returns:
        dict(``entropy_ratio``: mean over all heads and query rows of the row entropy divided
        by ``log(number of keys)`` (1 = uniform, 0 = one-hot); ``max_weight``: mean of each
        row's largest weight; ``sharp_rows``: fraction of rows whose largest weight is > 0.5).
    """
    with _capture_attention(backbone) as rows:
        backbone(images)
    ent, mx, sharp = [], [], []
    for a in rows:
        e = -(a * a.clamp_min(1e-30).log()).sum(-1) / math.log(a.shape[-1])
        m = a.max(-1).values
        ent.append(e.mean())
        mx.append(m.mean())
        sharp.append((m > 0.5).float().mean())
    return dict(entropy_ratio=float(torch.stack(ent).mean()), max_weight=float(torch.stack(mx).mean()),
                sharp_rows=float(torch.stack(sharp).mean()))


def _share_readout(labels: Tensor, prefix: int) -> Tensor:
    return read_labels(labels, 'cls' if prefix else 'mean', prefix)[:, 0]


@torch.no_grad()
def label_precision(backbone: nn.Module, images: Tensor, token_labels: Tensor, dtype: torch.dtype) -> dict:
    """Trace one mixed batch in float32 and under autocast(``dtype``) and compare the labels.

    Args:
        backbone: a label-carrying backbone; its ``label_dtype`` decides the low-precision run's
            label path.  Used as it is (train / eval mode unchanged).
        images: (B, 3, H, W) float32 mixed images on the backbone's device.
        token_labels: (B, N, 2) K = 2 source embedding (``structured_mixed_batch`` of
            ``tools/analysis/structured_attention.py``).
        dtype: ``torch.bfloat16`` or ``torch.float16``.

    Returns:
        dict with, over the B samples, ``share_absdiff_mean`` / ``share_absdiff_max``: the
        aligned share of image A (class-token row with a class token, else the token mean)
        under autocast minus in float32; ``mass_err_max``: the largest ``|row sum - 1|`` of any
        token's final label under autocast; ``fluctuation_mean``: the float32
        ``mean |share_A - lam|``, the scale the drift is to be compared with.
    """
    prefix = backbone.num_prefix_tokens
    _, ref = backbone(images, token_labels)
    with torch.autocast(device_type=images.device.type, dtype=dtype):
        _, low = backbone(images, token_labels)
    s32, slow = _share_readout(ref, prefix), _share_readout(low, prefix)
    d = (slow - s32).abs()
    lam = 1.0 - (token_labels[:, prefix:, 1].mean(1) if prefix == 0 else token_labels[:, 0, 1])
    return dict(share_absdiff_mean=float(d.mean()), share_absdiff_max=float(d.max()),
                mass_err_max=float((low.sum(-1) - 1).abs().max()),
                fluctuation_mean=float((s32 - lam).abs().mean()))
