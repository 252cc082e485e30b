"""DeiT / ViT backbone that carries TL-Align label embeddings through every block.

Layout and numerics follow timm's ``vision_transformer.py`` (DeiT: Touvron et al., ICML 2021),
so official DeiT / TL-Align checkpoints (``{'model': ...}`` with timm keys) load unchanged;
the label path follows Euphoria16/TL-Align ``timm/models/vision_transformer.py``.

One module serves both jobs:

* pretraining: ``forward(x, token_labels)`` returns ``(outs, labels)``, the labels aligned
  block by block (``docs/advanced_guides/method.md``);
* dense prediction (mmseg UperNet): ``forward(x)`` returns the feature maps of
  ``out_indices``; no label work is done, so inference costs what a plain ViT costs.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, resample_abs_pos_embed, trunc_normal_
from torch import Tensor

from ...align import (
    attention_with_labels,
    check_token_labels,
    residual_label_average,
)
from ...registry import MODELS
from .base import FeatureInfo, TLABackbone, TLALabelAttention

__all__ = ['TLAAttention', 'TLATransformerBlock', 'TLAVisionTransformer']


class TLAAttention(TLALabelAttention):
    """Multi-head self-attention that also aligns labels (keys ``qkv``, ``proj`` as timm).

    Args:
        dim: channels C; num_heads: H (C must be divisible by H).
        attn_impl: 'auto' (default), 'fused' (one SDPA call, the labels as extra value
            channels), 'materialised' (the softmax written out once for features and labels, the
            reference code's way) or 'split' (plain SDPA plus a no-grad float32 label pass); see
            :func:`tlalign_mm.align.resolve_attn_impl`.
        label_dtype: 'auto' (labels at the features' precision, renormalised in float32) or
            'float32' (label step in float32 throughout, a second attention call under autocast).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, attn_impl: str = 'auto',
                 label_dtype: str = 'auto'):
        super().__init__(dim, num_heads, attn_impl, label_dtype)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.add_output_projection(dim, attn_drop, proj_drop)

    def forward(self, x: Tensor, labels: Optional[Tensor] = None,
                attn_mask: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """x: (B, N, C); labels: (B, N, K) or None; attn_mask: additive, broadcastable to
        (B, H, N, N).  Returns (out (B, N, C), labels_att (B, N, K) float32 or None)."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out, lab = attention_with_labels(self.attn_impl, q, k, v, labels, attn_mask, self.attn_drop, self.scale,
                                         self.label_dtype)
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out)), lab


class TLATransformerBlock(nn.Module):
    """Pre-norm transformer block (keys ``norm1, attn, norm2, mlp.fc1, mlp.fc2`` as timm).

    Features: ``x + DropPath(Attn(LN(x)))`` then ``x + DropPath(MLP(LN(x)))``.
    Labels: ``(Y + mean_h(A_h) @ Y) / 2``; the MLP is token-wise and leaves them unchanged.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 attn_impl: str = 'auto', label_dtype: str = 'auto'):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = TLAAttention(dim, num_heads, qkv_bias, attn_drop, drop, attn_impl, label_dtype)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    #: TL-Align ablations (set through :meth:`TLABackbone.set_alignment`): whether this block
    #: moves the labels with its attention, and whether it averages them with its input
    align_labels = True
    label_residual = True

    def forward(self, x: Tensor, labels: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        align = labels is not None and self.align_labels
        h, lab = self.attn(self.norm1(x), labels if align else None)
        x = x + self.drop_path(h)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        if align:
            labels = residual_label_average(labels, lab) if self.label_residual else lab
        return x, labels


@MODELS.register_module()
class TLAVisionTransformer(TLABackbone):
    """DeiT / ViT backbone with TL-Align label propagation.

    Args:
        arch: 'deit-tiny' | 'deit-small' | 'deit-base' (also 'tiny', 'small', 'base',
            'deit-t', 'deit-s', 'deit-b'), or a dict with ``embed_dims``, ``num_layers``,
            ``num_heads`` (and optionally ``mlp_ratio``).
        img_size: pretraining resolution the position embedding is stored for (int or (H, W)).
            Other input sizes get the embedding resized (``interpolate_mode``).
        patch_size: patch embedding stride in pixels (16 for DeiT).
        in_channels: input channels.
        out_indices: blocks whose output is returned (negative counts from the end; returned in
            depth order, each once: :meth:`~.base.TLABackbone.resolve_out_indices`).
        out_type: 'featmap' (B, C, H/p, W/p), 'cls_token' (B, C), 'avg_featmap' (B, C: mean of
            patch tokens) or 'raw' (B, N, C with prefix tokens).
        distilled: add a distillation token after the class token (DeiT distilled models).
        final_norm: apply the final LayerNorm ``norm`` to the last block's output.
        drop_rate, attn_drop_rate, drop_path_rate: dropout after embeddings / in MLP and
            projections, attention dropout, stochastic depth (linear rule over blocks).
        interpolate_mode: position-embedding resize mode ('bicubic' as mmseg / timm).
        frozen_stages: -1 freezes nothing; k >= 0 freezes the patch embedding, tokens, position
            embedding and the first k blocks.
        attn_impl: how every block computes its attention, labels or not
            (:func:`tlalign_mm.align.resolve_attn_impl`): 'auto' (default: the materialised
            softmax on a CPU with bfloat16 / float16 matrix units under low-precision autocast,
            where it is the faster kernel; the fused kernel with the labels as extra value
            channels everywhere else), 'fused', 'materialised' (the reference way) or 'split'
            (plain SDPA plus a no-grad float32 label pass).
        label_dtype: 'auto' (default: the labels take the attention at the features'
            precision, outputs renormalised and kept in float32 between blocks) or 'float32'
            (full float32 label math: a second, float32 attention call per block under
            autocast; for exactness studies).

    Input sizes not divisible by ``patch_size`` are zero-padded at the bottom/right.

    Raises:
        ValueError: unknown arch, bad out_indices/out_type/attn_impl/label_dtype.
    """

    arch_zoo = {
        'deit-tiny': dict(embed_dims=192, num_layers=12, num_heads=3),
        'deit-small': dict(embed_dims=384, num_layers=12, num_heads=6),
        'deit-base': dict(embed_dims=768, num_layers=12, num_heads=12),
    }
    arch_alias = {'tiny': 'deit-tiny', 'small': 'deit-small', 'base': 'deit-base',
                  'deit-t': 'deit-tiny', 'deit-s': 'deit-small', 'deit-b': 'deit-base'}
    arch_keys = ('embed_dims', 'num_layers', 'num_heads')
    OUT_TYPES = ('featmap', 'cls_token', 'avg_featmap', 'raw')

    def __init__(self, arch: str | dict = 'deit-small', img_size: int | Sequence[int] = 224,
                 patch_size: int = 16, in_channels: int = 3, out_indices: int | Sequence[int] = -1,
                 out_type: str = 'featmap', distilled: bool = False, final_norm: bool = True,
                 qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, interpolate_mode: str = 'bicubic',
                 frozen_stages: int = -1, norm_eval: bool = False, with_cp: bool = False,
                 attn_impl: str = 'auto', label_dtype: str = 'auto', init_cfg=None, pretrained: Optional[str] = None):
        super().__init__(frozen_stages, norm_eval, with_cp, init_cfg, pretrained)
        arch = self.resolve_arch(arch)
        self.check_out_type(out_type)
        self.embed_dims = c = arch['embed_dims']
        self.num_layers = arch['num_layers']
        self.patch_size = patch_size
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.out_type = out_type
        self.final_norm = final_norm
        self.interpolate_mode = interpolate_mode
        self.num_prefix_tokens = 2 if distilled else 1

        self.out_indices = self.resolve_out_indices(out_indices, self.num_layers, 'blocks')

        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_channels, c, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, c)) if distilled else None
        grid = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.patch_grid = grid
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + grid[0] * grid[1], c))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, self.num_layers, device='cpu').tolist()  # host floats (meta ok)
        self.blocks = nn.ModuleList([
            TLATransformerBlock(c, arch['num_heads'], arch.get('mlp_ratio', 4.0), qkv_bias, drop_rate,
                                attn_drop_rate, dpr[i], attn_impl, label_dtype)
            for i in range(self.num_layers)])
        self.norm = nn.LayerNorm(c, eps=1e-6) if final_norm else nn.Identity()

    # -- init / freezing -------------------------------------------------------------------
    def _init_extra(self) -> None:
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        if self.dist_token is not None:
            trunc_normal_(self.dist_token, std=0.02)
        # timm leaves the patch-embedding conv at PyTorch's default init (lecun-like).
        nn.init.kaiming_uniform_(self.patch_embed.proj.weight, a=math.sqrt(5))

    def _frozen_modules(self):
        if self.frozen_stages < 0:
            return []
        mods = [self.patch_embed, self.cls_token, self.pos_embed]
        if self.dist_token is not None:
            mods.append(self.dist_token)
        mods += list(self.blocks[:self.frozen_stages])
        if self.frozen_stages >= self.num_layers and self.final_norm:
            mods.append(self.norm)
        return mods

    # -- the contract (TLABackbone) -------------------------------------------------------------
    @property
    def feature_info(self) -> list[FeatureInfo]:
        """One entry per returned block, each ``embed_dims`` channels at reduction ``patch_size``."""
        return [FeatureInfo(self.embed_dims, self.patch_size, f'blocks.{i}') for i in self.out_indices]

    def token_grid(self, img_hw: Sequence[int]) -> tuple[int, int]:
        """Patch-token grid (ceil(H / patch_size), ceil(W / patch_size)): inputs are zero-padded at the
        bottom / right to a multiple of ``patch_size``."""
        return math.ceil(img_hw[0] / self.patch_size), math.ceil(img_hw[1] / self.patch_size)

    @classmethod
    def all_tokens_out_type(cls, out_type: str) -> str:
        """``'raw'``: the class (and distillation) token rows, then the patch tokens."""
        return 'raw'

    def _stage_blocks(self) -> list:
        return [self.blocks]

    # -- forward ---------------------------------------------------------------------------

    def _pos_embed(self, hw: tuple[int, int]) -> Tensor:
        if hw == self.patch_grid:
            return self.pos_embed
        return resample_abs_pos_embed(self.pos_embed, list(hw), list(self.patch_grid),
                                      num_prefix_tokens=self.num_prefix_tokens,
                                      interpolation=self.interpolate_mode, antialias=False)

    def forward(self, x: Tensor, token_labels: Optional[Tensor] = None):
        """Run the backbone.

        Args:
            x: (B, C_in, H, W) images.
            token_labels: None (dense prediction / inference), or (B, N, K) floating-point
                initial label embedding with N = ``num_tokens((H, W))`` (prefix rows first,
                then patch tokens row-major).  Any K (2 for the source embedding, or
                num_classes).

        Returns:
            ``outs``: tuple with one entry per ``out_indices`` (shape per ``out_type``); with
            ``token_labels``, ``(outs, labels)`` where labels is (B, N, K) float32, the
            aligned embedding after the last block (row 0 is the class token's target).

        Raises:
            TypeError: ``token_labels`` of a non-float dtype.
            ValueError: ``token_labels`` of the wrong shape.
        """
        b, _, h, w = x.shape
        ph, pw = (-h) % self.patch_size, (-w) % self.patch_size
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        x = self.patch_embed.proj(x)
        hw = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        prefix = [self.cls_token.expand(b, -1, -1)]
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(b, -1, -1))
        x = torch.cat(prefix + [x], dim=1)
        x = self.pos_drop(x + self._pos_embed(hw))

        labels = None
        if token_labels is not None:
            check_token_labels(token_labels, b, x.shape[1])
            labels = token_labels.detach().float()

        outs = []
        for i, blk in enumerate(self.blocks):
            x, labels = self.run_block(blk, x, labels)
            if i == self.num_layers - 1:
                x = self.norm(x)
            if i in self.out_indices:
                outs.append(self._format(x, hw))
        outs = tuple(outs)
        return outs if token_labels is None else (outs, labels)

    def _format(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        if self.out_type == 'raw':
            return x
        if self.out_type == 'cls_token':
            return x[:, 0]
        patches = x[:, self.num_prefix_tokens:]
        if self.out_type == 'avg_featmap':
            return patches.mean(dim=1)
        # contiguous NCHW, as mmseg returns (channels-last views slowed UperNet's convs on CPU)
        return patches.transpose(1, 2).reshape(x.shape[0], -1, *hw).contiguous()
