"""DeiT / ViT checkpoints (:class:`~tlalign_mm.TLAVisionTransformer`): layouts, key tables, stock models.

Layouts: ``'timm-vit'`` (official DeiT (facebookresearch/deit), TL-Align (Euphoria16/TL-Align) and timm's
``VisionTransformer``: our names plus ``head`` / ``head_dist`` / ``fc_norm``, dropped on reading),
``'mmseg-vit'`` (mmseg 1.x, as its ``vit2mmseg.py`` writes it) and ``'mmpretrain-vit'``; our names
without a head are ``'tlalign'``.
"""
from __future__ import annotations

import math

from ..models import TLAVisionTransformer
from .keys import ExportResult, KeyMap, call, filter_state_dict, has_key, no_counterpart, ratio, stage_ids, stock_args

NAME, MODEL = 'vit', TLAVisionTransformer
LAYOUTS = ('timm-vit', 'mmseg-vit', 'mmpretrain-vit')

_MM_COMMON = [('patch_embed.proj.', 'patch_embed.projection.'), ('blocks.{i}.norm1.', 'layers.{i}.ln1.'),
              ('blocks.{i}.norm2.', 'layers.{i}.ln2.'), ('blocks.{i}.mlp.fc1.', 'layers.{i}.ffn.layers.0.0.'),
              ('blocks.{i}.mlp.fc2.', 'layers.{i}.ffn.layers.1.'), ('norm.', 'ln1.')]
"""(ours, theirs) pairs that mmseg's and mmpretrain's ``VisionTransformer`` share."""
MMSEG_KEYS = KeyMap([('blocks.{i}.attn.qkv.weight', 'layers.{i}.attn.attn.in_proj_weight'),
                     ('blocks.{i}.attn.qkv.bias', 'layers.{i}.attn.attn.in_proj_bias'),
                     ('blocks.{i}.attn.proj.', 'layers.{i}.attn.attn.out_proj.'), *_MM_COMMON])
"""Our ViT keys <-> mmseg 1.x ``VisionTransformer`` (``mmseg/models/backbones/vit.py``: the attention is mmcv's
``MultiheadAttention`` around ``nn.MultiheadAttention``, q, k, v stacked in ``in_proj_*`` as in our ``qkv``)."""
MMPRETRAIN_KEYS = KeyMap([*_MM_COMMON, ('blocks.{i}.', 'layers.{i}.')])
"""Our ViT keys <-> mmpretrain ``VisionTransformer`` (``mmpretrain/models/backbones/vision_transformer.py``:
its attention's ``qkv`` / ``proj`` are named as ours)."""
_TIMM_NAMES = {(c, 12, 16, 4): f'deit_{size}_patch16_224' for c, size in ((192, 'tiny'), (384, 'small'), (768, 'base'))}


def detect(sd) -> str | None:
    """mmseg by ``attn.attn.in_proj_*``, mmpretrain by ``layers.{i}.ln1``, timm by a head; else ours (None: no ViT)."""
    if has_key(sd, r'layers\.\d+\.attn\.attn\.(in_proj_weight|out_proj\.)'):
        return 'mmseg-vit'
    if has_key(sd, r'layers\.\d+\.ln1\.') and has_key(sd, r'layers\.\d+\.attn\.qkv\.'):
        return 'mmpretrain-vit'
    if has_key(sd, r'blocks\.\d+\.attn\.qkv\.'):
        return 'timm-vit' if has_key(sd, r'(head|head_dist|fc_norm)\.') else 'tlalign'
    return None


def convert(sd, layout: str) -> tuple[dict, list[str]]:
    """The read filter: timm / official DeiT keys are ours (heads dropped); mm keys are renamed by their table."""
    keys = {'mmseg-vit': MMSEG_KEYS, 'mmpretrain-vit': MMPRETRAIN_KEYS}.get(layout)
    return filter_state_dict(sd, layout, lambda k, v: [(keys.to_ours(k) if keys else k, v)])


