"""PVT checkpoints (:class:`~tlalign_mm.TLAPyramidVisionTransformer`): layouts, key tables, stock models.

Layouts: ``'official-pvt'`` (whai362/PVT ``classification/pvt.py`` / ``pvt_v2.py``: the flat names
``patch_embed{i}``, ``pos_embed{i}`` (v1), ``block{i}.{j}``, ``norm{i}`` (v2), v1's ``norm`` and ``cls_token``,
``head``; renamed by the backbone's own :func:`~tlalign_mm.models.backbones.pvt.stage_key`), ``'mm-pvt'``
(mmdet ``PyramidVisionTransformer(V2)``, :data:`MM_KEYS`) and ``'timm-pvt'`` (timm ``pvt_v2_b*``).  Ours
(``'tlalign'``) are ``stages.{i}.{patch_embed,pos_embed,blocks.{j},norm}``, and the flat names without a head or
class token (ours before the stages).  What depends on the model (keeping or dropping v1's class token) is the
backbone's ``adapt_checkpoint``.
"""
from __future__ import annotations

import math
import re

import torch

from ..models import TLAPyramidVisionTransformer
from ..models.backbones.pvt import stage_key
from .keys import ExportResult, KeyMap, call, filter_state_dict, has_key, no_counterpart, stage_ids, stock_args

NAME, MODEL = 'pvt', TLAPyramidVisionTransformer
LAYOUTS = ('official-pvt', 'mm-pvt', 'timm-pvt')

TIMM_KEYS = KeyMap([('stages.0.patch_embed.', 'patch_embed.'), ('stages.{i}.patch_embed.', 'stages.{i}.downsample.'),
                    ('stages.{i}.blocks.{j}.mlp.dwconv.dwconv.', 'stages.{i}.blocks.{j}.mlp.dwconv.')])
"""Our PVT v2 keys <-> timm's ``PyramidVisionTransformerV2`` (``timm/models/pvt_v2.py``, whose
``checkpoint_filter_fn`` renames the release the same way); timm has no PVT v1."""


def _mm_keys(v1: bool) -> KeyMap:
    b, t = 'stages.{i}.blocks.{j}.', 'layers.{i}.1.{j+1}.' if v1 else 'layers.{i}.1.{j}.'
    ffn = {'fc1': 0, 'fc2': 3} if v1 else {'fc1': 0, 'dwconv.dwconv': 1, 'fc2': 4}
    return KeyMap([('stages.{i}.patch_embed.proj.', 'layers.{i}.0.projection.'),
                   ('stages.{i}.patch_embed.', 'layers.{i}.0.'), ('stages.{i}.pos_embed', 'layers.{i}.1.0.pos_embed'),
                   ('stages.{i}.norm.', 'layers.{i}.2.'),
                   *[(b + f'attn.q.{w}', t + f'attn.attn.in_proj_{w}') for w in ('weight', 'bias')],
                   (b + 'attn.proj.', t + 'attn.attn.out_proj.'), *[(b + f'mlp.{n}.', t + f'ffn.layers.{i}.')
                                                                    for n, i in ffn.items()], (b, t)])


MM_KEYS = {1: _mm_keys(True), 2: _mm_keys(False)}
"""Our PVT v1 / v2 keys <-> mmdet's ``PyramidVisionTransformer(V2)`` (``mmdet/models/backbones/pvt.py``, the
reverse of its ``pvt_convert``): patch embedding ``layers.{i}.0``, v1's position embedding ``layers.{i}.1.0``
(which shifts the blocks by one), blocks ``layers.{i}.1.{j}``, norm ``layers.{i}.2``; our ``q`` and ``kv`` are
stacked in ``in_proj_*``, our linear ``fc1`` / ``fc2`` are 1x1 convolutions of ``MixFFN``."""
_QKV, _FC = re.compile(r'.*\.attn\.q\.(weight|bias)$'), re.compile(r'.*\.mlp\.fc[12]\.weight$')
_TIMM_NAMES = {(dims, depths, (8, 4, 2, 1), (8, 8, 4, 4)): f'pvt_v2_b{i}' for i, (dims, depths) in enumerate([
    ((32, 64, 160, 256), (2, 2, 2, 2)), ((64, 128, 320, 512), (2, 2, 2, 2)), ((64, 128, 320, 512), (3, 4, 6, 3)),
    ((64, 128, 320, 512), (3, 4, 18, 3))])}


