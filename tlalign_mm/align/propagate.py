"""The TL-Align attention step: carry token labels through one self-attention layer.

For a block with softmax attention ``A_h`` (B, N, N) per head ``h = 1..H`` the labels move as

    Y_att = mean_h(A_h) @ Y                         (TL-Align-S)
    Y    <- (Y + Y_att) / 2                          (residual average of the reference code)

with the attention the features use (relative position bias and shifted-window mask included),
taken before attention dropout, detached (``docs/tl-align.md``; reference: ``Attention`` and
``Block.forward`` in Euphoria16/TL-Align ``timm/models/vision_transformer.py``).

Three implementations of the attention step live here, each returning the block's attention
output for the features and the aligned labels (float32, detached):

* :func:`fused_attention_with_labels` (``label_mode='fused'``, the default).  Since
  ``mean_h(A_h) @ Y = mean_h(A_h @ Y)`` and every head sees the same ``Y``, the labels ride as
  extra value channels of every head in the features' own attention call, at the features'
  precision: q and k are zero-padded (zero channels leave ``q k^T`` unchanged) and the labels
  appended to v, all three to one head size rounded up to a multiple of 8 so that the fused
  kernels stay eligible.  No per-head attention matrix is materialised, and under autocast
  (float16 / bfloat16) there is still one attention call per block.

  - CPU: PyTorch's CPU flash-attention kernel (float32, bfloat16, float16) with a backward that
    runs the kernel's own backward on the unpadded q/k/v, the feature output and the
    log-sum-exp, so the features' gradient costs exactly what plain SDPA's does
    (:class:`_FlashAttentionWithLabelsCPU`);
  - CPU, mask with gradient (Swin's relative position bias in training): SDPA has no CPU fused
    kernel for it and would take its math kernel, so the attention is written out once for the
    features (labels or not) and the labels are read off the same softmax
    (:func:`explicit_attention_with_labels`);
  - other devices (CUDA): one ``F.scaled_dot_product_attention`` call on the padded tensors,
    differentiated by autograd.  Its backward runs at the padded head size (64 -> 72 for DeiT,
    32 -> 40 for Swin); ``tools/gpu_check.sh`` measures what that costs.

  Low-precision kernels round the attention weights and the outputs to float16 / bfloat16, so
  the label outputs are taken to float32 and renormalised to unit row mass (every TL-Align
  embedding has unit row mass); between blocks the labels stay float32 and the residual average
  is float32.  ``label_dtype='float32'`` keeps the whole label step in float32 instead (a second,
  no-grad float32 attention call on the detached q/k under autocast), for exactness studies.
  Attention dropout, and more than ``D / 8`` label channels (K = num_classes), take that second
  call as well.
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
           'check_label_options', 'LABEL_MODES', 'LABEL_DTYPES']

LABEL_MODES = ('fused', 'split', 'explicit')
#: ``'auto'``: in the fused mode the labels ride at the features' precision (float32, or
#: float16 / bfloat16 under autocast) and are renormalised in float32; ``'float32'``: the label
#: step is float32 throughout.  The split and explicit modes are float32 either way.
LABEL_DTYPES = ('auto', 'float32')


def check_label_options(label_mode: str, label_dtype: str) -> None:
    """Validate ``label_mode`` / ``label_dtype`` of a label-carrying block.

    Raises:
        ValueError: a value outside :data:`LABEL_MODES` / :data:`LABEL_DTYPES`, naming the option.
    """
    if label_mode not in LABEL_MODES:
        raise ValueError(f'label_mode must be one of {LABEL_MODES}, got {label_mode!r}')
    if label_dtype not in LABEL_DTYPES:
        raise ValueError(f'label_dtype must be one of {LABEL_DTYPES}, got {label_dtype!r}')


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
        attn: (B, H, N, M) softmax attention (rows sum to 1), before dropout; a float16 /
            bfloat16 attention (autocast) has its head-mean rows renormalised to 1 in float32.
        labels: (B, M, K) label embedding of the keys.

    Returns:
        (B, N, K) float32, no gradient.
    """
    with torch.no_grad():
        a = attn.detach().float().mean(dim=1)
        if attn.dtype != torch.float32:
            a = a / a.sum(dim=-1, keepdim=True)
        return a @ labels.detach().float()


def residual_label_average(labels: Tensor, labels_att: Tensor) -> Tensor:
    """Residual rule of the reference code: ``(Y + Y_att) / 2`` (row sums are preserved)."""
    return (labels + labels_att) * 0.5