def arch(sd) -> dict:
    """``num_heads``, not stored, by DeiT's 64 channels per head; ``patch_bias`` besides.  Raises ValueError for a
    non-square position grid (the image size cannot be named)."""
    c, _, p, _ = sd['patch_embed.proj.weight'].shape
    distilled = 'dist_token' in sd
    n = sd['pos_embed'].shape[1] - 1 - distilled
    if (side := math.isqrt(n)) ** 2 != n:
        raise ValueError(f'pos_embed {tuple(sd["pos_embed"].shape)}: {n} grid tokens is not a square grid; '
                         'cannot name the image size the target model must be built with')
    depth = len(stage_ids(sd, 'blocks'))
    return dict(embed_dims=c, num_layers=depth, num_heads=max(1, c // 64), patch_size=p, img_size=side * p,
                mlp_ratio=ratio(sd['blocks.0.mlp.fc1.weight'].shape[0] / c), qkv_bias='blocks.0.attn.qkv.bias' in sd,
                patch_bias='patch_embed.proj.bias' in sd, final_norm='norm.weight' in sd, distilled=distilled,
                out_indices=depth - 1)


def stock(a: dict, lib: str) -> tuple[str, dict]:
    """mmseg's or mmpretrain's ``VisionTransformer`` (distilled: mmpretrain's ``DistilledVisionTransformer``); the
    latter's LayerNorm-only blocks take no ``norm_eval`` / ``with_cp`` (dropped), its attention dropout goes in
    ``layer_cfgs``.  Raises ValueError for mmdet (no ViT), a distilled model or ``frozen_stages`` for mmseg."""
    if lib not in ('mmseg', 'mmpretrain'):
        raise no_counterpart('a DeiT / ViT backbone', lib, f'{lib} has no VisionTransformer backbone; '
                             "mmseg's and mmpretrain's hold it")
    mmseg = lib == 'mmseg'
    own = ('attn_drop_rate', 'norm_eval', 'with_cp') if mmseg else ('frozen_stages',)   # passed on as given
    extra = stock_args(a, 'VisionTransformer', ('in_channels', 'drop_rate', 'drop_path_rate', 'interpolate_mode', *own),
                       img='img_size', drop=() if mmseg else ('norm_eval', 'with_cp'))
    distilled, frozen = a.pop('distilled'), a.pop('frozen_stages', -1)
    if distilled and mmseg:
        raise no_counterpart('a distilled DeiT (dist_token)', lib, "mmseg's VisionTransformer has no distillation "
                             "token; mmpretrain's DistilledVisionTransformer (and tlalign) hold it")
    if frozen != -1 and mmseg:
        raise ValueError("mmseg VisionTransformer freezes by 'frozen_exclude', not frozen_stages: set "
                         'frozen_stages=-1 to compare')
    out, c, depth, heads = (a.pop(k) for k in ('out_indices', 'embed_dims', 'num_layers', 'num_heads'))
    mlp, patch_bias = ratio(a.pop('mlp_ratio', 4.0)), a.pop('patch_bias', True)   # mlp_ratio: the arch dict's
    common = dict(patch_size=a.pop('patch_size'), qkv_bias=a.pop('qkv_bias'), final_norm=a.pop('final_norm'))
    if mmseg:
        return 'mmseg.models.backbones.VisionTransformer', dict(
            common, embed_dims=c, num_layers=depth, num_heads=heads, mlp_ratio=mlp, patch_bias=patch_bias,
            with_cls_token=True, norm_cfg=dict(type='LN', eps=1e-6),
            out_indices=out if isinstance(out, int) else tuple(out)) | extra
    kw = dict(arch=dict(embed_dims=c, num_layers=depth, num_heads=heads, feedforward_channels=round(c * mlp)),
              **common, out_type='featmap', out_indices=out if isinstance(out, int) else list(out))
    if not patch_bias:
        kw['patch_cfg'] = dict(bias=False)
    if attn_drop := a.pop('attn_drop_rate', 0.0):
        kw['layer_cfgs'] = dict(attn_drop_rate=attn_drop)
    return f"mmpretrain.models.{'Distilled' * distilled}VisionTransformer", kw | extra


def export(sd, to: str, head=None, readout: str | None = None) -> ExportResult:
    """timm: our names plus ``head.weight`` / ``head.bias``, pooled as our classifier: ``global_pool='token'`` for
    the class token, ``global_pool='avg', fc_norm=False`` for the token mean (timm's default ``fc_norm`` for
    ``'avg'`` would norm after pooling instead).  mmseg / mmpretrain: :data:`MMSEG_KEYS` / :data:`MMPRETRAIN_KEYS`,
    backbone only.  ValueError for mmdet, a distilled DeiT for timm or mmseg, a timm head without a readout, a
    non-square position grid."""
    a, sd = arch(sd), dict(sd)
    notes = [f"built at img_size={a['img_size']}, patch_size={a['patch_size']} (the stored position grid) "
             "and, num_heads not being stored in the weights, with your arch's num_heads (the line assumes "
             f"DeiT's 64 channels per head: {a['num_heads']})"]
    if to == 'timm':   # timm's VisionTransformer (timm/models/vision_transformer.py): our names, plus head
        if a['distilled']:
            raise no_counterpart('a distilled DeiT (dist_token)', 'timm', "timm's VisionTransformer has no "
                                 "distillation token; mmpretrain's DistilledVisionTransformer (and tlalign) hold it")
        if head and readout is None:
            raise ValueError('the classifier head goes to timm, but which feature it reads (class token or token '
                             "mean) is not known from the checkpoint: pass readout='cls_token' or 'avg_featmap' "
                             '(--readout)')
        name = _TIMM_NAMES.get((a['embed_dims'], a['num_layers'], a['patch_size'], a['mlp_ratio']))
        custom = dict(model_name='vit_base_patch16_224', patch_size=a['patch_size'], embed_dim=a['embed_dims'],
                      depth=a['num_layers'], num_heads=a['num_heads'], mlp_ratio=a['mlp_ratio'])
        kw = {k: v for k, v, default in [('img_size', a['img_size'], 224), ('qkv_bias', a['qkv_bias'], True),
                                         ('final_norm', a['final_norm'], True)] if v != default}
        pool = {'avg_featmap': dict(global_pool='avg', fc_norm=False),   # ours: final norm on every token, then mean
                'cls_token': dict(global_pool='token'), None: {}}[readout]
        return ExportResult.timm('VisionTransformer (timm/models/vision_transformer.py)', 'timm-vit', sd, head,
                                 'head.', name, custom, notes=notes, **kw, **pool)
    path, kw = stock(dict(a), to)
    keys, file, note = {
        'mmseg': (MMSEG_KEYS, 'mmseg/models/backbones/vit.py', "mmseg's defaults differ from DeiT: keep "
                  "patch_bias=True, final_norm=True and norm_cfg=dict(type='LN', eps=1e-6) as in the line"),
        'mmpretrain': (MMPRETRAIN_KEYS, 'mmpretrain/models/backbones/vision_transformer.py, deit.py', "mmpretrain's "
                       "out_type='avg_featmap' adds a norm after pooling (ln2) that ours lacks: build it with "
                       "out_type 'featmap', 'cls_token' or 'raw'")}[to]
    return ExportResult({keys.from_ours(k): v for k, v in sd.items()}, f'{to}-vit',
                        f"{to} {path.rsplit('.', 1)[1]} ({file})", call(path, kw), notes=notes + [note])