def detect(sd) -> str | None:
    """mm by ``attn.attn.in_proj_weight``; ``stages.{i}`` names: ours with ``patch_embed``, else timm; the flat
    ``block{i}.{j}``: official with ``head`` or ``cls_token``, else ours (before the stages); None: no PVT."""
    if has_key(sd, r'layers\.\d+\.1\.\d+\.attn\.attn\.in_proj_weight'):
        return 'mm-pvt'
    if has_key(sd, r'stages\.\d+\.blocks\.\d+\.attn\.q\.'):
        return 'tlalign' if has_key(sd, r'stages\.\d+\.patch_embed\.') else 'timm-pvt'
    if has_key(sd, r'block\d+\.\d+\.attn\.q\.'):
        return 'official-pvt' if has_key(sd, r'(head|cls_token)') else 'tlalign'
    return None


def convert(sd, layout: str) -> tuple[dict, list[str]]:
    """Flat names (official, ours before the stages) by ``stage_key`` (release's ``head`` dropped, v1's ``cls_token``
    and its ``pos_embed`` row kept for ``adapt_checkpoint``), timm's by :data:`TIMM_KEYS`, mmdet's by ``MM_KEYS``."""
    if layout != 'mm-pvt':
        rename = TIMM_KEYS.to_ours if layout == 'timm-pvt' else stage_key
        return filter_state_dict(sd, layout, lambda k, v: [(rename(k), v)])
    keys = MM_KEYS[1 if has_key(sd, r'layers\.\d+\.1\.0\.pos_embed$') else 2]

    def rename(k, v):   # mmdet's in_proj_* stack q and kv; its fc1 / fc2 are 1x1 convolutions
        if _QKV.match(new := keys.to_ours(k)):
            return [(new, v[:len(v) // 3]), (new.replace('.q.', '.kv.'), v[len(v) // 3:])]
        return [(new, v.flatten(1) if _FC.match(new) else v)]
    return filter_state_dict(sd, layout, rename)


def arch(sd) -> dict:
    """Version, widths, depths, ratios, v1's image size; ``num_heads`` by the release's rule (width / first width)."""
    stages = stage_ids(sd, 'stages')
    dims = tuple(sd[f'stages.{s}.patch_embed.proj.weight'].shape[0] for s in stages)
    sr = tuple(sd[k].shape[-1] if (k := f'stages.{s}.blocks.0.attn.sr.weight') in sd else 1 for s in stages)
    v1 = 'stages.0.pos_embed' in sd
    return dict(version=1 if v1 else 2, embed_dims=dims, depths=tuple(len(stage_ids(sd, rf'stages\.{s}\.blocks'))
                                                                       for s in stages),
                num_heads=tuple(max(1, d // dims[0]) for d in dims), sr_ratios=sr,
                mlp_ratios=tuple(sd[f'stages.{s}.blocks.0.mlp.fc1.weight'].shape[0] // d for s, d in zip(stages, dims)),
                qkv_bias='stages.0.blocks.0.attn.q.bias' in sd, out_indices=tuple(range(len(stages))),
                img_size=math.isqrt(sd['stages.0.pos_embed'].shape[1]) * 4 if v1 else None)


def stock(a: dict, lib: str) -> tuple[str, dict]:
    """mmdet's ``PyramidVisionTransformer`` (v1) / ``PyramidVisionTransformerV2`` (v2), which builds stage ``i`` with
    ``embed_dims * num_heads[i]`` channels (ValueError for widths that are not); ``img_size`` (as
    ``pretrain_img_size``), ``in_channels``, dropouts passed on; no ``frozen_stages``, ``norm_eval``, ``with_cp``."""
    v1 = a.pop('version') == 1
    if lib != 'mmdet':
        raise no_counterpart(f"a PVT v{2 - v1} backbone", lib, f'{lib} has no PyramidVisionTransformer; PVT goes to '
                             "'mmdet'" + ('' if v1 else ", 'timm'") + " or 'tlalign'")
    extra = stock_args(a, 'PyramidVisionTransformer', ('in_channels', 'drop_rate', 'attn_drop_rate', 'drop_path_rate'),
                       drop=('frozen_stages', 'norm_eval', 'with_cp'))
    dims, heads = tuple(a.pop('embed_dims')), tuple(a.pop('num_heads'))
    per_head = dims[0] // heads[0]
    if any(d != per_head * h for d, h in zip(dims, heads)):
        raise ValueError(f'PVT arch embed_dims {dims} are not {per_head} x num_heads {heads}: mmdet builds '
                         'embed_dims * num_heads[i] channels per stage, so it has no counterpart')
    kw = dict(embed_dims=per_head, num_layers=tuple(a.pop('depths')), num_heads=heads,
              sr_ratios=tuple(a.pop('sr_ratios')), mlp_ratios=tuple(a.pop('mlp_ratios')), qkv_bias=a.pop('qkv_bias'),
              out_indices=tuple(a.pop('out_indices')))
    return f"mmdet.models.backbones.PyramidVisionTransformer{'' if v1 else 'V2'}", kw | extra


def export(sd, to: str, head=None, readout: str | None = None) -> ExportResult:
    """timm (v2 only, :data:`TIMM_KEYS`) with ``head.weight`` / ``head.bias`` ((K, C4), (K,)); it pools the token
    mean after the stage norm, as ours.  mmdet (:data:`MM_KEYS`): backbone only, v1's position embeddings first, as
    the flat model lists them; mmdet's v1 is dense, so v1's final ``norm``, ``cls_token`` and the class-token row of
    the last ``pos_embed`` are dropped.  ``readout`` ignored; ValueError for v1 to timm, mmseg / mmpretrain (no PVT)."""
    a = arch(sd)
    v1 = a['version'] == 1
    notes = ["num_heads are not stored in the weights: the line takes the release's rule (stage width / first "
             f"stage width: {a['num_heads']}); build with your arch's"]
    if to == 'timm':
        if v1:
            raise no_counterpart('a PVT v1 backbone', to, "timm has PVT v2 only (pvt_v2_b*); PVT v1 goes to 'mmdet' "
                                 "(PyramidVisionTransformer) or 'tlalign'")
        name = _TIMM_NAMES.get((a['embed_dims'], a['depths'], a['sr_ratios'], a['mlp_ratios']))
        custom = dict(model_name='pvt_v2_b0') | {k: a[k] for k in ('embed_dims', 'depths', 'num_heads', 'sr_ratios',
                                                                    'mlp_ratios')}
        return ExportResult.timm('PyramidVisionTransformerV2 (timm/models/pvt_v2.py)', 'timm-pvt',
                                 {TIMM_KEYS.from_ours(k): v for k, v in sd.items()}, head, 'head.', name, custom,
                                 notes=notes)
    path, kw = stock(dict(a), to)
    out, dropped = {}, []
    for k, v in sorted(sd.items(), key=lambda kv: not re.fullmatch(r'stages\.\d+\.pos_embed', kv[0])):
        if k.startswith('norm.') or k == 'cls_token':
            dropped.append(k)
        elif '.attn.kv.' not in k:
            if re.fullmatch(r'stages\.\d+\.pos_embed', k) and math.isqrt(v.shape[1]) ** 2 != v.shape[1]:
                dropped.append(f'{k}[:, 0] (class-token row)')      # the last stage's, class-token row first
                v = v[:, 1:]
            v = torch.cat([v, sd[k.replace('.q.', '.kv.')]]) if _QKV.match(k) else v
            out[MM_KEYS[2 - v1].from_ours(k)] = v.reshape(*v.shape, 1, 1) if _FC.match(k) else v
    if v1:
        notes.append(f"pretrain_img_size={a['img_size']} (the stored position grids)")
    notes.append("mmdet's LayerNorms have eps 1e-6 where the release (and ours) use 1e-5 in the patch embeddings "
                 'and the reduction norms: features agree to about 1e-4, not bit for bit')
    return ExportResult(out, 'mm-pvt', f"mmdet {path.rsplit('.', 1)[1]} (mmdet/models/backbones/pvt.py)",
                        call(path, kw), dropped, notes)
