"""Pyramid Vision Transformer (PVT v1 and v2) backbone that carries TL-Align label embeddings.

Modules follow the official release (Wang et al., ICCV 2021 and CVMJ 2022; github whai362/PVT,
``classification/pvt.py`` and ``pvt_v2.py``), grouped per stage as timm's ``pvt_v2.py`` groups
them: ``stages.{i}`` (:class:`TLAPVTStage`, i = 0..3) holds ``patch_embed.{proj,norm}``,
``pos_embed`` (v1), ``blocks.{j}.{norm1,attn.{q,kv,proj,sr,norm},norm2,mlp.{fc1,dwconv.dwconv,fc2}}``
and ``norm`` (v2); v1 adds ``cls_token`` and a final ``norm``.  The release's flat names
(``patch_embed{i+1}``, ``pos_embed{i+1}``, ``block{i+1}.{j}``, ``norm{i+1}``; ours too before the
stages) load unchanged (:func:`stage_key`; the ``head`` goes to the classifier,
:func:`tlalign_mm.checkpoint.layouts.load_head_state`); mmdet's ``PyramidVisionTransformer(V2)`` and
timm's ``pvt_v2_b*`` layouts are converted on load (``tlalign_mm/checkpoint/pvt.py``); without labels
the features equal mmdet's.

Labels (``tlalign_mm/align/reduction.py``): each block aligns them with its spatial-reduction
attention, whose keys carry the mean label of the ``sr x sr`` tokens they reduce; each stage's
patch embedding pools them over its kernel window, counting real (not zero-padded) positions only
(:func:`~tlalign_mm.align.pool_token_labels`; a mean per patch for v1).  The first stage applies
the same rule to the pixels: :meth:`TLAPyramidVisionTransformer.token_share` pools the pixel-level
mixing mask over the first patch embedding's window (v2: 7x7, stride 4, padding 3), and the
classifier builds the first-stage labels from it (``share_from_mask``).  The depth-wise convolution of v2's
feed-forward layer mixes neighbouring tokens too; like every feed-forward layer it is left out of
the label path (TL-Align traces attention).  The label path needs every stage map to be divisible
by its reduction ratio (224 px inputs are); the features alone follow mmdet at any size.

Readout: v1 as released (``classification/pvt.py``) prepends a learned class token to the stage-4
tokens (``cls_token``, with its own row 0 in stage 4's ``pos_embed``), runs stage 4 with it and
classifies from it after the final ``norm``: ``out_type='cls_token'`` builds that model.  Its label row
enters at stage 4 as row 0 of the labels, with the value the caller gave as the prefix row of
``token_labels`` (the classifier: ``[lam, 1 - lam]``, DeiT's class-token convention).  Dense use
(``'featmap'``) has no class token, as mmdet's ``PyramidVisionTransformer``; ``'avg_featmap'``
(v1: a token-mean variant of ours) neither.  v2 (``pvt_v2.py``) reads the token mean.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import Tensor

from ...align import (
    attention_with_labels,
    check_token_labels,
    pool_token_labels,
    reduce_token_labels,
    residual_label_average,
)
from ...registry import MODELS
from .base import FeatureInfo, TLABackbone, TLALabelAttention

__all__ = ['TLASpatialReductionAttention', 'TLAPVTBlock', 'TLAPVTStage', 'TLAPyramidVisionTransformer']


class TLASpatialReductionAttention(TLALabelAttention):
    """Spatial-reduction attention (keys ``q``, ``kv``, ``proj``, ``sr``, ``norm`` as the release).

    Queries come from every token; keys and values from the token map reduced by an
    ``sr_ratio`` strided convolution and a LayerNorm.  Labels: the keys carry the mean label of
    the tokens they reduce (:func:`~tlalign_mm.align.reduce_token_labels`).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, sr_ratio: int = 1, attn_impl: str = 'auto',
                 label_dtype: str = 'auto'):
        super().__init__(dim, num_heads, attn_impl, label_dtype)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.add_output_projection(dim, attn_drop, proj_drop)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)         # eps 1e-5 as the release (mmdet: 1e-6)

    def forward(self, x: Tensor, hw: tuple[int, int], labels: Optional[Tensor] = None,
                stage: int = 0) -> tuple[Tensor, Optional[Tensor]]:
        """x: (B, N, C) with N = H*W; labels: (B, N, K) or None.

        Returns (out (B, N, C), labels_att (B, N, K) float32 or None)."""
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        lab_kv = None
        if self.sr_ratio > 1:
            if labels is not None:
                lab_kv = reduce_token_labels(labels, hw, self.sr_ratio, stage)
            xr = self.sr(x.transpose(1, 2).reshape(b, c, *hw)).flatten(2).transpose(1, 2)
            xr = self.norm(xr)
        else:
            xr, lab_kv = x, labels
        k, v = self.kv(xr).reshape(b, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out, lab = attention_with_labels(self.attn_impl, q, k, v, lab_kv, None, self.attn_drop, self.scale,
                                         self.label_dtype)
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out)), lab


