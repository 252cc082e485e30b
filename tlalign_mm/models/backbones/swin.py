"""Swin Transformer backbone that carries TL-Align label embeddings through every block.

Layout follows the official Swin release (Liu et al., ICCV 2021; github.com/microsoft/
Swin-Transformer ``models/swin_transformer.py``): ``patch_embed.proj/norm``,
``layers.{i}.blocks.{j}.{norm1,attn.qkv,attn.proj,attn.relative_position_bias_table,norm2,
mlp.fc1,mlp.fc2}``, ``layers.{i}.downsample.{reduction,norm}`` (merge order x0..x3 =
(0,0),(1,0),(0,1),(1,1)), so official checkpoints load unchanged.  Output norms are
``norm{i}`` for each stage in ``out_indices`` (as the official detection / segmentation code);
the classification checkpoint's final ``norm`` is ``norm3`` here.

Labels (``docs/advanced_guides/method.md``, "Propagation through a block"): in every block they are shifted and
partitioned into the same windows as the tokens, aligned with that window's attention
(relative position bias and shifted-window mask included), reversed and shifted back, then
averaged with the residual; at patch merging the 2x2 children are summed and renormalised.

Windows: a stage whose map is no larger than the window in a dimension uses one window of the
map's size there and no shift (official classification rule, so 224 / 384 inputs reproduce the
official and timm models); larger maps are zero-padded to a multiple of the window and shifted
(official detection / mmdet rule).  The label path does not support padded windows.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import Tensor

from ...align import (
    attention_with_labels,
    check_token_labels,
    merge_patch_labels,
    pad_to_multiple,
    patch_merge_gather,
    relative_position_index,
    residual_label_average,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from ...registry import MODELS
from .base import FeatureInfo, TLABackbone, TLALabelAttention

__all__ = ['TLAWindowAttention', 'TLASwinBlock', 'TLAPatchMerging', 'TLASwinTransformer']


class TLAWindowAttention(TLALabelAttention):
    """Window multi-head self-attention with a relative position bias, aligning labels too.

    Args:
        dim: channels C; num_heads: H; window_size: the window the bias table is built for.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, attn_impl: str = 'auto',
                 label_dtype: str = 'auto'):
        super().__init__(dim, num_heads, attn_impl, label_dtype)
        self.window_size = window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.add_output_projection(dim, attn_drop, proj_drop)
        self._index_cache: dict = {}

    def position_bias(self, window: tuple[int, int]) -> Tensor:
        """(H, n, n) relative position bias for a (wh, ww) window, n = wh * ww."""
        table = self.relative_position_bias_table
        if torch.compiler.is_compiling():
            # built inside the graph: filling the cache would make dynamo recompile once
            idx = relative_position_index(window, (self.window_size, self.window_size), table.device)
        else:
            idx = self._index_cache.get(window)
            if idx is None or idx.device != table.device:
                idx = relative_position_index(window, (self.window_size, self.window_size), table.device)
                self._index_cache[window] = idx
        n = window[0] * window[1]
        return table[idx.view(-1)].view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: Tensor, window: tuple[int, int], mask: Optional[Tensor] = None,
                labels: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """x: (B*nW, n, C) windows; mask: (nW, n, n) additive or None; labels: (B*nW, n, K).

        Returns (out (B*nW, n, C), labels_att (B*nW, n, K) float32 or None)."""
        bw, n, c = x.shape
        q, k, v = self.qkv(x).reshape(bw, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn_mask = self.position_bias(window).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            m = mask.view(1, nw, 1, n, n).expand(bw // nw, -1, self.num_heads, -1, -1)
            attn_mask = attn_mask + m.reshape(-1, self.num_heads, n, n)
        attn_mask = attn_mask.to(q.dtype)
        out, lab = attention_with_labels(self.attn_impl, q, k, v, labels, attn_mask, self.attn_drop, self.scale,
                                         self.label_dtype)
        out = out.transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(out)), lab


class TLASwinBlock(nn.Module):
    """Swin block: (shifted) window attention + MLP, each pre-norm with a residual."""

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, shift: bool = False,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, attn_impl: str = 'auto',
                 label_dtype: str = 'auto'):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2 if shift else 0
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TLAWindowAttention(dim, num_heads, window_size, qkv_bias, attn_drop, drop, attn_impl,
                                       label_dtype)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)
        self._mask_cache: dict = {}

    def window_and_shift(self, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Effective (window, shift) for an h x w map (see the module docstring)."""
        ws, s = self.window_size, self.shift_size
        win = (min(h, ws), min(w, ws))
        shift = (0 if h <= ws else s, 0 if w <= ws else s)
        return win, shift

    def _mask(self, hp: int, wp: int, win, shift, device) -> Optional[Tensor]:
        if not any(shift):
            return None
        if torch.compiler.is_compiling():  # as position_bias: no cache mutation inside a graph
            return shifted_window_mask(hp, wp, win, shift, device=device)
        key = (hp, wp, win, shift, device)
        m = self._mask_cache.get(key)
        if m is None:
            m = shifted_window_mask(hp, wp, win, shift, device=device)
            self._mask_cache = {key: m}
        return m

    #: TL-Align ablations (set through :meth:`TLABackbone.set_alignment`): whether this block
    #: moves the labels with its attention, and whether it averages them with its input
    align_labels = True
    label_residual = True

    def forward(self, x: Tensor, hw: tuple[int, int], labels: Optional[Tensor] = None):
        """x: (B, L, C) with L = H*W; labels: (B, L, K) or None. Returns (x, labels)."""
        h, w = hw
        b, _, c = x.shape
        win, shift = self.window_and_shift(h, w)
        xs = self.norm1(x).view(b, h, w, c)
        xs, ph, pw = pad_to_multiple(xs, win)
        hp, wp = xs.shape[1:3]
        label_windows = None
        align = labels is not None and self.align_labels
        if align:
            if ph or pw:
                raise ValueError(
                    f'token_labels need every stage map to be divisible by window_size: a {h}x{w} '
                    f'map does not tile into {win[0]}x{win[1]} windows (choose an input size whose '
                    f'stage maps are multiples of window_size={self.window_size}, e.g. 224 for 7)')
            label_map = labels.view(b, h, w, -1)
            if any(shift):
                label_map = torch.roll(label_map, shifts=(-shift[0], -shift[1]), dims=(1, 2))
            label_windows = window_partition(label_map, win)
        if any(shift):
            xs = torch.roll(xs, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        out, attended_windows = self.attn(window_partition(xs, win), win, self._mask(hp, wp, win, shift, x.device),
                                          label_windows)
        out = window_reverse(out, win, hp, wp)
        if any(shift):
            out = torch.roll(out, shifts=shift, dims=(1, 2))
        out = out[:, :h, :w].reshape(b, h * w, c)
        x = x + self.drop_path(out)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        if align:
            attended = window_reverse(attended_windows, win, h, w).reshape(b, h, w, -1)
            if any(shift):
                attended = torch.roll(attended, shifts=shift, dims=(1, 2))
            attended = attended.reshape(b, h * w, -1)
            labels = residual_label_average(labels, attended) if self.label_residual else attended
        return x, labels


class TLAPatchMerging(nn.Module):
    """2x2 patch merging (keys ``norm``, ``reduction`` as the official Swin).

    Odd maps are zero-padded at the bottom/right; padded children carry zero label mass.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor, hw: tuple[int, int], labels: Optional[Tensor] = None):
        """x: (B, H*W, C) -> (B, ceil(H/2)*ceil(W/2), 2C); labels (B, H*W, K) likewise."""
        h, w = hw
        b, _, c = x.shape
        xs, _, _ = pad_to_multiple(x.view(b, h, w, c), (2, 2))
        xs = patch_merge_gather(xs)
        nh, nw = xs.shape[1:3]
        x = self.reduction(self.norm(xs.reshape(b, nh * nw, 4 * c)))
        if labels is not None:
            label_map, _, _ = pad_to_multiple(labels.view(b, h, w, -1), (2, 2))
            labels = merge_patch_labels(label_map).reshape(b, nh * nw, -1)
        return x, (nh, nw), labels


