"""Swin checkpoints (:class:`~tlalign_mm.TLASwinTransformer`): layouts, key tables, stock models.

Layouts: ``'official-swin'`` (microsoft/Swin-Transformer: ``layers.{i}.blocks.{j}``, the patch merging
``layers.{i}.downsample`` at the end of stage ``i``, a final ``norm``, ``head``), ``'timm-swin'`` (timm >= 0.9:
the patch merging opens stage ``i + 1``, ``head.fc``) and ``'mm-swin'`` (mmseg / mmdet / mmpretrain
``SwinTransformer``: ``stages.{i}``, ``attn.w_msa``, ``ffn``, a patch merging in ``nn.Unfold``'s channel order).
Ours (``'tlalign'``) are the official names with the output norms ``norm{i}``; a foreign final ``norm`` is our
``norm{last stage}``.
"""
from __future__ import annotations

import math
import re

import torch

from ..align import relative_position_index
from ..models import TLASwinTransformer
from .keys import ExportResult, KeyMap, call, filter_state_dict, has_key, no_counterpart, ratio, stage_ids, stock_args

NAME, MODEL = 'swin', TLASwinTransformer
LAYOUTS = ('official-swin', 'timm-swin', 'mm-swin')

MM_KEYS = KeyMap([('patch_embed.proj.', 'patch_embed.projection.'),
                  ('layers.{i}.blocks.{j}.attn.', 'stages.{i}.blocks.{j}.attn.w_msa.'),
                  ('layers.{i}.blocks.{j}.mlp.fc1.', 'stages.{i}.blocks.{j}.ffn.layers.0.0.'),
                  ('layers.{i}.blocks.{j}.mlp.fc2.', 'stages.{i}.blocks.{j}.ffn.layers.1.'),
                  ('layers.{i}.', 'stages.{i}.')])
"""Our Swin keys <-> mmseg / mmdet ``SwinTransformer`` (``{mmseg,mmdet}/models/backbones/swin.py``); their
patch merging also reorders channels (:func:`_merge_order`)."""
TIMM_KEYS = KeyMap([('layers.{i}.downsample.', 'layers.{i+1}.downsample.')])
"""Our Swin keys <-> timm's ``SwinTransformer`` (``timm/models/swin_transformer.py``)."""
_MERGE = re.compile(r'layers\.\d+\.downsample\.(reduction\.weight|norm\.(weight|bias))$')
_TIMM_NAMES = {(96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 4, 4): 'swin_tiny_patch4_window7_224',
               (96, (2, 2, 18, 2), (3, 6, 12, 24), 7, 4, 4): 'swin_small_patch4_window7_224',
               (128, (2, 2, 18, 2), (4, 8, 16, 32), 7, 4, 4): 'swin_base_patch4_window7_224'}