class _DWConv(nn.Module):
    """PVTv2's 3x3 depth-wise convolution inside the feed-forward layer (key ``dwconv.dwconv``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        b, n, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(b, c, *hw)).flatten(2).transpose(1, 2)


class _Mlp(nn.Module):
    """fc1 (-> depth-wise conv, v2) -> GELU -> fc2, with dropout (keys as the release)."""

    def __init__(self, dim: int, hidden: int, drop: float, use_conv: bool):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = _DWConv(hidden) if use_conv else None
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        x = self.fc1(x)
        if self.dwconv is not None:
            x = self.dwconv(x, hw)
        return self.drop(self.fc2(self.drop(self.act(x))))


class TLAPVTBlock(nn.Module):
    """Pre-norm PVT block: ``x + DropPath(SRA(LN(x)))``, then ``x + DropPath(MLP(LN(x)))``.

    Labels: ``(Y + mean_h(A_h) @ Y_reduced) / 2`` (or ``A Y_reduced`` without the residual rule).
    """

    #: TL-Align ablations (set through :meth:`TLABackbone.set_alignment`)
    align_labels = True
    label_residual = True

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop: float,
                 attn_drop: float, drop_path: float, sr_ratio: int, use_conv_ffn: bool,
                 attn_impl: str, label_dtype: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = TLASpatialReductionAttention(dim, num_heads, qkv_bias, attn_drop, drop, sr_ratio,
                                                 attn_impl, label_dtype)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio), drop, use_conv_ffn)

    def forward(self, x: Tensor, hw: tuple[int, int], labels: Optional[Tensor] = None, stage: int = 0):
        align = labels is not None and self.align_labels
        h, lab = self.attn(self.norm1(x), hw, labels if align else None, stage)
        x = x + self.drop_path(h)
        x = x + self.drop_path(self.mlp(self.norm2(x), hw))
        if align:
            labels = residual_label_average(labels, lab) if self.label_residual else lab
        return x, labels


class _PatchEmbed(nn.Module):
    """Strided convolution + LayerNorm (keys ``proj``, ``norm``); v2's overlaps (padding k // 2)."""

    def __init__(self, in_channels: int, dim: int, kernel: int, stride: int, padding: int):
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.proj = nn.Conv2d(in_channels, dim, kernel, stride, padding)
        self.norm = nn.LayerNorm(dim)             # eps 1e-5 as the release (mmdet: 1e-6)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.proj(x)
        hw = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), hw


