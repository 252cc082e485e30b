"""The TL-Align attention step: carry token labels through one self-attention layer.

For a block with softmax attention ``A_h`` (B, N, N) per head ``h = 1..H`` the labels move as

    Y_att = mean_h(A_h) @ Y                         (TL-Align-S)
    Y    <- (Y + Y_att) / 2                          (residual average of the reference code)

with the attention the features use (relative position bias and shifted-window mask included),
taken before attention dropout, detached, in float32 (``tl-align.md``; reference: ``Attention``
and ``Block.forward`` in Euphoria16/TL-Align ``timm/models/vision_transformer.py``).

Three implementations of the attention step live here, each returning the block's attention
output for the features and the aligned labels:

* :func:`fused_attention_with_labels` (``label_mode='fused'``, the default).  Since
  ``mean_h(A_h) @ Y = mean_h(A_h @ Y)`` and every head sees the same ``Y``, the labels ride as
  extra value channels of every head in the features' own attention call; their outputs are
  split off and detached, and no per-head attention matrix is materialised.  Per call:

  - CPU, float32, mask (if any) without gradient, K <= D / 8 (DeiT; Swin without grad):
    PyTorch's CPU flash-attention kernel with q/k zero-padded by K channels (zero channels
    leave ``q k^T`` unchanged) and a backward that runs the kernel's own backward on the
    unpadded tensors, so the features' gradient costs exactly what plain SDPA's does
    (:class:`_CPUFlashAttentionWithLabels`);
  - CPU, float32, mask with gradient (Swin's relative position bias in training): SDPA has no
    CPU kernel for that and would take its math kernel, so the attention is written out once
    and the labels are read off the same softmax (:func:`explicit_attention_with_labels`);
  - CPU, float32, many label channels (K = num_classes): :func:`split_attention_with_labels`;
  - other devices, float32: one SDPA call with the labels as extra value channels;
  - features not in float32 (autocast) or attention dropout: the features' SDPA call plus a
    second float32 SDPA call on the detached q/k for the labels, so the label path stays
    float32 on every device.
* :func:`split_attention_with_labels` (``'split'``): the features take the plain SDPA call
  (exactly the baseline's kernel and autograd graph); the labels take a no-grad float32 pass
  that forms ``mean_h softmax(q k^T)`` and multiplies it with ``Y``.  The (B, N, N) head mean
  exists only transiently (nothing is saved for backward).
* :func:`explicit_attention_with_labels` (``'explicit'``): the reference way, materialising
  ``softmax(q k^T)`` per head.  Kept as the documented reference mode and for tests.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['attention_with_labels', 'attention_label_step', 'residual_label_average', 'fused_attention_with_labels',
           'explicit_attention_with_labels', 'split_attention_with_labels', 'check_token_labels',
           'LABEL_MODES']

LABEL_MODES = ('fused', 'split', 'explicit')


def check_token_labels(labels: Tensor, batch: int, tokens: int, name: str = 'token_labels') -> None:
    """Validate a label embedding against the token sequence it must ride with.

    Args:
        labels: expected (B, N, K) floating point.
        batch: B of the features.
        tokens: N of the features (prefix tokens included).

    Raises:
        TypeError: labels not a floating-point tensor.
        ValueError: wrong rank, batch or token count.
    """
    if not torch.is_tensor(labels) or not labels.is_floating_point():
        got = f'dtype {labels.dtype}' if torch.is_tensor(labels) else type(labels).__name__
        raise TypeError(f'{name} must be a floating-point tensor (B, N, K), got {got}')
    if labels.dim() != 3 or labels.shape[0] != batch or labels.shape[1] != tokens:
        raise ValueError(f'{name} must have shape (B={batch}, N={tokens}, K) to match the tokens, '
                         f'got {tuple(labels.shape)}')


def attention_label_step(attn: Tensor, labels: Tensor) -> Tensor:
    """Align labels with materialised attention: ``mean_h(A_h) @ Y`` in float32, detached.

    Args:
        attn: (B, H, N, M) softmax attention (rows sum to 1), before dropout.
        labels: (B, M, K) label embedding of the keys.

    Returns:
        (B, N, K) float32, no gradient.
    """
    with torch.no_grad():
        return attn.detach().float().mean(dim=1) @ labels.detach().float()


def residual_label_average(labels: Tensor, labels_att: Tensor) -> Tensor:
    """Residual rule of the reference code: ``(Y + Y_att) / 2`` (row sums are preserved)."""
    return (labels + labels_att) * 0.5


def _label_heads(labels: Tensor, num_heads: int, dtype: torch.dtype, pad_to: int = 1) -> Tensor:
    """(B, N, K) -> (B, H, N, K') as value channels, K' = K padded up to a multiple of pad_to."""
    k = labels.shape[-1]
    pad = (-k) % pad_to
    y = labels.detach().to(dtype)
    if pad:
        y = F.pad(y, (0, pad))
    return y.unsqueeze(1).expand(-1, num_heads, -1, -1)


_FLASH_CPU = getattr(torch.ops.aten, '_scaled_dot_product_flash_attention_for_cpu', None)
_FLASH_CPU_BACKWARD = getattr(torch.ops.aten, '_scaled_dot_product_flash_attention_for_cpu_backward', None)


def _cpu_float32(q: Tensor, k: Tensor, v: Tensor, dropout_p: float) -> bool:
    """CPU float32 q/k/v without attention dropout: where the CPU-specific label paths apply."""
    return (q.device.type == 'cpu' and dropout_p == 0.0
            and q.dtype == k.dtype == v.dtype == torch.float32)


def _cpu_flash_applies(q: Tensor, v: Tensor, labels: Tensor, attn_mask: Optional[Tensor]) -> bool:
    """Whether :class:`_CPUFlashAttentionWithLabels` can run a :func:`_cpu_float32` call.

    It needs PyTorch's CPU flash-attention ops (private ``aten`` ops, present since torch 2.2),
    q/k/v of one head size, a float mask that needs no gradient (that kernel's backward returns
    no mask gradient; plain SDPA itself leaves the flash kernel for its math kernel in that
    case, e.g. Swin's learnable relative position bias), and few label channels: q and k are
    padded by K zero channels, so K is held to at most 1/8 of the head size (K = 2 source
    labels always qualify; K = num_classes takes the split pass instead).
    """
    if _FLASH_CPU is None or _FLASH_CPU_BACKWARD is None:
        return False
    if labels.shape[-1] * 8 > q.shape[-1] or q.shape[-1] != v.shape[-1]:
        return False
    return attn_mask is None or (not attn_mask.requires_grad and attn_mask.dtype == torch.float32)


class _CPUFlashAttentionWithLabels(torch.autograd.Function):
    """CPU flash attention for the features with the labels as extra value channels.

    Forward: q, k (B, H, N, D) are zero-padded to D + K channels and the labels (B, N, K) are
    appended to every head's values, so one ``_scaled_dot_product_flash_attention_for_cpu``
    call returns ``A_h @ [V_h | Y]`` and the log-sum-exp of every softmax row.  Backward: the
    same kernel's backward on the unpadded q, k, v with the feature part of the output and the
    log-sum-exp (which the zero channels leave unchanged), i.e. exactly plain SDPA's backward.
    The labels' output is detached (no gradient reaches the labels or through them).
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, labels: Tensor, attn_mask: Optional[Tensor],
                scale: Optional[float]) -> tuple[Tensor, Tensor]:
        d, n_lab = v.shape[-1], labels.shape[-1]
        scale = d ** -0.5 if scale is None else scale
        y = _label_heads(labels, q.shape[1], v.dtype)
        out, lse = _FLASH_CPU(F.pad(q, (0, n_lab)), F.pad(k, (0, n_lab)), torch.cat([v, y], dim=-1),
                              attn_mask=attn_mask, scale=scale)
        # The kernel writes (B, N, H, D') memory; keep that layout so that the caller's
        # ``transpose(1, 2).reshape`` stays a view, as after plain SDPA.
        feat = out[..., :d].transpose(1, 2).contiguous().transpose(1, 2)
        labels_att = out[..., d:].mean(dim=1)
        ctx.scale = scale
        ctx.save_for_backward(q, k, v, feat, lse, attn_mask)
        ctx.mark_non_differentiable(labels_att)
        return feat, labels_att

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor, _grad_labels: Optional[Tensor]):
        q, k, v, feat, lse, attn_mask = ctx.saved_tensors
        gq, gk, gv = _FLASH_CPU_BACKWARD(grad_out, q, k, v, feat, lse, 0.0, False, attn_mask=attn_mask,
                                         scale=ctx.scale)
        return gq, gk, gv, None, None, None