def _label_heads(labels: Tensor, num_heads: int, dtype: torch.dtype, channels: int) -> Tensor:
    """(B, N, K) -> (B, H, N, channels) value channels: the labels, then zeros (channels >= K)."""
    y = labels.detach().to(dtype)
    if channels > y.shape[-1]:
        y = F.pad(y, (0, channels - y.shape[-1]))
    return y.unsqueeze(1).expand(-1, num_heads, -1, -1)


def _padded_head_dim(head_dim: int, n_lab: int) -> int:
    """Head size that holds the features' D channels and K label channels: D + K rounded up to 8."""
    return -(-(head_dim + n_lab) // 8) * 8


def _label_output(out_lab: Tensor, renormalise: bool) -> Tensor:
    """(B, H, N, K) label channels of an attention output -> (B, N, K) float32 head mean.

    Low-precision kernels round the attention weights and the output, so their rows are put
    back to unit mass (the mass every TL-Align label row has).
    """
    lab = out_lab.detach().float().mean(dim=1)
    if renormalise:
        lab = lab / lab.sum(dim=-1, keepdim=True)
    return lab


_FLASH_CPU = getattr(torch.ops.aten, '_scaled_dot_product_flash_attention_for_cpu', None)
_FLASH_CPU_BACKWARD = getattr(torch.ops.aten, '_scaled_dot_product_flash_attention_for_cpu_backward', None)


class _FlashAttentionWithLabelsCPU(torch.autograd.Function):
    """CPU flash attention for the features with the labels as extra value channels.

    Forward: q, k (B, H, N, D) are zero-padded to D' = ``_padded_head_dim(D, K)`` channels and
    v gets the labels (B, N, K) and zeros appended, so one
    ``_scaled_dot_product_flash_attention_for_cpu`` call returns ``A_h @ [V_h | Y | 0]`` and the
    log-sum-exp of every softmax row, in q's dtype (float32, bfloat16 or float16).  Backward:
    the same kernel's backward on the unpadded q, k, v with the feature part of the output and
    the log-sum-exp (which the zero channels leave unchanged), i.e. exactly plain SDPA's
    backward.  The label output is detached (no gradient reaches the labels or through them).
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, labels: Tensor, attn_mask: Optional[Tensor],
                scale: float) -> tuple[Tensor, Tensor]:
        d, n_lab = v.shape[-1], labels.shape[-1]
        extra = _padded_head_dim(d, n_lab) - d
        y = _label_heads(labels, q.shape[1], v.dtype, extra)
        out, lse = _FLASH_CPU(F.pad(q, (0, extra)), F.pad(k, (0, extra)), torch.cat([v, y], dim=-1),
                              attn_mask=attn_mask, scale=scale)
        # The kernel writes (B, N, H, D') memory; keep that layout so that the caller's
        # ``transpose(1, 2).reshape`` stays a view, as after plain SDPA.
        feat = out[..., :d].transpose(1, 2).contiguous().transpose(1, 2)
        labels_att = _label_output(out[..., d:d + n_lab], renormalise=out.dtype != torch.float32)
        ctx.scale = scale
        ctx.save_for_backward(q, k, v, feat, lse, attn_mask)
        ctx.mark_non_differentiable(labels_att)
        return feat, labels_att

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor, _grad_labels: Optional[Tensor]):
        q, k, v, feat, lse, attn_mask = ctx.saved_tensors
        gq, gk, gv = _FLASH_CPU_BACKWARD(grad_out, q, k, v, feat, lse, 0.0, False,
                                         attn_mask=attn_mask, scale=ctx.scale)
        return gq, gk, gv, None, None, None


def _padded_sdpa_with_labels(q: Tensor, k: Tensor, v: Tensor, labels: Tensor, attn_mask: Optional[Tensor],
                             scale: float) -> tuple[Tensor, Tensor]:
    """One public SDPA call on padded q/k/v (any device); autograd differentiates the features."""
    d, n_lab = v.shape[-1], labels.shape[-1]
    extra = _padded_head_dim(d, n_lab) - d
    y = _label_heads(labels, q.shape[1], v.dtype, extra)
    out = F.scaled_dot_product_attention(F.pad(q, (0, extra)), F.pad(k, (0, extra)), torch.cat([v, y], dim=-1),
                                         attn_mask=attn_mask, scale=scale)
    return out[..., :d], _label_output(out[..., d:d + n_lab], renormalise=out.dtype != torch.float32)


def _float32_label_pass(q: Tensor, k: Tensor, labels: Tensor, attn_mask: Optional[Tensor], scale: float) -> Tensor:
    """``mean_h(softmax(q k^T * scale + mask)) @ Y`` in float32 without autograd, one SDPA call."""
    n_lab = labels.shape[-1]
    with torch.no_grad(), torch.autocast(device_type=q.device.type, enabled=False):
        mask32 = attn_mask.float() if attn_mask is not None and attn_mask.is_floating_point() else attn_mask
        y = _label_heads(labels, q.shape[1], torch.float32, _padded_head_dim(0, n_lab))
        lab = F.scaled_dot_product_attention(q.detach().float(), k.detach().float(), y, attn_mask=mask32,
                                             scale=scale)
    return _label_output(lab[..., :n_lab], renormalise=False)


def fused_attention_with_labels(q: Tensor, k: Tensor, v: Tensor, labels: Optional[Tensor],
                                attn_mask: Optional[Tensor] = None, dropout_p: float = 0.0,
                                scale: Optional[float] = None,
                                label_dtype: str = 'auto') -> tuple[Tensor, Optional[Tensor]]:
    """Scaled dot-product attention that also aligns a label embedding, in one fused call.

    Args:
        q, k, v: (B, H, N, D) queries, keys, values (as ``F.scaled_dot_product_attention``);
            float32, or float16 / bfloat16 (autocast).
        labels: (B, N, K) label embedding of the tokens with unit row mass, or None (plain
            attention).
        attn_mask: additive float mask broadcastable to (B, H, N, N) (relative position bias,
            shifted-window mask), or None.
        dropout_p: attention dropout probability (features only; labels see the attention
            before dropout, as in the reference code).
        scale: softmax scale, default ``D ** -0.5``.
        label_dtype: 'auto' (labels at the features' precision inside their call, renormalised
            in float32) or 'float32' (a separate float32 label pass when the features are not
            float32); see :data:`LABEL_DTYPES`.

    Returns:
        ``(out, labels_att)``: out (B, H, N, D) as SDPA returns it, in q's dtype; labels_att
        (B, N, K) float32 detached ``mean_h(A_h) @ Y`` (None when ``labels`` is None).

    Raises:
        ValueError: an unknown ``label_dtype``.
    """
    if label_dtype not in LABEL_DTYPES:
        raise ValueError(f'label_dtype must be one of {LABEL_DTYPES}, got {label_dtype!r}')
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if q.device.type == 'cpu' and dropout_p == 0.0 and attn_mask is not None and attn_mask.requires_grad:
        # A mask that needs a gradient (Swin's relative position bias in training): SDPA has no
        # CPU fused kernel for it and would take its math kernel, which also scans every row for
        # full masking (``_safe_softmax``).  Written out (as mmdet's ``WindowMSA``), the softmax
        # is materialised once and serves the labels too.
        return explicit_attention_with_labels(q, k, v, labels, attn_mask, None, scale)
    if labels is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale), None
    low_precision = q.dtype != torch.float32
    if (dropout_p > 0.0 or labels.shape[-1] * 8 > q.shape[-1]
            or (label_dtype == 'float32' and low_precision)):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
        return out, _float32_label_pass(q, k, labels, attn_mask, scale)
    if q.device.type == 'cpu' and _FLASH_CPU is not None and q.shape[-1] == v.shape[-1]:
        return _FlashAttentionWithLabelsCPU.apply(q, k, v, labels, attn_mask, scale)
    return _padded_sdpa_with_labels(q, k, v, labels, attn_mask, scale)


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
                          scale: Optional[float] = None,
                          label_dtype: str = 'auto') -> tuple[Tensor, Optional[Tensor]]:
    """The attention step of a label-carrying block, in the given :data:`LABEL_MODES` mode.

    Args:
        mode: 'fused', 'split' or 'explicit' (see the module docstring).
        q, k, v: (B, H, N, D); labels: (B, N, K) or None; attn_mask: additive mask
            broadcastable to (B, H, N, N) or None.
        attn_drop: the block's attention-dropout module (active when it is in training mode;
            features only).
        scale: softmax scale, default ``D ** -0.5``.
        label_dtype: :data:`LABEL_DTYPES` entry; used by the fused mode (the others are float32).

    Returns:
        (out (B, H, N, D), labels_att (B, N, K) float32 detached, or None without labels).

    Raises:
        ValueError: an unknown mode or label_dtype.
    """
    check_label_options(mode, label_dtype)
    if mode == 'explicit':
        return explicit_attention_with_labels(q, k, v, labels, attn_mask, attn_drop, scale)
    p = attn_drop.p if attn_drop is not None and attn_drop.training else 0.0
    if mode == 'split':
        return split_attention_with_labels(q, k, v, labels, attn_mask, p, scale)
    return fused_attention_with_labels(q, k, v, labels, attn_mask, p, scale, label_dtype)
