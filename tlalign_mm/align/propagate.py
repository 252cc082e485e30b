"""The TL-Align attention step: carry token labels through one self-attention layer.

For a block with softmax attention ``A_h`` (B, N, N) per head ``h = 1..H`` the labels move as

    Y_att = mean_h(A_h) @ Y                         (TL-Align-S)
    Y    <- (Y + Y_att) / 2                          (residual average of the reference code)

with the attention the features use (relative position bias and shifted-window mask included),
taken before attention dropout, detached (``docs/advanced_guides/method.md``; reference: ``Attention`` and
``Block.forward`` in Euphoria16/TL-Align ``timm/models/vision_transformer.py``).

One knob, ``attn_impl`` (:data:`ATTN_IMPLS`), picks how a block computes its attention, with or
without labels (the features' kernel is what costs); each implementation returns the block's
attention output for the features and the aligned labels (float32, detached):

* ``'auto'`` (the default): :func:`resolve_attn_impl` decides on the host from the device, the
  dtype and the autocast state, never from tensor values (no device sync).  On a CPU under
  float16 / bfloat16 (autocast or low-precision q) whose matrix units run that dtype natively
  (AMX, or AVX512-BF16 for bfloat16) it takes ``'materialised'``: there PyTorch's CPU flash
  kernel is slower than a written-out softmax (DeiT-S: timm's ViT trains 1.3x slower with
  ``fused_attn=True`` than with ``False``).  Everywhere else (float32 on CPU, CPUs without such
  units, where low-precision matmuls are emulated, and any precision on GPU) it takes
  ``'fused'``.
* ``'fused'``: :func:`fused_attention_with_labels`.  Since ``mean_h(A_h) @ Y = mean_h(A_h @ Y)``
  and every head sees the same ``Y``, the labels ride as extra value channels of every head in
  the features' own attention call, at the features' precision: q and k are zero-padded (zero
  channels leave ``q k^T`` unchanged) and the labels appended to v, all three to one head size
  rounded up to a multiple of 8 so that the fused kernels stay eligible.  No per-head attention
  matrix is materialised, and under autocast there is still one attention call per block.

  - CPU: PyTorch's CPU flash-attention kernel (float32, bfloat16, float16) with a backward that
    runs the kernel's own backward on the unpadded q/k/v, the feature output and the
    log-sum-exp, so the features' gradient costs exactly what plain SDPA's does
    (:class:`_FlashAttentionWithLabelsCPU`).  These are private aten ops, used only where
    :func:`_flash_cpu_ops` finds them with the signature used here; otherwise the public call
    below;
  - CPU, mask with gradient (Swin's relative position bias in training): no CPU fused kernel
    gives a mask gradient (SDPA would take its math kernel, which also scans every row for full
    masking, ``_safe_softmax``), so the attention is written out as in ``'materialised'``;
  - other devices (CUDA), and CPUs without the private ops: one public
    ``F.scaled_dot_product_attention`` call on the padded tensors, differentiated by autograd
    (:func:`_padded_sdpa_with_labels`).  Its backward runs at the padded head size (64 -> 72 for
    DeiT, 32 -> 40 for Swin); ``tools/gpu_check.sh`` measures what that costs.

  Low-precision kernels round the attention weights and the outputs to float16 / bfloat16, so
  the label outputs are taken to float32 and renormalised to unit row mass (every TL-Align
  embedding has unit row mass); between blocks the labels stay float32 and the residual average
  is float32.  Attention dropout, and more than ``D / 8`` label channels (K = num_classes), take
  a second, no-grad float32 attention call for the labels.
* ``'materialised'``: :func:`materialised_attention_with_labels`, the reference code's way:
  ``softmax(q k^T * scale + mask)`` per head is written out once, in the features' precision,
  and that one softmax serves the features (``A @ V``) and the labels (its head mean, taken in
  float32 and renormalised when the softmax is float16 / bfloat16).
* ``'split'``: :func:`split_attention_with_labels`, the features take the plain SDPA call
  (exactly the baseline's kernel and autograd graph); the labels take a no-grad float32 pass
  that forms ``mean_h softmax(q k^T)`` and multiplies it with ``Y``.  Never chosen by
  ``'auto'``; kept for comparisons.

``label_dtype='float32'`` (:data:`LABEL_DTYPES`) keeps the whole label step in float32 under
autocast whatever the implementation: a second, no-grad float32 attention call on the detached
q/k per block, for exactness studies.
"""
from __future__ import annotations