class TLAPVTStage(nn.Module):
    """One PVT stage, the release's ``patch_embed{i}``, ``pos_embed{i}``, ``pos_drop{i}``,
    ``block{i}`` and ``norm{i}`` held together (as timm's ``PyramidVisionTransformerStage``).

    Keys: ``patch_embed.{proj,norm}``; ``pos_embed`` (v1 only; None for v2); ``blocks.{j}`` (a
    ModuleList of :class:`TLAPVTBlock`); ``norm`` (v2 only, the stage's output norm; None for v1).
    The backbone runs the parts itself (the labels are pooled between the patch embedding and the
    blocks, v1's class token joins before the position embedding is added).

    Args:
        in_channels, dim: the patch embedding's input and output channels.
        depth, num_heads, mlp_ratio, sr_ratio, qkv_bias: the blocks'.
        kernel, stride: the patch embedding's (v2 pads ``kernel // 2``, v1 not at all).
        pos_rows: rows of v1's position embedding (the stage's grid, plus the class token's row in
            the last stage); ignored for v2.
        drop, attn_drop: dropout rates; drop_path: one rate per block.
        version: 1 or 2 (v2: overlapping patch embedding, depth-wise conv in the feed-forward layer,
            an output norm, no position embedding).
        attn_impl, label_dtype: as :class:`TLASpatialReductionAttention`.
    """

    def __init__(self, in_channels: int, dim: int, depth: int, num_heads: int, mlp_ratio: float, sr_ratio: int,
                 qkv_bias: bool, kernel: int, stride: int, pos_rows: int, drop: float, attn_drop: float,
                 drop_path: Sequence[float], version: int, attn_impl: str, label_dtype: str):
        super().__init__()
        v2 = version == 2
        # built in the release's order (patch embedding, position embedding, blocks, norm): the
        # random draws of the default initialisation follow it
        self.patch_embed = _PatchEmbed(in_channels, dim, kernel, stride, kernel // 2 if v2 else 0)
        if v2:
            self.register_parameter('pos_embed', None)
            self.pos_drop = None
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, pos_rows, dim))
            self.pos_drop = nn.Dropout(drop)
        self.blocks = nn.ModuleList([
            TLAPVTBlock(dim, num_heads, mlp_ratio, qkv_bias, drop, attn_drop, drop_path[j], sr_ratio, v2,
                        attn_impl, label_dtype) for j in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6) if v2 else None


@MODELS.register_module()
class TLAPyramidVisionTransformer(TLABackbone):
    """PVT v1 / v2 backbone with TL-Align label propagation through spatial-reduction attention.

    Args:
        arch: 'tiny' | 'small' | 'medium' | 'large' (v1) or 'v2-b0' | 'v2-b1' | 'v2-b2' |
            'v2-b3' (v2), or a dict with ``embed_dims`` (4), ``depths`` (4), ``num_heads`` (4),
            ``mlp_ratios`` (4), ``sr_ratios`` (4) and ``version`` (1 or 2).
        img_size: pretraining resolution (int or (H, W)); v1 stores its position embeddings
            for it and resizes them (bilinear, as mmdet and the release) for other inputs.
        in_channels: input channels.
        out_indices: stages whose outputs are returned, in stage order, each once ('cls_token' / 'raw':
            the last stage only).
        out_type: 'featmap' (B, C_i, H_i, W_i) per stage (no class token: mmdet's dense
            ``PyramidVisionTransformer(V2)``); 'avg_featmap' (B, C_i): the token mean (after the
            final ``norm`` for v1, the stage's ``norm`` for v2; v2's classifier readout);
            'cls_token' (v1 only) (B, C_4): the release's classifier readout, the stage-4 class
            token after the final ``norm``; the model then has the parameter ``cls_token``
            (1, 1, C_4) and ``stages.3.pos_embed`` (1, 1 + H_4 W_4, C_4), class-token row first,
            as the release's ``pos_embed4`` (``classification/pvt.py``); 'raw' (v1 only, the same
            model): the normalised stage-4 tokens (B, 1 + H_4 W_4, C_4), class token first.
        qkv_bias, drop_rate, attn_drop_rate, drop_path_rate: as the release (stochastic depth
            linear over all blocks).
        frozen_stages: -1 freezes nothing; k >= 1 freezes the first k stages.
        attn_impl, label_dtype: as :class:`~tlalign_mm.TLAVisionTransformer`.

    Patch embeddings: v1 kernel = stride = 4, 2, 2, 2; v2 kernels 7, 3, 3, 3 with strides
    4, 2, 2, 2 and padding k // 2.  ``num_tokens`` / ``token_grid`` describe the first stage
    (``num_tokens`` counts the class token's row, ``num_prefix_tokens`` = 1 with a class token).
    ``share_from_mask`` (v2): the first-stage token shares are pooled from the pixel mask over
    the 7x7 window (:meth:`token_share`), not the mixer's 4x4 cells.

    Modules (state-dict keys): ``stages`` is a ModuleList of :class:`TLAPVTStage`, one per stage
    ``i`` = 0..3, each with ``patch_embed`` (``proj``, ``norm``), ``pos_embed`` and ``pos_drop``
    (v1 only), ``blocks`` (a ModuleList of :class:`TLAPVTBlock`) and ``norm`` (v2 only); v1 also
    has ``cls_token`` (class-token models only) and the final ``norm``.

    Checkpoints with the flat names, ours before the stages and the release's, load as they are:
    ``load_state_dict`` (strict too, under any prefix such as ``backbone.``), mmengine's
    ``load_checkpoint``, ``init_cfg=dict(type='Pretrained', ...)`` and the classifier's loader
    rename them on the way in (:meth:`rename_former_keys`, :func:`stage_key`):

    =========================  ============================
    flat (release, former)     ours
    =========================  ============================
    ``patch_embed{i+1}.*``     ``stages.{i}.patch_embed.*``
    ``pos_embed{i+1}``         ``stages.{i}.pos_embed``
    ``block{i+1}.{j}.*``       ``stages.{i}.blocks.{j}.*``
    ``norm{i+1}.*``            ``stages.{i}.norm.*``
    ``cls_token``, ``norm.*``  unchanged
    =========================  ============================

    Official releases (with ``head``) therefore load unchanged, as before; mmdet's and timm's
    layouts are converted by ``tlalign_mm/checkpoint/pvt.py``.

    Raises:
        ValueError: unknown arch, bad out_indices / out_type / label options; 'cls_token' /
            'raw' for v2, with out_indices other than the last stage, or with a stage-4
            reduction ratio other than 1 (the release's class token needs full attention);
            with labels, a stage map not divisible by its reduction ratio or patch stride
            (names the stage).
    """

    arch_zoo = {
        'tiny': dict(version=1, embed_dims=(64, 128, 320, 512), depths=(2, 2, 2, 2)),
        'small': dict(version=1, embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3)),
        'medium': dict(version=1, embed_dims=(64, 128, 320, 512), depths=(3, 4, 18, 3)),
        'large': dict(version=1, embed_dims=(64, 128, 320, 512), depths=(3, 8, 27, 3)),
        'v2-b0': dict(version=2, embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2)),
        'v2-b1': dict(version=2, embed_dims=(64, 128, 320, 512), depths=(2, 2, 2, 2)),
        'v2-b2': dict(version=2, embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3)),
        'v2-b3': dict(version=2, embed_dims=(64, 128, 320, 512), depths=(3, 4, 18, 3)),
    }
    arch_alias = {'pvt-tiny': 'tiny', 'pvt-small': 'small', 'pvt-medium': 'medium', 'pvt-large': 'large',
                  'b0': 'v2-b0', 'b1': 'v2-b1', 'b2': 'v2-b2', 'b3': 'v2-b3',
                  'pvt-v2-b0': 'v2-b0', 'pvt-v2-b1': 'v2-b1', 'pvt-v2-b2': 'v2-b2', 'pvt-v2-b3': 'v2-b3'}
    arch_keys = ('embed_dims', 'depths')
    OUT_TYPES = ('featmap', 'avg_featmap', 'cls_token', 'raw')
    #: the release's values of the arch keys a preset or a given dict may leave out
    DEFAULTS = dict(num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1), version=1)

    @classmethod
    def resolve_arch(cls, arch: str | dict) -> dict:
        """:meth:`TLABackbone.resolve_arch`, with :attr:`DEFAULTS` for the keys the arch leaves out."""
        return dict(cls.DEFAULTS, **super().resolve_arch(arch))

    def __init__(self, arch: str | dict = 'small', img_size: int | Sequence[int] = 224, in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3), out_type: str = 'featmap', qkv_bias: bool = True,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 frozen_stages: int = -1, norm_eval: bool = False, with_cp: bool = False,
                 attn_impl: str = 'auto', label_dtype: str = 'auto', init_cfg=None,
                 pretrained: Optional[str] = None):
        super().__init__(frozen_stages, norm_eval, with_cp, init_cfg, pretrained)
        arch = self.resolve_arch(arch)
        self.check_out_type(out_type)
        if arch['version'] not in (1, 2):
            raise ValueError(f"PVT arch version must be 1 or 2, got {arch['version']!r}")
        self.version = arch['version']
        dims, depths = tuple(arch['embed_dims']), tuple(arch['depths'])
        heads, mlp, sr = tuple(arch['num_heads']), tuple(arch['mlp_ratios']), tuple(arch['sr_ratios'])
        if not len(dims) == len(depths) == len(heads) == len(mlp) == len(sr) or not 1 <= len(dims) <= 4:
            raise ValueError(f'PVT arch: embed_dims, depths, num_heads, mlp_ratios and sr_ratios need one '
                             f'entry per stage, 1 to 4 stages (strides 4, 2, 2, 2), got {arch}')
        self.num_stages = len(dims)
        #: channels of each stage
        self.stage_channels = dims
        self.embed_dims = dims[-1]
        self.sr_ratios = sr
        self.depths = depths
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.out_type = out_type
        self.out_indices = self.resolve_out_indices(out_indices, self.num_stages, 'stages')
        v2 = self.version == 2
        with_cls = out_type in ('cls_token', 'raw')
        if with_cls:
            if v2:
                raise ValueError(f"PVT v2 has no class token (its head reads the token mean, pvt_v2.py): "
                                 f"use out_type='avg_featmap', not {out_type!r}")
            if self.out_indices != [self.num_stages - 1]:
                raise ValueError(f"out_type={out_type!r} reads the stage-{self.num_stages} class token: set "
                                 f"out_indices=({self.num_stages - 1},), got {tuple(out_indices)}")
            if sr[-1] != 1:
                raise ValueError(f'the class token attends with the stage-{self.num_stages} tokens, whose keys the '
                                 f'release does not reduce: sr_ratios[-1] must be 1 with out_type={out_type!r}, '
                                 f'got {sr[-1]}')
        self.num_prefix_tokens = int(with_cls)
        self.patch_size = 4                                   # the first stage's token stride
        #: v2: the first-stage shares come from the pixel mask (the 7x7 window), see token_share
        self.share_from_mask = v2
        kernels = (7, 3, 3, 3) if v2 else (4, 2, 2, 2)
        strides = (4, 2, 2, 2)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()  # host floats (meta ok)
        stages, cur, in_ch, stride = [], 0, in_channels, 1
        for i in range(self.num_stages):
            stride *= strides[i]
            grid = (self.img_size[0] // stride) * (self.img_size[1] // stride)
            stages.append(TLAPVTStage(
                in_ch, dims[i], depths[i], heads[i], mlp[i], sr[i], qkv_bias, kernels[i] if i < len(kernels) else 3,
                strides[i], grid + (self.num_prefix_tokens if i == self.num_stages - 1 else 0), drop_rate,
                attn_drop_rate, dpr[cur:cur + depths[i]], self.version, attn_impl, label_dtype))
            cur += depths[i]
            in_ch = dims[i]
        self.stages = nn.ModuleList(stages)
        if not v2:
            self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dims[-1])) if with_cls else None
        self.stage_grids = [(self.img_size[0] // (4 * 2 ** i), self.img_size[1] // (4 * 2 ** i))
                            for i in range(self.num_stages)]

    # -- init / freezing -------------------------------------------------------------------
    def _init_extra(self) -> None:
        for stage in self.stages:
            if stage.pos_embed is not None:
                trunc_normal_(stage.pos_embed, std=0.02)
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():               # the release's conv init (fan-out normal, bias 0)
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    m.bias.data.zero_()

    def _frozen_modules(self):
        mods = []
        for stage in self.stages[:max(self.frozen_stages, 0)]:      # not pos_drop: it stays in train mode
            mods += [m for m in (stage.patch_embed, stage.blocks, stage.pos_embed, stage.norm) if m is not None]
        if self.frozen_stages >= self.num_stages and self.cls_token is not None:
            mods.append(self.cls_token)
        return mods

    # -- the contract (TLABackbone) -------------------------------------------------------------
    @property
    def feature_info(self) -> list[FeatureInfo]:
        """Stage ``i`` has its channels at reduction ``4 * 2**i``."""
        return [FeatureInfo(self.stage_channels[i], 4 * 2 ** i, f'stages.{i}') for i in self.out_indices]

    def token_grid(self, img_hw: Sequence[int]) -> tuple[int, int]:
        """First-stage token grid for an (H, W) input: v1's 4x4 stride-4 patches floor(H / 4),
        floor(W / 4) (a remainder is dropped, as the release's convolution drops it); v2's 7x7
        stride-4 padding-3 windows floor((H - 1) / 4) + 1."""
        if self.version == 2:
            return (img_hw[0] - 1) // 4 + 1, (img_hw[1] - 1) // 4 + 1
        return img_hw[0] // 4, img_hw[1] // 4

    @classmethod
    def all_tokens_out_type(cls, out_type: str) -> str:
        """``'raw'`` for v1 with the release's class token (``out_type`` 'cls_token' / 'raw'), else
        ``'featmap'``."""
        return 'raw' if out_type in ('cls_token', 'raw') else 'featmap'

    def _stage_blocks(self) -> list:
        return [stage.blocks for stage in self.stages[:max(self.out_indices) + 1]]

    def token_share(self, mask: Tensor) -> Tensor:
        """Share of the partner image in each first-stage token, from the pixel-level mixing mask.

        The rule of the later patch embeddings applied to the pixels
        (:func:`~tlalign_mm.align.pool_token_labels`): each token takes the mean of ``mask`` over
        the real pixels under its ``patch_embed1`` kernel window (v2: 7x7, stride 4, padding 3,
        as ``OverlapPatchEmbed`` of whai362/PVT ``classification/pvt_v2.py``; v1: its 4x4
        patch, which is the mixer's own ``share_b``).

        Args:
            mask: (B, H, W) floating-point pixel share of image B in [0, 1]
                (:attr:`tlalign_mm.structures.MixResult.mask`).

        Returns:
            (B, N) float32, N = ``h * w`` of :meth:`token_grid`, row-major.

        Raises:
            ValueError: ``mask`` not a (B, H, W) floating-point tensor; v1 with H or W not a
                multiple of 4.
        """
        if not torch.is_tensor(mask) or mask.dim() != 3 or not mask.is_floating_point():
            got = f'shape {tuple(mask.shape)} dtype {mask.dtype}' if torch.is_tensor(mask) else type(mask).__name__
            raise ValueError(f'mask must be a (B, H, W) floating-point pixel share of image B, got {got}')
        pe = self.stages[0].patch_embed
        b, h, w = mask.shape
        share, _ = pool_token_labels(mask.reshape(b, h * w, 1), (h, w), pe.kernel, pe.stride, pe.padding,
                                     'stage 1 patch embedding')
        return share[..., 0]

    # -- forward ---------------------------------------------------------------------------
    def _pos_embed(self, i: int, hw: tuple[int, int]) -> Tensor:
        """Stage ``i``'s position embedding for an ``hw`` map; the grid rows resized bilinearly as
        the release's ``_get_pos_embed``, a class-token row (stage 4) kept first."""
        pos = self.stages[i].pos_embed
        if hw == self.stage_grids[i]:
            return pos
        gh, gw = self.stage_grids[i]
        p = pos.shape[1] - gh * gw
        grid = pos[:, p:].reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=hw, mode='bilinear').flatten(2).transpose(1, 2)
        return torch.cat([pos[:, :p], grid], dim=1) if p else grid

    def _format(self, x: Tensor, hw: tuple[int, int], i: int) -> Tensor:
        """Stage ``i``'s tokens (B, P + H_i W_i, C_i) -> the output of ``out_type``."""
        if self.version == 1 and i == self.num_stages - 1 and self.out_type != 'featmap':
            x = self.norm(x)                                   # the release's final norm
        if self.out_type == 'raw':
            return x
        if self.out_type == 'cls_token':
            return x[:, 0]
        patches = x[:, x.shape[1] - hw[0] * hw[1]:]           # the class token is never a map token
        if self.out_type == 'avg_featmap':
            return patches.mean(dim=1)
        return patches.transpose(1, 2).reshape(x.shape[0], -1, *hw).contiguous()

    def forward(self, x: Tensor, token_labels: Optional[Tensor] = None):
        """Run the backbone.

        Args:
            x: (B, C_in, H, W) images.
            token_labels: None, or (B, N, K) float initial labels, N = ``num_tokens((H, W))``:
                with a class token, its row first (held until it joins the tokens in stage 4),
                then the first-stage tokens row-major (:meth:`token_share` gives their
                share of image B from the pixel mask).

        Returns:
            ``outs`` (one entry per ``out_indices``, shapes per ``out_type``), or with
            ``token_labels`` ``(outs, labels)``, labels (B, P + N_s, K) float32 of the last
            returned stage's tokens (P = 1: row 0 is the class token's).

        Raises:
            TypeError: ``token_labels`` of a non-float dtype.
            ValueError: ``token_labels`` of the wrong shape; with labels, a stage map its patch
                stride or reduction ratio does not divide.
        """
        b = x.shape[0]
        labels, prefix_labels, prev_hw = None, None, None
        p = self.num_prefix_tokens
        outs = []
        for i, stage in enumerate(self.stages):
            pe = stage.patch_embed
            x, hw = pe(x)
            if i == 0 and token_labels is not None:
                check_token_labels(token_labels, b, p + x.shape[1])
                labels = token_labels.detach().float()
                prefix_labels, labels = labels[:, :p], labels[:, p:]
            elif labels is not None:
                labels, lhw = pool_token_labels(labels, prev_hw, pe.kernel, pe.stride, pe.padding,
                                                f'stage {i + 1} patch embedding')
                if lhw != hw:
                    raise ValueError(f'stage {i + 1}: labels pooled to {lhw}, tokens {hw}')
            if p and i == self.num_stages - 1:              # the release's stage-4 class token
                x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
                if labels is not None:
                    labels = torch.cat([prefix_labels, labels], dim=1)
            if self.version == 1:
                x = stage.pos_drop(x + self._pos_embed(i, hw))
            for blk in stage.blocks:
                x, labels = self.run_block(blk, x, hw, labels, i + 1)
            if self.version == 2:
                x = stage.norm(x)
            if i in self.out_indices:
                outs.append(self._format(x, hw, i))
            if i == max(self.out_indices):
                break
            x = x.transpose(1, 2).reshape(b, -1, *hw)
            prev_hw = hw
        outs = tuple(outs)
        return outs if token_labels is None else (outs, labels)

    # -- checkpoints -----------------------------------------------------------------------
    def rename_former_keys(self, state_dict: dict, prefix: str = '') -> None:
        """The flat names (ours before the stages, the release's) to ours: :func:`rename_flat_keys`."""
        rename_flat_keys(state_dict, prefix)

    def adapt_checkpoint(self, state_dict: dict, source: str = '<state_dict>') -> tuple[dict, list[str]]:
        """Fit a converted PVT state dict to this model's class token (the loader's model hook).

        * A model with the release's class token (``out_type='cls_token'`` / ``'raw'``) needs the
          checkpoint's ``cls_token`` and its row of the last stage's ``pos_embed`` (the release's
          ``pos_embed4``): a PVT v1 checkpoint without them (mmdet's layout, a dense or token-mean
          export) is refused.
        * A model without one (dense ``'featmap'``, ``'avg_featmap'``) drops ``cls_token`` and
          the class-token row 0 of that ``pos_embed``, as mmdet's ``pvt_convert`` does.

        Args:
            state_dict: keys in our names (after the checkpoint package's read filter); not modified.
            source: the checkpoint's name, for the error message.

        Returns:
            (state dict, dropped keys).

        Raises:
            ValueError: a class-token model and a PVT v1 checkpoint (one with a last-stage
                ``pos_embed``) without ``cls_token`` (the message names the missing key).
        """
        key = f'stages.{self.num_stages - 1}.pos_embed'
        pos = state_dict.get(key)
        if self.cls_token is not None:
            if pos is not None and 'cls_token' not in state_dict:
                raise ValueError(
                    f"{source}: missing key 'cls_token': this PVT v1 reads the release's stage-4 class token "
                    f"(out_type={self.out_type!r}) but the checkpoint has none (mmdet's layout, or a dense / "
                    "token-mean model); load a release checkpoint (classification/pvt.py), or build the backbone "
                    "with out_type='avg_featmap' (token mean) or 'featmap' (dense)")
            return dict(state_dict), []
        if 'cls_token' not in state_dict:
            return dict(state_dict), []
        out = {k: v for k, v in state_dict.items() if k != 'cls_token'}
        own = self.stages[-1].pos_embed
        if pos is not None and own is not None and pos.dim() == 3 and pos.shape[1] == own.shape[1] + 1:
            out[key] = pos[:, 1:]
        return out, ['cls_token']