class TLASwinStage(nn.Module):
    """One Swin stage (official ``BasicLayer``): blocks, then optional patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 qkv_bias: bool, drop: float, attn_drop: float, drop_path: Sequence[float],
                 downsample: bool, attn_impl: str, label_dtype: str):
        super().__init__()
        self.blocks = nn.ModuleList([
            TLASwinBlock(dim, num_heads, window_size, shift=(j % 2 == 1), mlp_ratio=mlp_ratio,
                         qkv_bias=qkv_bias, drop=drop, attn_drop=attn_drop, drop_path=drop_path[j],
                         attn_impl=attn_impl, label_dtype=label_dtype) for j in range(depth)])
        self.downsample = TLAPatchMerging(dim) if downsample else None


@MODELS.register_module()
class TLASwinTransformer(TLABackbone):
    """Swin Transformer backbone with TL-Align label propagation.

    Args:
        arch: 'tiny' | 'small' | 'base' (also 'swin-t', 'swin-s', 'swin-b', 'swin-tiny'...), or a
            dict with ``embed_dims``, ``depths``, ``num_heads``.
        img_size: pretraining resolution (kept for reference; any size runs).
        patch_size: patch embedding stride (4).
        window_size: attention window (7; 12 for the 384px models).
        out_indices: stages whose (normed) output is returned, in 0..3 (negative from the end; returned
            in stage order, each once).
        out_type: 'featmap' (B, C_i, H/s_i, W/s_i) per stage, or 'avg_featmap' (B, C_i).
        drop_rate, attn_drop_rate, drop_path_rate: as in the official model (stochastic depth
            rises linearly over all blocks).
        frozen_stages: -1 nothing; 0 the patch embedding; k >= 1 also the first k stages and
            their output norms (mmdet semantics).
        attn_impl, label_dtype: as :class:`~tlalign_mm.TLAVisionTransformer`; in CPU training
            the fused implementation writes the window attention out (no CPU fused kernel gives
            the relative position bias its gradient).

    Strides of the four stages are 4, 8, 16, 32 (for patch_size 4); channels C, 2C, 4C, 8C.

    Raises:
        ValueError: unknown arch, bad out_indices / out_type / attn_impl / label_dtype.
    """

    arch_zoo = {
        'tiny': dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
        'small': dict(embed_dims=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
        'base': dict(embed_dims=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    }
    arch_alias = {'swin-t': 'tiny', 'swin-s': 'small', 'swin-b': 'base', 'swin-tiny': 'tiny',
                  'swin-small': 'small', 'swin-base': 'base', 't': 'tiny', 's': 'small', 'b': 'base'}
    arch_keys = ('embed_dims', 'depths', 'num_heads')
    OUT_TYPES = ('featmap', 'avg_featmap')

    def __init__(self, arch: str | dict = 'tiny', img_size: int | Sequence[int] = 224,
                 patch_size: int = 4, in_channels: int = 3, window_size: int = 7,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 out_indices: Sequence[int] = (0, 1, 2, 3), out_type: str = 'featmap',
                 frozen_stages: int = -1, norm_eval: bool = False, with_cp: bool = False,
                 attn_impl: str = 'auto', label_dtype: str = 'auto', init_cfg=None, pretrained: Optional[str] = None):
        super().__init__(frozen_stages, norm_eval, with_cp, init_cfg, pretrained)
        arch = self.resolve_arch(arch)
        self.check_out_type(out_type)
        if window_size < 1:
            raise ValueError(f'window_size must be >= 1, got {window_size}')
        depths, heads = tuple(arch['depths']), tuple(arch['num_heads'])
        self.num_stages = len(depths)
        self.out_indices = tuple(self.resolve_out_indices(out_indices, self.num_stages, 'stages'))
        self.embed_dims = c = arch['embed_dims']
        self.patch_size = patch_size
        self.window_size = window_size
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.out_type = out_type
        #: the channels of each stage (C, 2C, 4C, 8C)
        self.stage_channels = tuple(c * 2 ** i for i in range(self.num_stages))

        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_channels, c, patch_size, patch_size)
        self.patch_embed.norm = nn.LayerNorm(c)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()  # host floats (meta ok)
        self.layers = nn.ModuleList()
        for i in range(self.num_stages):
            self.layers.append(TLASwinStage(
                self.stage_channels[i], depths[i], heads[i], window_size, mlp_ratio, qkv_bias, drop_rate,
                attn_drop_rate, dpr[sum(depths[:i]):sum(depths[:i + 1])],
                downsample=i < self.num_stages - 1, attn_impl=attn_impl,
                label_dtype=label_dtype))
        for i in self.out_indices:
            self.add_module(f'norm{i}', nn.LayerNorm(self.stage_channels[i]))

    def _init_extra(self) -> None:
        for m in self.modules():
            if isinstance(m, TLAWindowAttention):
                trunc_normal_(m.relative_position_bias_table, std=0.02)

    def _frozen_modules(self):
        if self.frozen_stages < 0:
            return []
        mods = [self.patch_embed]
        for i in range(min(self.frozen_stages, self.num_stages)):
            mods.append(self.layers[i])
            if i in self.out_indices:
                mods.append(getattr(self, f'norm{i}'))
        return mods

    # -- the contract (TLABackbone) -------------------------------------------------------------
    @property
    def feature_info(self) -> list[FeatureInfo]:
        """Stage ``i`` (through ``norm{i}``) has ``C * 2**i`` channels at reduction ``patch_size * 2**i``."""
        return [FeatureInfo(self.stage_channels[i], self.patch_size * 2 ** i, f'norm{i}') for i in self.out_indices]

    def token_grid(self, img_hw: Sequence[int]) -> tuple[int, int]:
        """First-stage token grid (ceil(H / patch_size), ceil(W / patch_size)): inputs are zero-padded
        at the bottom / right to a multiple of ``patch_size``."""
        return -(-img_hw[0] // self.patch_size), -(-img_hw[1] // self.patch_size)

    def _stage_blocks(self) -> list:
        return [stage.blocks for stage in self.layers[:max(self.out_indices) + 1]]

    def forward(self, x: Tensor, token_labels: Optional[Tensor] = None):
        """Run the backbone.

        Args:
            x: (B, C_in, H, W) images (zero-padded to a multiple of ``patch_size``).
            token_labels: None, or (B, N, K) floating-point initial labels of the first-stage
                tokens, N = ``num_tokens((H, W))`` (row-major), any K.

        Returns:
            ``outs`` (a tuple, one entry per ``out_indices``), or with ``token_labels``
            ``(outs, labels)``, labels (B, N_s, K) float32 for the tokens of the last stage
            ``s = max(out_indices)`` (the aligned target is their mean over tokens).  Stages
            after ``max(out_indices)`` return nothing and are not run.

        Raises:
            TypeError: ``token_labels`` of a non-float dtype.
            ValueError: ``token_labels`` of the wrong shape; a stage map that does not tile into
                windows while labels are carried.
        """
        b, _, h, w = x.shape
        ph, pw = (-h) % self.patch_size, (-w) % self.patch_size
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        x = self.patch_embed.proj(x)
        hw = (x.shape[2], x.shape[3])
        x = self.pos_drop(self.patch_embed.norm(x.flatten(2).transpose(1, 2)))
        labels = None
        if token_labels is not None:
            check_token_labels(token_labels, b, x.shape[1])
            labels = token_labels.detach().float()

        outs = []
        for i, stage in enumerate(self.layers):
            for blk in stage.blocks:
                x, labels = self.run_block(blk, x, hw, labels)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(x)
                if self.out_type == 'avg_featmap':
                    outs.append(out.mean(dim=1))
                else:
                    # contiguous NCHW, as mmseg / mmdet return (channels-last views slow the necks' convs)
                    outs.append(out.transpose(1, 2).reshape(b, -1, *hw).contiguous())
            if i == max(self.out_indices):
                break
            if stage.downsample is not None:
                x, hw, labels = stage.downsample(x, hw, labels)
        outs = tuple(outs)
        return outs if token_labels is None else (outs, labels)