import re
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['attention_with_labels', 'attention_label_step', 'residual_label_average', 'fused_attention_with_labels',
           'materialised_attention_with_labels', 'split_attention_with_labels', 'check_token_labels',
           'check_attn_options', 'resolve_attn_impl', 'ATTN_IMPLS', 'LABEL_DTYPES']

#: ``attn_impl`` values: ``'auto'`` resolves to ``'fused'`` or ``'materialised'`` per call
#: (:func:`resolve_attn_impl`); the others force that implementation.
ATTN_IMPLS = ('auto', 'fused', 'materialised', 'split')
#: ``'auto'``: the labels take the attention at the features' precision (float32, or float16 /
#: bfloat16 under autocast) and are renormalised in float32; ``'float32'``: the label step is
#: float32 throughout (under autocast a second float32 attention call per block).
LABEL_DTYPES = ('auto', 'float32')
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_attn_options(attn_impl: str, label_dtype: str) -> None:
    """Validate ``attn_impl`` / ``label_dtype`` of a label-carrying attention.

    Raises:
        ValueError: a value outside :data:`ATTN_IMPLS` / :data:`LABEL_DTYPES`, naming the option.
    """
    if attn_impl not in ATTN_IMPLS:
        raise ValueError(f'attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}')
    if label_dtype not in LABEL_DTYPES:
        raise ValueError(f'label_dtype must be one of {LABEL_DTYPES}, got {label_dtype!r}')


def _cpu_matrix_units() -> dict[torch.dtype, bool]:
    """Whether this CPU multiplies bfloat16 / float16 matrices in hardware (``torch.cpu`` probes).

    bfloat16: AMX tiles or AVX512-BF16; float16: AMX-FP16.  Without them oneDNN emulates the
    low-precision matmul and the materialised attention is the slower one.  A torch without the
    (private) probes reports False.
    """
    def probe(name: str) -> bool:
        fn = getattr(torch.cpu, name, None)
        return bool(fn()) if fn is not None else False

    return {torch.bfloat16: probe('_is_amx_tile_supported') or probe('_is_avx512_bf16_supported'),
            torch.float16: probe('_is_amx_fp16_supported')}


#: :func:`_cpu_matrix_units` of this machine, probed once at import
_CPU_MATRIX_UNITS = _cpu_matrix_units()


def _kernel_dtype(q: Tensor) -> torch.dtype:
    """The dtype the attention kernels run in: q's, or autocast's when autocast is on for q's device."""
    if q.dtype in _LOW_PRECISION:
        return q.dtype
    dev = q.device.type
    if torch.is_autocast_enabled(dev) and torch.get_autocast_dtype(dev) in _LOW_PRECISION:
        return torch.get_autocast_dtype(dev)
    return q.dtype


