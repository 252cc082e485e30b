"""DeiT / ViT backbone that carries TL-Align label embeddings through every block.

Layout and numerics follow timm's ``vision_transformer.py`` (DeiT: Touvron et al., ICML 2021),
so official DeiT / TL-Align checkpoints (``{'model': ...}`` with timm keys) load unchanged;
the label path follows Euphoria16/TL-Align ``timm/models/vision_transformer.py``.

One module serves both jobs:

* pretraining: ``forward(x, token_labels)`` returns ``(outs, labels)``, the labels aligned
  block by block (``docs/tl-align.md``);
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
from ..layouts import ExportResult, KeyMap, register_layouts, unsupported_target
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
        out_indices: blocks whose output is returned (negative counts from the end).
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

        out_indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        self.out_indices = []
        for i in out_indices:
            j = i + self.num_layers if i < 0 else i
            if not 0 <= j < self.num_layers:
                raise ValueError(f'out_indices {i} is out of range for {self.num_layers} blocks')
            self.out_indices.append(j)

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
        """Every returned block: ``embed_dims`` channels at reduction ``patch_size``."""
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
            TypeError / ValueError: ``token_labels`` of a non-float dtype or wrong shape.
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


# ---------------------------------------------------------------------------------------------
# Checkpoints of other layouts (timm's ``checkpoint_filter_fn``; the loader is
# tlalign_mm/checkpoint.py, which asks each backbone file to recognise and rename its own)
# ---------------------------------------------------------------------------------------------
CHECKPOINT_LAYOUTS = ('timm-vit', 'mmseg-vit', 'mmpretrain-vit')
"""Foreign ViT layouts :func:`checkpoint_filter_fn` converts (``'tlalign'`` is ours)."""

_MM_COMMON_NAMES = [  # (ours, theirs): mmseg / mmpretrain ``VisionTransformer`` share these
    ('patch_embed.proj.', 'patch_embed.projection.'),
    ('blocks.{i}.norm1.', 'layers.{i}.ln1.'),
    ('blocks.{i}.norm2.', 'layers.{i}.ln2.'),
    ('blocks.{i}.mlp.fc1.', 'layers.{i}.ffn.layers.0.0.'),
    ('blocks.{i}.mlp.fc2.', 'layers.{i}.ffn.layers.1.'),
    ('norm.', 'ln1.'),
]
MMSEG_VIT_KEYS = KeyMap([
    # mmseg/models/backbones/vit.py: TransformerEncoderLayer.attn is mmcv's MultiheadAttention
    # around nn.MultiheadAttention (q, k, v stacked in in_proj_* as in our qkv)
    ('blocks.{i}.attn.qkv.weight', 'layers.{i}.attn.attn.in_proj_weight'),
    ('blocks.{i}.attn.qkv.bias', 'layers.{i}.attn.attn.in_proj_bias'),
    ('blocks.{i}.attn.proj.', 'layers.{i}.attn.attn.out_proj.'),
    *_MM_COMMON_NAMES,
])
"""Our ViT keys <-> mmseg 1.x ``VisionTransformer`` (``mmseg/models/backbones/vit.py``)."""
MMPRETRAIN_VIT_KEYS = KeyMap([
    *_MM_COMMON_NAMES,
    # mmpretrain/models/backbones/vision_transformer.py: attn is mmpretrain's MultiheadAttention
    # (mmpretrain/models/utils/attention.py) with ``qkv`` and ``proj`` Linears, named as ours
    ('blocks.{i}.', 'layers.{i}.'),
])
"""Our ViT keys <-> mmpretrain 1.x ``VisionTransformer`` (``mmpretrain/models/backbones/vision_transformer.py``)."""


def detect_layout(state_dict) -> Optional[str]:
    """The ViT layout of a backbone state dict, or None for another family.

    * ``layers.{i}.attn.attn.in_proj_weight`` -> ``'mmseg-vit'`` (``nn.MultiheadAttention``);
    * ``layers.{i}.ln1`` with ``layers.{i}.attn.qkv`` -> ``'mmpretrain-vit'``;
    * ``blocks.{i}.attn.qkv`` with a classifier (``head``, ``head_dist``, ``fc_norm``) ->
      ``'timm-vit'`` (official DeiT, TL-Align and timm releases), without -> ``'tlalign'``.
    """
    from ..layouts import has_key
    if has_key(state_dict, r'layers\.\d+\.attn\.attn\.(in_proj_weight|out_proj\.)'):
        return 'mmseg-vit'
    if has_key(state_dict, r'layers\.\d+\.ln1\.') and has_key(state_dict, r'layers\.\d+\.attn\.qkv\.'):
        return 'mmpretrain-vit'
    if has_key(state_dict, r'blocks\.\d+\.attn\.qkv\.'):
        return 'timm-vit' if has_key(state_dict, r'(head|head_dist|fc_norm)\.') else 'tlalign'
    return None


def checkpoint_filter_fn(state_dict, layout: str) -> tuple[dict, list[str]]:
    """Rename a ViT state dict of ``layout`` into :class:`TLAVisionTransformer`'s names.

    timm / official DeiT keys are ours already (heads dropped); mmseg / mmpretrain keys are
    renamed (``patch_embed.projection`` -> ``patch_embed.proj``, ``layers.{i}.ln1`` ->
    ``blocks.{i}.norm1``, ``attn.attn.in_proj_*`` -> ``attn.qkv.*`` (q/k/v stacked alike),
    ``ffn.layers.{0.0,1}`` -> ``mlp.{fc1,fc2}``, final ``ln1`` -> ``norm``).

    Returns:
        (renamed state dict, dropped source keys: heads and recomputed buffers).

    Raises:
        ValueError: two keys map to one name.
    """
    from ..layouts import filter_state_dict
    keys = {'mmseg-vit': MMSEG_VIT_KEYS, 'mmpretrain-vit': MMPRETRAIN_VIT_KEYS}.get(layout)
    return filter_state_dict(state_dict, layout, lambda k, v: (keys.to_ours(k) if keys else k, v))


_DEIT_SIZES = {192: 'tiny', 384: 'small', 768: 'base'}


def _vit_arch(sd) -> dict:
    """What the weights tell of a ViT in our layout: patch size, widths, depth, grid, tokens."""
    from ..layouts import stage_ids
    c, _, p, _ = sd['patch_embed.proj.weight'].shape
    prefix = 1 + int('dist_token' in sd)
    n = sd['pos_embed'].shape[1] - prefix
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f'pos_embed {tuple(sd["pos_embed"].shape)}: {n} grid tokens is not a square grid; '
                         'cannot name the image size the target model must be built with')
    depth = len(stage_ids(sd, 'blocks'))
    hidden = sd['blocks.0.mlp.fc1.weight'].shape[0]
    return dict(embed_dims=c, patch_size=p, img_size=side * p, depth=depth, num_heads=max(1, c // 64),
                mlp_ratio=hidden // c if hidden % c == 0 else hidden / c,
                hidden=hidden, qkv_bias='blocks.0.attn.qkv.bias' in sd,
                patch_bias='patch_embed.proj.bias' in sd, final_norm='norm.weight' in sd,
                distilled=prefix == 2)


def _timm_vit_call(a: dict, head, readout) -> str:
    """The ``timm.create_model`` call of timm/models/vision_transformer.py that holds our ViT."""
    from ..layouts import format_call
    size = _DEIT_SIZES.get(a['embed_dims'])
    standard = size and a['depth'] == 12 and a['patch_size'] == 16 and a['num_heads'] * 64 == a['embed_dims'] \
        and a['mlp_ratio'] == 4
    kw = {} if standard else dict(patch_size=a['patch_size'], embed_dim=a['embed_dims'], depth=a['depth'],
                                  num_heads=a['num_heads'], mlp_ratio=a['mlp_ratio'])
    if a['img_size'] != 224:
        kw['img_size'] = a['img_size']
    if not a['qkv_bias']:
        kw['qkv_bias'] = False
    if not a['final_norm']:
        kw['final_norm'] = False
    kw['num_classes'] = head['weight'].shape[0] if head else 0
    if readout == 'avg_featmap':    # ours: final norm on every token, then the patch-token mean
        kw.update(global_pool='avg', fc_norm=False)
    elif readout == 'cls_token':
        kw['global_pool'] = 'token'
    return format_call('timm.create_model', model_name=f'deit_{size}_patch16_224' if standard else
                       'vit_base_patch16_224', pretrained=False, **kw)


def export_state_dict(state_dict, target: str, head=None, readout: Optional[str] = None):
    """Write a ViT state dict in our layout under another library's names (the reverse of
    :func:`checkpoint_filter_fn`, from the same key tables).

    * ``'timm'``: timm's ``VisionTransformer`` (``timm/models/vision_transformer.py``; DeiT's
      ``deit_*_patch16_224`` and ``vit_*``): our names already, plus ``head.weight`` /
      ``head.bias`` when ``head`` is given.  The build line pools as our classifier does:
      ``global_pool='token'`` for the class token, ``global_pool='avg', fc_norm=False`` for the
      token mean (the final ``norm`` on every token, then the mean of the patch tokens;
      timm's default ``fc_norm`` for ``'avg'`` would norm after pooling instead);
    * ``'mmseg'``: mmseg's ``VisionTransformer`` (:data:`MMSEG_VIT_KEYS`), backbone only;
    * ``'mmpretrain'``: mmpretrain's ``VisionTransformer`` / ``DistilledVisionTransformer``
      (:data:`MMPRETRAIN_VIT_KEYS`), backbone only (mmpretrain's head is a separate module).

    Args:
        state_dict: our ViT keys (see :func:`checkpoint_filter_fn`), tensors (1, P + h*w, C) etc.
        target: one of ``'timm'``, ``'mmseg'``, ``'mmpretrain'``.
        head: ``{'weight': (K, C), 'bias': (K,)}`` of our classifier, or None.
        readout: ``'cls_token'`` or ``'avg_featmap'`` (our classifier's pooled feature), or None.

    Returns:
        :class:`~tlalign_mm.models.layouts.ExportResult` (nothing is dropped: our ViT has no
        pretraining-only parameters).

    Raises:
        ValueError: ``'mmdet'`` (it has no ViT backbone), a distilled DeiT (``dist_token``) for
            timm or mmseg, whose ViTs have no distillation token; a non-square position grid.
    """
    from ..layouts import format_call
    a = _vit_arch(state_dict)
    sd = dict(state_dict)
    notes = [f"built at img_size={a['img_size']}, patch_size={a['patch_size']} (the stored position grid) "
             'and, num_heads not being stored in the weights, with your arch\'s num_heads (the line assumes '
             f"DeiT's 64 channels per head: {a['num_heads']})"]
    if target == 'mmdet':
        raise unsupported_target('a DeiT / ViT backbone', target, 'mmdet has no VisionTransformer backbone; '
                                 "use --to mmseg or mmpretrain")
    if a['distilled'] and target in ('timm', 'mmseg'):
        raise unsupported_target('a distilled DeiT (dist_token)', target, f"{target}'s VisionTransformer has no "
                                 'distillation token; use --to mmpretrain (DistilledVisionTransformer) or tlalign')
    if target == 'timm':
        if head:
            sd['head.weight'], sd['head.bias'] = head['weight'], head['bias']
        if readout is None and head:
            raise ValueError('the classifier head goes to timm, but which feature it reads (class token or token '
                             "mean) is not known from the checkpoint: pass readout='cls_token' or 'avg_featmap' "
                             '(--readout)')
        return ExportResult(sd, 'timm-vit', 'timm VisionTransformer (timm/models/vision_transformer.py)',
                            _timm_vit_call(a, head, readout), notes=notes)
    common = dict(img_size=a['img_size'], patch_size=a['patch_size'])
    if target == 'mmseg':
        out = {MMSEG_VIT_KEYS.from_ours(k): v for k, v in sd.items()}
        build = format_call('mmseg.models.backbones.VisionTransformer', **common, embed_dims=a['embed_dims'],
                            num_layers=a['depth'], num_heads=a['num_heads'], mlp_ratio=a['mlp_ratio'],
                            qkv_bias=a['qkv_bias'], patch_bias=a['patch_bias'], with_cls_token=True,
                            final_norm=a['final_norm'], norm_cfg=dict(type='LN', eps=1e-6),
                            out_indices=a['depth'] - 1)
        notes.append("mmseg's defaults differ from DeiT: keep patch_bias=True, final_norm=True and "
                     "norm_cfg=dict(type='LN', eps=1e-6) as in the line")
        return ExportResult(out, 'mmseg-vit', 'mmseg VisionTransformer (mmseg/models/backbones/vit.py)', build,
                            notes=notes)
    if target == 'mmpretrain':
        out = {MMPRETRAIN_VIT_KEYS.from_ours(k): v for k, v in sd.items()}
        cls = 'DistilledVisionTransformer' if a['distilled'] else 'VisionTransformer'
        kw = dict(arch=dict(embed_dims=a['embed_dims'], num_layers=a['depth'], num_heads=a['num_heads'],
                            feedforward_channels=a['hidden']), **common, qkv_bias=a['qkv_bias'],
                  final_norm=a['final_norm'], out_type='featmap')
        if not a['patch_bias']:
            kw['patch_cfg'] = dict(bias=False)
        notes.append("mmpretrain's out_type='avg_featmap' adds a norm after pooling (ln2) that ours lacks: build "
                     "it with out_type 'featmap', 'cls_token' or 'raw'")
        return ExportResult(out, 'mmpretrain-vit', f'mmpretrain {cls} '
                            '(mmpretrain/models/backbones/vision_transformer.py, deit.py)',
                            format_call(f'mmpretrain.models.{cls}', **kw), notes=notes)
    raise unsupported_target('a DeiT / ViT backbone', target, "choose 'timm', 'mmseg', 'mmpretrain' or 'tlalign'")


register_layouts('vit', CHECKPOINT_LAYOUTS, detect_layout, checkpoint_filter_fn, priority=2,
                 export=export_state_dict)
