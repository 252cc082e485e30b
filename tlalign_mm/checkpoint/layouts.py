"""Recognising checkpoint layouts and loading them, strictly, into our backbones and classifier, which reach the
loaders by name (tlalign_mm's ``FUNCTIONS`` registry).  Layouts: ``'tlalign'`` (ours: the backbones' parameter names,
no head) and the family modules' (see ``keys.py``).
"""
from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed, resize_rel_pos_bias_table_simple
from timm.models import clean_state_dict
from torch import Tensor

from ..models.backbones import TLABackbone
from ..registry import FUNCTIONS
from . import pvt, swin, vit
from .io import load_checkpoint_file

__all__ = ['FAMILIES', 'LAYOUTS', 'LoadReport', 'extract_state_dict', 'detect_layout', 'convert_state_dict',
           'load_backbone_checkpoint', 'load_classifier_checkpoint', 'checkpoint_head', 'foreign_readout',
           'load_head_state', 'family_of', 'read_backbone']

FAMILIES = (pvt, swin, vit)
"""The family modules in detection order (a family another's detector could mistake comes first)."""
LAYOUTS = ('tlalign',) + tuple(lay for f in FAMILIES for lay in f.LAYOUTS)
"""What :func:`detect_layout` returns, besides ``'unknown'``."""
_CONTAINER_KEYS = ('state_dict', 'model', 'module')
_ROOT_MARKERS = ('patch_embed.', 'blocks.0.', 'layers.0.', 'stages.0.', 'cls_token', 'pos_embed', 'patch_embed1.',
                 'block1.0.')


def _top_prefixes(sd: Mapping, hint: str = '', limit: int = 12) -> str:
    """For an error: the top-level prefixes present and the prefixes (before a root marker) under which keys form a
    layout, most keys first, at least half the best (then ``hint``)."""
    cnt = Counter(k.split('.', 1)[0] for k in sd)
    items = [f'{p!r} ({n})' for p, n in cnt.most_common(limit)] + [f'... {len(cnt) - limit} more'] * (len(cnt) > limit)
    found = {k[:i + 1] for k in sd for m in _ROOT_MARKERS if (i := k.find('.' + m)) >= 0}
    scored = sorted((-len(sub), p) for p in found
                    if detect_layout(sub := {k[len(p):]: None for k in sd if k.startswith(p)}) != 'unknown')
    cands = [p for n, p in scored if n * 2 <= scored[0][0]][:5]
    return (f"top-level prefixes present: {', '.join(items) if items else '(none: empty state dict)'}"
            + (f'; backbone-like keys sit under {cands}{hint}' if cands else ''))


def extract_state_dict(checkpoint: Mapping, prefix: str | None = None) -> tuple[dict, str]:
    """The backbone state dict of a loaded checkpoint, and the prefix used.

    Unwraps ``{'state_dict' | 'model' | 'module': sd}`` (mmengine / timm, DeiT / Swin, DeepSpeed; up to three deep),
    keeps tensors, strips ``module.`` / ``_orig_mod.`` (timm's ``clean_state_dict``: DDP, ``torch.compile``), then
    keeps the keys under ``prefix``, stripped (``''``: all; None: ``backbone.`` when present, else all).

    Raises:
        TypeError: no dict inside.
        ValueError: no tensors, or nothing under ``prefix`` (names the prefixes present and likely ones).
    """
    sd: Any = checkpoint
    for _ in range(3):
        sd = next((sd[k] for k in _CONTAINER_KEYS if isinstance(sd, Mapping) and isinstance(sd.get(k), Mapping)), sd)
    if not isinstance(sd, Mapping):
        raise TypeError(f'expected a dict state dict, got {type(sd).__name__}')
    sd = clean_state_dict({k: v for k, v in sd.items() if isinstance(v, Tensor)})
    if not sd:
        raise ValueError(f'the checkpoint holds no tensors; top-level keys: {sorted(map(str, checkpoint))[:20]}')
    prefix = ('backbone.' if any(k.startswith('backbone.') for k in sd) else '') if prefix is None else prefix
    prefix += '.' if prefix and not prefix.endswith('.') else ''
    if prefix and not (sub := {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}):
        raise ValueError(f'no checkpoint key starts with prefix {prefix!r}; {_top_prefixes(sd)}')
    return (sub if prefix else sd), prefix