def resolve_attn_impl(attn_impl: str, q: Tensor) -> str:
    """The implementation an attention call with queries ``q`` takes: 'fused', 'materialised' or 'split'.

    ``'auto'`` gives ``'materialised'`` on a CPU whose matrix units run the kernel dtype (q's
    dtype, or the autocast dtype when autocast is on; see :func:`_cpu_matrix_units`) when that
    dtype is float16 / bfloat16, and ``'fused'`` otherwise; any other value is returned as it
    is.  Reads only q's device and dtype and the autocast state (no device sync; a constant for
    ``torch.compile``).

    Raises:
        ValueError: ``attn_impl`` not in :data:`ATTN_IMPLS`.
    """
    if attn_impl not in ATTN_IMPLS:
        raise ValueError(f'attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}')
    if attn_impl != 'auto':
        return attn_impl
    if q.device.type == 'cpu':
        dtype = _kernel_dtype(q)
        if dtype in _LOW_PRECISION and _CPU_MATRIX_UNITS[dtype]:
            return 'materialised'
    return 'fused'


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
            bfloat16 attention (autocast) is averaged over heads in float32 and its rows are
            renormalised to 1.
        labels: (B, M, K) label embedding of the keys.

    Returns:
        (B, N, K) float32, no gradient (autocast is off for the product).
    """
    with torch.no_grad(), torch.autocast(device_type=attn.device.type, enabled=False):
        a = attn.detach().mean(dim=1, dtype=torch.float32)
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


#: the first torch release whose ``_scaled_dot_product_flash_attention_for_cpu`` takes ``attn_mask``
#: (pytorch#115913; the op itself split off the CUDA one in 2.2, pytorch#110546)
_FLASH_CPU_MIN_TORCH = (2, 3)
#: the arguments :class:`_FlashAttentionWithLabelsCPU` passes, as the ops' schemas name them (torch 2.3-2.14)
_FLASH_CPU_ARGS = ('query', 'key', 'value', 'dropout_p', 'is_causal', 'attn_mask', 'scale')
_FLASH_CPU_BACKWARD_ARGS = ('grad_out', 'query', 'key', 'value', 'out', 'logsumexp', 'dropout_p', 'is_causal',
                            'attn_mask', 'scale')


def _flash_cpu_ops(version: str = torch.__version__, aten=torch.ops.aten):
    """The private CPU flash-attention ops ``(forward, backward)``, or ``(None, None)``.

    They are used only on torch >= :data:`_FLASH_CPU_MIN_TORCH` and only when both exist with
    the argument names and order of :data:`_FLASH_CPU_ARGS` / :data:`_FLASH_CPU_BACKWARD_ARGS`
    (private ops may change without notice); otherwise the fused mode takes the public
    ``F.scaled_dot_product_attention`` (:func:`_padded_sdpa_with_labels`).

    Args:
        version: a torch version string (``torch.__version__``).
        aten: the op namespace to look the ops up in (``torch.ops.aten``).
    """
    m = re.match(r'(\d+)\.(\d+)', str(version))
    if m is None or (int(m.group(1)), int(m.group(2))) < _FLASH_CPU_MIN_TORCH:
        return None, None
    ops = []
    for name, args in (('_scaled_dot_product_flash_attention_for_cpu', _FLASH_CPU_ARGS),
                       ('_scaled_dot_product_flash_attention_for_cpu_backward', _FLASH_CPU_BACKWARD_ARGS)):
        try:
            op = getattr(aten, name)
            schema_args = tuple(a.name for a in op.default._schema.arguments)
        except (AttributeError, RuntimeError):
            return None, None
        if schema_args != args:
            return None, None
        ops.append(op)
    return tuple(ops)


_FLASH_CPU, _FLASH_CPU_BACKWARD = _flash_cpu_ops()


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
    """Scaled dot-product attention that also aligns a label embedding, in one fused call
    (``attn_impl='fused'``).

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
        # A mask that needs a gradient (Swin's relative position bias in training): no CPU fused
        # kernel gives one, and SDPA's math kernel would also scan every row for full masking
        # (``_safe_softmax``).  Written out (as mmdet's ``WindowMSA``), the softmax is
        # materialised once and serves the labels too.
        return materialised_attention_with_labels(q, k, v, labels, attn_mask, None, scale, label_dtype)
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