def fused_attention_with_labels(q: Tensor, k: Tensor, v: Tensor, labels: Optional[Tensor],
                                attn_mask: Optional[Tensor] = None, dropout_p: float = 0.0,
                                scale: Optional[float] = None) -> tuple[Tensor, Optional[Tensor]]:
    """Scaled dot-product attention that also aligns a label embedding, in one fused call.

    Args:
        q, k, v: (B, H, N, D) queries, keys, values (as ``F.scaled_dot_product_attention``).
        labels: (B, N, K) label embedding of the tokens, or None (plain attention).
        attn_mask: additive float mask broadcastable to (B, H, N, N) (relative position bias,
            shifted-window mask), or None.
        dropout_p: attention dropout probability (features only; labels see the attention
            before dropout, as in the reference code).
        scale: softmax scale, default ``D ** -0.5``.

    Returns:
        ``(out, labels_att)``: out (B, H, N, D) as SDPA returns it; labels_att (B, N, K) float32
        detached ``mean_h(A_h) @ Y`` (None when ``labels`` is None).
    """
    cpu32 = _cpu_float32(q, k, v, dropout_p)
    if cpu32 and attn_mask is not None and attn_mask.requires_grad:
        # A mask that needs a gradient (Swin's relative position bias in training): SDPA has no
        # CPU fused kernel for it and would take its math kernel, which also scans every row for
        # full masking (``_safe_softmax``).  Written out (as mmdet's ``WindowMSA``), the softmax
        # is materialised once and serves the labels too.
        return explicit_attention_with_labels(q, k, v, labels, attn_mask, None, scale)
    if labels is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                              scale=scale), None
    num_heads, head_dim = q.shape[1], v.shape[-1]
    n_lab = labels.shape[-1]
    if cpu32:
        if _cpu_flash_applies(q, v, labels, attn_mask):
            return _CPUFlashAttentionWithLabels.apply(q, k, v, labels, attn_mask, scale)
        return split_attention_with_labels(q, k, v, labels, attn_mask, dropout_p, scale)
    if v.dtype == torch.float32 and dropout_p == 0.0:
        # One call: labels as extra value channels (padded so head dims stay multiples of 8).
        y = _label_heads(labels, num_heads, v.dtype, pad_to=8)
        out = F.scaled_dot_product_attention(q, k, torch.cat([v, y], dim=-1), attn_mask=attn_mask,
                                             scale=scale)
        labels_att = out[..., head_dim:head_dim + n_lab].detach().mean(dim=1)
        return out[..., :head_dim], labels_att
    # Dropout on the features, or low-precision features: a separate float32 call for labels.
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    with torch.no_grad():
        mask32 = attn_mask.float() if attn_mask is not None and attn_mask.is_floating_point() else attn_mask
        y = _label_heads(labels, num_heads, torch.float32, pad_to=8)
        with torch.autocast(device_type=q.device.type, enabled=False):
            lab = F.scaled_dot_product_attention(q.detach().float(), k.detach().float(), y,
                                                 attn_mask=mask32, scale=scale)
        labels_att = lab[..., :n_lab].mean(dim=1)
    return out, labels_att