def detect_layout(state_dict: Mapping[str, Tensor]) -> str:
    """The layout of a backbone state dict (unwrapped, no prefix): one of :data:`LAYOUTS` or ``'unknown'``."""
    return next((lay for f in FAMILIES if (lay := f.detect(state_dict)) is not None), 'unknown')


def convert_state_dict(state_dict: Mapping[str, Tensor], layout: str | None = None
                       ) -> tuple[dict[str, Tensor], str, list[str]]:
    """A backbone state dict of ``layout`` (detected when None) in our names, by its family's read filter: heads and
    recomputed buffers dropped, tensors copied only when reordered (mm Swin merging, mmdet PVT), unknown keys kept.
    Returns (converted state dict, layout, dropped source keys).

    Raises:
        ValueError: an unknown or unsupported layout; two keys mapping to one name.
    """
    layout = detect_layout(state_dict) if layout is None else layout
    out, ignored = family_of(state_dict, layout).convert(state_dict, layout)
    return out, layout, ignored


def family_of(state_dict: Mapping, layout: str = 'tlalign'):
    """The family module that reads ``layout`` (``'tlalign'``: the one whose detector knows the state dict); else
    ValueError (names the known layouts and the first keys)."""
    for family in FAMILIES:
        if layout in family.LAYOUTS or (layout == 'tlalign' and family.detect(state_dict)):
            return family
    raise ValueError(f'unsupported checkpoint layout {layout!r} (known: {", ".join(LAYOUTS)}) for a state dict '
                     f'whose first keys are {list(state_dict)[:5]}: no DeiT / Swin / PVT backbone')


def read_backbone(checkpoint: Mapping, prefix: str | None, source: str, hint: str
                  ) -> tuple[dict[str, Tensor], str, list[str], str]:
    """:func:`extract_state_dict`, :func:`convert_state_dict` of the detected layout: (state dict in our names,
    layout, dropped keys, prefix used); ValueError also for an unknown layout (names the prefixes present, ``hint``)."""
    sd, prefix = extract_state_dict(checkpoint, prefix)
    if (layout := detect_layout(sd)) == 'unknown':
        raise ValueError(f'{source}: unrecognised checkpoint layout (prefix {prefix!r}); '
                         f"{_top_prefixes(sd, ': ' + hint)}")
    return *convert_state_dict(sd, layout), prefix


def _square(n: int, odd: bool = False) -> int | None:
    s = math.isqrt(n)
    return s if s * s == n and not (odd and s % 2 == 0) else None