def materialised_attention_with_labels(q: Tensor, k: Tensor, v: Tensor, labels: Optional[Tensor],
                                       attn_mask: Optional[Tensor] = None,
                                       attn_drop: Optional[torch.nn.Module] = None,
                                       scale: Optional[float] = None,
                                       label_dtype: str = 'auto') -> tuple[Tensor, Optional[Tensor]]:
    """Attention written out, the reference code's way (``attn_impl='materialised'``).

    ``A = softmax(q k^T * scale + mask)`` (B, H, N, N) is formed once in the features'
    precision (float16 / bfloat16 under autocast, as timm's ``fused_attn=False``); the
    features take ``dropout(A) @ v`` and the labels :func:`attention_label_step` of the same
    ``A`` (before dropout).  With ``label_dtype='float32'`` and a low-precision ``A`` the labels
    instead take a no-grad float32 attention call on the detached q, k.

    Same arguments and returns as :func:`fused_attention_with_labels`, except that dropout is
    given as a module (applied to the attention for the features only, when it is in training
    mode).  Memory is O(B * H * N^2) for the attention plus O(B * N * K) for the labels.

    Raises:
        ValueError: an unknown ``label_dtype``.
    """
    if label_dtype not in LABEL_DTYPES:
        raise ValueError(f'label_dtype must be one of {LABEL_DTYPES}, got {label_dtype!r}')
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    attn = (q * scale) @ k.transpose(-2, -1)
    if attn_mask is not None:
        attn = attn + attn_mask
    attn = attn.softmax(dim=-1)
    labels_att = None
    if labels is not None:
        if label_dtype == 'float32' and attn.dtype != torch.float32:
            labels_att = _float32_label_pass(q, k, labels, attn_mask, scale)
        else:
            labels_att = attention_label_step(attn, labels)
    if attn_drop is not None:
        attn = attn_drop(attn)
    return attn @ v, labels_att


def split_attention_with_labels(q: Tensor, k: Tensor, v: Tensor, labels: Optional[Tensor],
                                attn_mask: Optional[Tensor] = None, dropout_p: float = 0.0,
                                scale: Optional[float] = None) -> tuple[Tensor, Optional[Tensor]]:
    """Plain SDPA for the features plus a separate no-grad float32 label pass (``attn_impl='split'``).

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


def attention_with_labels(attn_impl: str, q: Tensor, k: Tensor, v: Tensor, labels: Optional[Tensor],
                          attn_mask: Optional[Tensor] = None,
                          attn_drop: Optional[torch.nn.Module] = None,
                          scale: Optional[float] = None,
                          label_dtype: str = 'auto') -> tuple[Tensor, Optional[Tensor]]:
    """The attention step of a label-carrying block (labels or not), in the implementation
    ``attn_impl`` resolves to (:func:`resolve_attn_impl`).

    Args:
        attn_impl: an :data:`ATTN_IMPLS` entry: 'auto', 'fused', 'materialised' or 'split'
            (see the module docstring).
        q, k, v: (B, H, N, D); labels: (B, N, K) or None; attn_mask: additive mask
            broadcastable to (B, H, N, N) or None.
        attn_drop: the block's attention-dropout module (active when it is in training mode;
            features only).
        scale: softmax scale, default ``D ** -0.5``.
        label_dtype: :data:`LABEL_DTYPES` entry (the split implementation is float32 always).

    Returns:
        (out (B, H, N, D), labels_att (B, N, K) float32 detached, or None without labels).

    Raises:
        ValueError: an unknown attn_impl or label_dtype.
    """
    check_attn_options(attn_impl, label_dtype)
    impl = resolve_attn_impl(attn_impl, q)
    if impl == 'materialised':
        return materialised_attention_with_labels(q, k, v, labels, attn_mask, attn_drop, scale, label_dtype)
    p = attn_drop.p if attn_drop is not None and attn_drop.training else 0.0
    if impl == 'split':
        return split_attention_with_labels(q, k, v, labels, attn_mask, p, scale)
    return fused_attention_with_labels(q, k, v, labels, attn_mask, p, scale, label_dtype)