# -- the flat names (the release's, and ours before TLAPVTStage): the backbone's read filter ---------------
_FLAT = re.compile(r'(patch_embed|block|norm)(\d+)\.|pos_embed(\d+)$')


def stage_key(key: str) -> str:
    """A flat PVT key -> ours: ``patch_embed{i+1}.`` / ``block{i+1}.`` / ``norm{i+1}.`` -> ``stages.{i}.patch_embed.``
    / ``stages.{i}.blocks.`` / ``stages.{i}.norm.``, ``pos_embed{i+1}`` -> ``stages.{i}.pos_embed``; any other key
    (``cls_token``, v1's final ``norm``, ours) unchanged."""
    m = _FLAT.match(key)
    if m is None:
        return key
    if m.group(3):
        return f'stages.{int(m.group(3)) - 1}.pos_embed'
    return f"stages.{int(m.group(2)) - 1}.{'blocks' if m.group(1) == 'block' else m.group(1)}.{key[m.end():]}"


def rename_flat_keys(state_dict: dict, prefix: str = '') -> None:
    """Rename, in place, the flat keys under ``prefix`` to ours (:func:`stage_key`).

    Raises:
        ValueError: a flat key and the key it renames to are both present.
    """
    for k in [k for k in state_dict if k.startswith(prefix)]:
        new = prefix + stage_key(k[len(prefix):])
        if new != k:
            if new in state_dict:
                raise ValueError(f'the state dict has both {k!r} (the flat PVT name) and {new!r}, which it renames to')
            state_dict[new] = state_dict.pop(k)