def _resized(k: str, v: Tensor, t: Tensor, sd: Mapping, model: TLABackbone) -> Tensor:
    """Checkpoint tensor ``v`` fitted to model tensor ``t`` where ``k`` depends on the input or window size.
    ``pos_embed`` (1, P + h*w, C; a ViT's): prefix rows kept (a distillation row dropped for a plain model), the square
    grid resampled to the model's ``patch_grid`` by timm's ``resample_abs_pos_embed`` (its ``interpolate_mode``, no
    antialias, as timm and mmseg).  ``relative_position_bias_table`` ((2W-1)^2, heads): each head's grid bicubic, as
    the official Swin ``load_pretrained``: timm's ``resize_rel_pos_bias_table_simple`` in float32 (not its BEiT-style
    ``resize_rel_pos_bias_table``).  ValueError (why, or empty for any other key) when it cannot be fitted."""
    if k == 'pos_embed' and v.dim() == t.dim() == 3 and v.shape[-1] == t.shape[-1]:
        p_model = model.num_prefix_tokens
        p_ckpt = int('cls_token' in sd) + int('dist_token' in sd) or p_model
        if p_ckpt < p_model:
            raise ValueError(f'the checkpoint has {p_ckpt} prefix token(s), the model {p_model} (a distilled model '
                             'needs a distilled checkpoint)')
        v = torch.cat([v[:, :p_model], v[:, p_ckpt:]], dim=1)   # e.g. distilled DeiT into a plain one: no dist row
        if v.shape != t.shape:
            if (s := _square(v.shape[1] - p_model)) is None:
                raise ValueError(f'with {p_model} prefix token(s), not a square grid; cannot resize')
            v = resample_abs_pos_embed(v, list(model.patch_grid), [s, s], num_prefix_tokens=p_model, antialias=False,
                                       interpolation=model.interpolate_mode)
    elif k.endswith('relative_position_bias_table') and v.dim() == t.dim() == 2 and v.shape[1] == t.shape[1]:
        if (s := _square(t.shape[0], odd=True)) is None or _square(v.shape[0], odd=True) is None:
            raise ValueError('a length that is not (2W-1)^2 for a square window')
        v = resize_rel_pos_bias_table_simple(v.float(), ((s + 1) // 2,) * 2, tuple(t.shape)).contiguous().to(v.dtype)
    else:
        raise ValueError('')
    if v.shape != t.shape:
        raise ValueError(f'after resizing: {tuple(v.shape)}')
    return v


def _fit_to_model(sd: dict[str, Tensor], model: TLABackbone, model_sd: Mapping[str, Tensor], layout: str) -> list[str]:
    """Resize, in place, what :func:`_resized` resizes; raise on any other shape mismatch (before loading)."""
    resized, mismatched = [], []
    for k in [k for k in sd if k in model_sd and sd[k].shape != model_sd[k].shape]:
        old, want = tuple(sd[k].shape), tuple(model_sd[k].shape)
        try:
            sd[k] = _resized(k, sd[k], model_sd[k], sd, model)
            resized.append(f'{k} {old}->{want}')
        except ValueError as e:
            mismatched.append(f'{k}: checkpoint {old} vs model {want}' + (f' ({e})' if str(e) else ''))
    if mismatched:
        raise ValueError(f'checkpoint (layout {layout!r}) does not fit {type(model).__name__}: {len(mismatched)} shape '
                         f'mismatch(es): {_sample(mismatched)} (another architecture or configuration?)')
    return resized


@dataclass
class LoadReport:
    """What :func:`load_backbone_checkpoint` loaded: model keys ``matched`` and ``missing`` (left as initialised),
    converted keys the model lacks (``unexpected``), ``resized`` (``'key (old)->(new)'``), ``ignored`` (heads,
    buffers), ``source`` (a path or ``'<state_dict>'``), ``num_params`` / ``num_matched_params`` (parameter tensors)."""

    layout: str
    matched: list[str]
    missing: list[str]
    unexpected: list[str]
    resized: list[str]
    ignored: list[str] = field(default_factory=list)
    source: str = '<state_dict>'
    prefix: str = ''
    num_params: int = 0
    num_matched_params: int = 0

    def summary(self) -> str:
        """One line: how much was loaded from where, what was resized / missing / unexpected."""
        prefix = f', prefix {self.prefix!r}' if self.prefix else ''
        parts = [f'loaded {self.num_matched_params}/{self.num_params} parameter tensors ({len(self.matched)} keys) '
                 f'from {self.source!r} (layout {self.layout!r}{prefix})']
        parts += [f'{what} {len(keys)}: ' + ', '.join(keys[:n]) + (', ...' if len(keys) > n else '') for what, keys, n
                  in (('resized', self.resized, 3), ('missing', self.missing, 5), ('unexpected', self.unexpected, 5))
                  if keys]
        return '; '.join(parts + [f'ignored {len(self.ignored)} (heads / buffers)'] * bool(self.ignored))


def _sample(keys: list, n: int = 10) -> str:
    return repr(keys[:n]) + (f' ... ({len(keys)} in all)' if len(keys) > n else '')


@FUNCTIONS.register_module()
def load_backbone_checkpoint(model: TLABackbone, path_or_state_dict: str | os.PathLike | Mapping,
                             prefix: str | None = None, map_location: Any = 'cpu', min_match: float = 0.9,
                             source: str | None = None) -> LoadReport:
    """Load pretrained weights of any recognised layout into one of our backbones, or refuse (mmengine's
    ``PretrainedInit`` loads with ``strict=False``: nothing, silently, from an unconverted checkpoint).

    Reads (:func:`~tlalign_mm.checkpoint.load_checkpoint_file`), unwraps (:func:`extract_state_dict`), converts
    (:func:`convert_state_dict`), lets the model fit it (its ``adapt_checkpoint``: PVT v1's class token), resizes
    ``pos_embed`` / ``relative_position_bias_table``, checks, then loads: all checks pass or nothing.

    Args:
        model: one of our backbones (:class:`~tlalign_mm.models.backbones.TLABackbone`).
        path_or_state_dict: a path or URL, or a loaded checkpoint / state dict (named ``source`` in messages).
        prefix: as :func:`extract_state_dict`; map_location: as ``torch.load``.
        min_match: the fraction of the model's parameter tensors the checkpoint must provide.

    Raises:
        TypeError: ``model`` is not a TLABackbone.
        FileNotFoundError, pickle.UnpicklingError: see :func:`~tlalign_mm.checkpoint.load_checkpoint_file`.
        ValueError: nothing under ``prefix``, an unrecognised layout (names the prefixes found), what
            ``adapt_checkpoint`` refuses, or a shape mismatch other than a resizable one (names each key with
            both shapes).
        RuntimeError: under ``min_match`` of the parameters matched (names the layout, the fraction and samples
            of missing and unexpected keys).
    """
    if not isinstance(model, TLABackbone):
        raise TypeError(f'load_backbone_checkpoint loads into a TLABackbone, got {type(model).__name__}')
    mapping = isinstance(path_or_state_dict, Mapping)
    source = (source or '<state_dict>') if mapping else os.fspath(path_or_state_dict)
    ckpt = path_or_state_dict if mapping else load_checkpoint_file(source, map_location)
    sd, layout, ignored, used_prefix = read_backbone(ckpt, prefix, source, 'pass prefix=...')
    sd, dropped = model.adapt_checkpoint(sd, source)   # what depends on the model's configuration
    model_sd, params = model.state_dict(), set(dict(model.named_parameters()))
    missing, unexpected = [k for k in model_sd if k not in sd], [k for k in sd if k not in model_sd]
    if params and (n := sum(k in params for k in sd)) < min_match * len(params):
        raise RuntimeError(
            f'{source}: checkpoint layout {layout!r} (prefix {used_prefix!r}) provides only {n}/{len(params)} '
            f'({n / len(params):.1%}) of {type(model).__name__} parameters, below min_match={min_match:.0%}. '
            f'Missing: {_sample(missing)}. Unexpected: {_sample(unexpected)}. (Wrong model family, or the backbone '
            'sits under another prefix?)')
    resized = _fit_to_model(sd, model, model_sd, layout)
    matched = [k for k in sd if k in model_sd]
    model.load_state_dict({k: sd[k] for k in matched}, strict=False)
    return LoadReport(layout=layout, matched=matched, missing=missing, unexpected=unexpected, resized=resized,
                      ignored=ignored + dropped, source=source, prefix=used_prefix, num_params=len(params),
                      num_matched_params=sum(k in params for k in matched))


@FUNCTIONS.register_module()
def load_classifier_checkpoint(model, path: str) -> None:
    """Load ``path`` into a :class:`~tlalign_mm.TLAImageClassifier` (its ``init_cfg=dict(type='Pretrained')``).

    A checkpoint of this classifier (keys under ``backbone.``; former names renamed: ``head.{weight,bias}``, the
    backbone's ``rename_former_keys``) must fit every tensor but a label rule's ``label_rule.*``.  Any other loads
    its backbone (:func:`load_backbone_checkpoint`) and a head of this head's shape (:func:`load_head_state`).

    Raises:
        ValueError: a classifier checkpoint that does not fit, a backbone the loader refuses, or a head of
            another readout (:func:`load_head_state`).
        RuntimeError: a backbone that matches too little of the model (:func:`load_backbone_checkpoint`).
        FileNotFoundError, pickle.UnpicklingError: see :func:`~tlalign_mm.checkpoint.load_checkpoint_file`.
    """
    from mmengine.logging import print_log
    ckpt = load_checkpoint_file(path)
    sd = ckpt.get('state_dict', ckpt.get('model', ckpt))
    if any(k.startswith('backbone.') for k in sd):
        own = model.state_dict()
        sd = {('head.fc.' + k[5:] if k in ('head.weight', 'head.bias') and 'head.fc.weight' in own else k): v
              for k, v in sd.items()}
        model.backbone.rename_former_keys(sd, 'backbone.')
        missing = [k for k in own if k not in sd and not k.startswith('data_preprocessor.')]
        unexpected = [k for k in sd if k not in own and not k.startswith('label_rule.')]
        shape = [f'{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}' for k, v in own.items()
                 if k in sd and sd[k].shape != v.shape]
        if missing or unexpected or shape:
            raise ValueError(f'{path}: the classifier checkpoint does not fit this model (missing {missing[:10]}, '
                             f'unexpected {unexpected[:10]}, shapes {shape[:10]}); load a checkpoint of the same '
                             "config, or only its backbone with model.backbone.init_cfg=dict(type='Pretrained', "
                             'checkpoint=...)')
        model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
        print_log(f'{type(model).__name__}: loaded all {len(own)} tensors from {path!r}', logger='current')
        return
    load_head_state(model, sd, repr(path), check_only=True)      # refuse before loading anything
    load_backbone_checkpoint(model.backbone, ckpt, source=path)
    print_log(f'{type(model).__name__}: backbone loaded from {path!r}; {load_head_state(model, sd, repr(path))}',
              logger='current')


def checkpoint_head(state_dict: Mapping) -> dict | None:
    """A checkpoint's linear head, ``{'weight': (K, C), 'bias': (K,)}``: ``head.fc.*`` (ours, timm Swin) or
    ``head.*`` (official DeiT / Swin / PVT, timm ViT / PVT); None without one."""
    pre = next((p for p in ('head.fc.', 'head.') if f'{p}weight' in state_dict and f'{p}bias' in state_dict), None)
    return None if pre is None else {'weight': state_dict[f'{pre}weight'], 'bias': state_dict[f'{pre}bias']}


def foreign_readout(state_dict: Mapping) -> tuple[str, str]:
    """The pooled feature a foreign checkpoint's head read, told by its keys (at the backbone's root):
    ``'cls_token'`` with ``cls_token`` (official DeiT / TL-Align, timm ViT, the PVT v1 release), unless
    ``fc_norm`` is there too (timm's token-mean ViT); else ``'avg_featmap'`` (Swin, PVT v2, mmdet's PVT).
    Returns (readout, the key that tells, in words)."""
    if 'cls_token' in state_dict and 'fc_norm.weight' not in state_dict:
        return 'cls_token', "the checkpoint has 'cls_token'"
    if 'cls_token' in state_dict:
        return 'avg_featmap', "the checkpoint has 'cls_token' and 'fc_norm' (timm's token-mean ViT)"
    return 'avg_featmap', "the checkpoint has no 'cls_token'"


def load_head_state(model, state_dict: Mapping, source: str = 'the checkpoint', check_only: bool = False) -> str:
    """Load a checkpoint's head (:func:`checkpoint_head`) into a classifier's when it has its shape, unless a
    foreign head was trained on another pooled feature (:func:`foreign_readout`) than this model's (the class
    token for ``out_type='cls_token'``, else the token mean).  Returns, for the log, ``'head loaded'`` (with
    ``check_only``: would be) or why not.

    Raises:
        ValueError: a head that fits but was trained on another readout (names both, and the key that tells).
    """
    head, fc = checkpoint_head(state_dict), model.head.fc
    if head is None or any(head[k].shape != v.shape for k, v in fc.state_dict().items()):
        return f"the head is newly initialised ({'no head in the checkpoint' if head is None else 'its shape differs'})"
    readout, why = foreign_readout(state_dict)
    theirs, ours = ('the class token' if r == 'cls_token' else 'the token mean' for r in (readout, model.pool_type))
    if theirs != ours and not any(isinstance(k, str) and k.startswith('backbone.') for k in state_dict):
        raise ValueError(
            f"{source}: its head was trained on {theirs} ({why}) but this model's pooled feature is {ours} "
            f"(backbone out_type={model.pool_type!r}). Build the backbone with the checkpoint's readout (PVT v1 "
            "release: out_type='cls_token'), or load the backbone alone (model.backbone.init_cfg=dict("
            "type='Pretrained', checkpoint=...)) and train a new head")
    if not check_only:
        fc.load_state_dict(head)
    return 'head loaded'