def explicit_attention_with_labels(q: Tensor, k: Tensor, v: Tensor, labels: Optional[Tensor],
                                   attn_mask: Optional[Tensor] = None,
                                   attn_drop: Optional[torch.nn.Module] = None,
                                   scale: Optional[float] = None) -> tuple[Tensor, Optional[Tensor]]:
    """Reference-mode attention: materialise ``softmax(q k^T * scale + mask)`` per head.

    Same arguments and returns as :func:`fused_attention_with_labels`, except that dropout is
    given as a module (applied to the attention for the features only).  Memory is
    O(B * H * N^2) for the attention plus O(B * N * K) for the labels.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    attn = (q * scale) @ k.transpose(-2, -1)
    if attn_mask is not None:
        attn = attn + attn_mask
    attn = attn.softmax(dim=-1)
    labels_att = attention_label_step(attn, labels) if labels is not None else None
    if attn_drop is not None:
        attn = attn_drop(attn)
    return attn @ v, labels_att


def split_attention_with_labels(q: Tensor, k: Tensor, v: Tensor, labels: Optional[Tensor],
                                attn_mask: Optional[Tensor] = None, dropout_p: float = 0.0,
                                scale: Optional[float] = None) -> tuple[Tensor, Optional[Tensor]]:
    """Plain SDPA for the features plus a separate no-grad float32 label pass.

    Same arguments and returns as :func:`fused_attention_with_labels`.  The label pass
    computes ``softmax(q k^T * scale + mask)`` per head in float32 without autograd, averages
    it over heads and multiplies with the labels; peak extra memory is one (B, H, N, N) float32
    tensor, freed before the next block.
    """
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    if labels is None:
        return out, None
    with torch.no_grad():
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        with torch.autocast(device_type=q.device.type, enabled=False):
            logits = (q.detach().float() * scale) @ k.detach().float().transpose(-2, -1)
            if attn_mask is not None:
                logits = logits + attn_mask.float() if attn_mask.is_floating_point() else \
                    logits.masked_fill(~attn_mask, float('-inf'))
            labels_att = logits.softmax(dim=-1).mean(dim=1) @ labels.detach().float()
    return out, labels_att


def attention_with_labels(mode: str, q: Tensor, k: Tensor, v: Tensor, labels: Optional[Tensor],
                          attn_mask: Optional[Tensor] = None,
                          attn_drop: Optional[torch.nn.Module] = None,
                          scale: Optional[float] = None) -> tuple[Tensor, Optional[Tensor]]:
    """The attention step of a label-carrying block, in the given :data:`LABEL_MODES` mode.

    Args:
        mode: 'fused', 'split' or 'explicit' (see the module docstring).
        q, k, v: (B, H, N, D); labels: (B, N, K) or None; attn_mask: additive mask
            broadcastable to (B, H, N, N) or None.
        attn_drop: the block's attention-dropout module (active when it is in training mode;
            features only).
        scale: softmax scale, default ``D ** -0.5``.

    Returns:
        (out (B, H, N, D), labels_att (B, N, K) float32 detached, or None without labels).

    Raises:
        ValueError: an unknown mode.
    """
    if mode == 'explicit':
        return explicit_attention_with_labels(q, k, v, labels, attn_mask, attn_drop, scale)
    p = attn_drop.p if attn_drop is not None and attn_drop.training else 0.0
    if mode == 'split':
        return split_attention_with_labels(q, k, v, labels, attn_mask, p, scale)
    if mode == 'fused':
        return fused_attention_with_labels(q, k, v, labels, attn_mask, p, scale)
    raise ValueError(f'label_mode must be one of {LABEL_MODES}, got {mode!r}')