def _merge_order(t: torch.Tensor, to_official: bool) -> torch.Tensor:
    """Reorder the last (4C) axis of a patch-merging ``reduction.weight`` (2C, 4C) or ``norm`` (4C,) between mm's
    ``nn.Unfold`` order, channel ``c * 4 + k`` with ``k`` the row-major offset (0,0), (0,1), (1,0), (1,1), and the
    official ``j * C + c`` with ``j`` = (0,0), (1,0), (0,1), (1,1)."""
    if (n := t.shape[-1]) % 4:
        raise ValueError(f'patch-merging tensor of shape {tuple(t.shape)}: last dim not divisible by 4')
    idx = torch.arange(n).reshape(n // 4, 4)[:, [0, 2, 1, 3]].T.reshape(-1)   # official j * C + c -> unfold c * 4 + k
    return t[..., idx if to_official else idx.argsort()].contiguous()


def detect(sd) -> str | None:
    """mm by ``attn.w_msa``; timm by a patch merging in the last stage or ``head.fc``; ours by ``norm{i}``, else
    official; None: no Swin."""
    if has_key(sd, r'stages\.\d+\.blocks\.\d+\.attn\.w_msa\.'):
        return 'mm-swin'
    if not has_key(sd, r'layers\.\d+\.blocks\.\d+\.'):
        return None
    stages = stage_ids(sd, 'layers')
    if (len(stages) > 1 and has_key(sd, rf'layers\.{stages[-1]}\.downsample\.')) or 'head.fc.weight' in sd:
        return 'timm-swin'
    return 'tlalign' if has_key(sd, r'norm\d+\.') else 'official-swin'


def convert(sd, layout: str) -> tuple[dict, list[str]]:
    """mm keys by :data:`MM_KEYS` (patch merging reordered), timm's merging back to the end of the previous stage,
    a foreign final ``norm`` to ``norm{last}``.  Raises ValueError for a timm-swin patch merging before stage 0."""
    last = (stage_ids(sd, 'stages' if layout == 'mm-swin' else 'layers') or [0])[-1]
    keys = {'mm-swin': MM_KEYS, 'timm-swin': TIMM_KEYS}.get(layout)
    if layout == 'timm-swin' and (early := [k for k in sd if k.startswith('layers.0.downsample.')]):
        raise ValueError(f'timm-swin checkpoint with a patch merging before stage 0: {early[0]}')

    def rename(k, v):
        new = keys.to_ours(k) if keys else k
        v = _merge_order(v, to_official=True) if layout == 'mm-swin' and _MERGE.match(new) else v
        return [(re.sub(r'^norm\.', f'norm{last}.', new) if layout != 'tlalign' else new, v)]
    return filter_state_dict(sd, layout, rename)


def arch(sd) -> dict:
    """Widths, depths, heads and window (from the relative-position tables), ``out_indices`` (the output norms)."""
    c, _, p, _ = sd['patch_embed.proj.weight'].shape
    stages = stage_ids(sd, 'layers')
    side = math.isqrt(sd['layers.0.blocks.0.attn.relative_position_bias_table'].shape[0])
    return dict(embed_dims=c, patch_size=p, window_size=(side + 1) // 2,
                depths=tuple(len(stage_ids(sd, rf'layers\.{i}\.blocks')) for i in stages),
                num_heads=tuple(sd[f'layers.{i}.blocks.0.attn.relative_position_bias_table'].shape[1] for i in stages),
                mlp_ratio=ratio(sd['layers.0.blocks.0.mlp.fc1.weight'].shape[0] / c),
                qkv_bias='layers.0.blocks.0.attn.qkv.bias' in sd,
                out_indices=tuple(i for i in stages if f'norm{i}.weight' in sd))


def stock(a: dict, lib: str) -> tuple[str, dict]:
    """mmseg's / mmdet's ``SwinTransformer``; ``img_size``, ``in_channels``, dropouts, ``frozen_stages``, ``with_cp``
    passed on (``norm_eval`` dropped: the stock model has LayerNorms only)."""
    if lib not in ('mmseg', 'mmdet'):
        raise no_counterpart('a Swin backbone', lib, f"{lib} has no SwinTransformer target here (mmpretrain's is "
                             "its VisionTransformer); Swin goes to 'timm', 'mmseg', 'mmdet' or 'tlalign'")
    extra = stock_args(a, 'SwinTransformer', ('in_channels', 'drop_rate', 'attn_drop_rate', 'drop_path_rate',
                                                'frozen_stages', 'with_cp'), drop=('norm_eval',))
    depths, patch = tuple(a.pop('depths')), a.pop('patch_size')
    kw = dict(embed_dims=a.pop('embed_dims'), depths=depths, num_heads=tuple(a.pop('num_heads')),
              window_size=a.pop('window_size'), patch_size=patch, mlp_ratio=ratio(a.pop('mlp_ratio')),
              qkv_bias=a.pop('qkv_bias'), out_indices=tuple(a.pop('out_indices')),
              strides=(patch,) + (2,) * (len(depths) - 1))
    return f'{lib}.models.backbones.SwinTransformer', kw | extra


def export(sd, to: str, head=None, readout: str | None = None) -> ExportResult:
    """timm (:data:`TIMM_KEYS`): stage ``i``'s patch merging to ``layers.{i+1}``, the last stage's output norm to
    ``norm`` (the others dropped; ValueError without it), the head to ``head.fc``; it pools the token mean as ours.
    mmseg / mmdet (:data:`MM_KEYS`): the merging in ``nn.Unfold``'s order, the persistent ``relative_position_index``
    buffers written (mm loads strictly only with them).  ``readout`` ignored; ValueError for mmpretrain."""
    a = arch(sd)
    last, w = stage_ids(sd, 'layers')[-1], a['window_size']
    notes = [f'window_size={w} (the stored relative-position tables); Swin weights do not fix the image size: '
             'build at the size you run (img_size / pretrain_img_size)']
    if to == 'timm':
        if f'norm{last}.weight' not in sd:
            raise ValueError(f"timm's SwinTransformer needs the last stage's output norm (our norm{last}), which "
                             'this backbone lacks (built with out_indices without its last stage)')
        dropped = [k for k in sd if re.match(r'norm\d+\.', k) and not k.startswith(f'norm{last}.')]
        out = {TIMM_KEYS.from_ours(re.sub(rf'^norm{last}\.', 'norm.', k)): v for k, v in sd.items() if k not in dropped}
        name = _TIMM_NAMES.get((a['embed_dims'], a['depths'], a['num_heads'], w, a['patch_size'], a['mlp_ratio']))
        custom = dict(model_name='swin_tiny_patch4_window7_224', patch_size=a['patch_size'], window_size=w,
                      embed_dim=a['embed_dims'], depths=a['depths'], num_heads=a['num_heads'], mlp_ratio=a['mlp_ratio'])
        return ExportResult.timm('SwinTransformer (timm/models/swin_transformer.py)', 'timm-swin', out, head,
                                 'head.fc.', name, custom, dropped, notes, global_pool='avg')
    path, kw = stock(dict(a), to)
    out = {MM_KEYS.from_ours(k): _merge_order(v, to_official=False) if _MERGE.match(k) else v for k, v in sd.items()}
    index = relative_position_index((w, w), (w, w))
    out |= {f'stages.{i}.blocks.{j}.attn.w_msa.relative_position_index': index.clone()
            for i, depth in enumerate(a['depths']) for j in range(depth)}
    notes.append(f'out_indices={a["out_indices"]}: the stages whose output norms norm{{i}} were trained; mm shifts '
                 'the windows of every stage, ours (as the official model) not those of a map no larger than the '
                 'window, so the features agree where every stage map is larger than the window (detection / '
                 'segmentation inputs)')
    return ExportResult(out, 'mm-swin', f'{to} SwinTransformer ({to}/models/backbones/swin.py)', call(path, kw),
                        notes=notes)
