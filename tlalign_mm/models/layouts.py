"""Checkpoint key layouts of the TL-Align backbones: detection, conversion, resizing, strict loading.

Users bring weights in many layouts; this module recognises them, renames them into the
parameter names of :class:`~tlalign_mm.TLAVisionTransformer` / :class:`~tlalign_mm.TLASwinTransformer`
/ :class:`~tlalign_mm.TLAPyramidVisionTransformer` ("our" layout, called ``'tlalign'``), loads the
pretraining classifier's own checkpoints (:func:`load_classifier_checkpoint`, with the head readout
check), resizes what legitimately depends on the input or window
size, and refuses to load anything that does not fit (mmengine's ``PretrainedInit`` loads with
``strict=False`` and so loads nothing, silently, from an unconverted checkpoint).

Layouts recognised (:func:`detect_layout`).  Each backbone file recognises and renames its own
family with its ``detect_layout`` / ``checkpoint_filter_fn``, as timm's model files do, and
registers them here with :func:`register_layouts` when it is imported; this module imports no
backbone, so imports point one way (``layouts`` <- ``backbones``), and :data:`LAYOUTS` is the
registry's union, never a list kept in step by hand:

``'tlalign'``
    Ours: the ViT keys below without a classifier head, Swin keys with output norms ``norm{i}``
    (what :func:`export_backbone` writes), or PVT's ``stages.{i}.{patch_embed,pos_embed,blocks.{j},
    norm}``; also PVT's flat names without a head or ``cls_token`` (ours before the stages,
    renamed on load as ``'official-pvt'``).
``'timm-vit'``
    Official DeiT (facebookresearch/deit) and TL-Align (Euphoria16/TL-Align) releases and timm's
    ``VisionTransformer``: ``patch_embed.proj``, ``cls_token`` (``dist_token``), ``pos_embed``,
    ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``, ``head``
    (``head_dist``, ``fc_norm``).  Same names as ours; heads are dropped.
``'official-swin'``
    microsoft/Swin-Transformer: ``layers.{i}.blocks.{j}...``, ``layers.{i}.downsample`` at the
    end of stage ``i``, final ``norm``, ``head``, buffers ``relative_position_index`` /
    ``attn_mask``.  The final ``norm`` becomes ``norm{last stage}``.
``'timm-swin'``
    timm >= 0.9 ``SwinTransformer``: the patch merging sits at the start of stage ``i`` (i >= 1),
    ``head.fc``.  Its merge order is the official one, so only names move.
``'mmseg-vit'``
    mmseg 1.x ``VisionTransformer`` (``tools/model_converters/vit2mmseg.py`` writes it):
    ``patch_embed.projection``, ``layers.{i}.{ln1,ln2}``,
    ``layers.{i}.attn.attn.{in_proj_weight,in_proj_bias,out_proj}`` (``nn.MultiheadAttention``,
    q/k/v stacked as in ``qkv``), ``layers.{i}.ffn.layers.{0.0,1}``, final ``ln1``.
``'mmpretrain-vit'``
    mmpretrain / mmcls ``VisionTransformer``: as mmseg but ``layers.{i}.attn.{qkv,proj}``.
``'mm-swin'``
    mmseg / mmdet / mmpretrain ``SwinTransformer`` (``swin2mmseg.py``, mmdet's
    ``swin_converter``): ``patch_embed.projection``, ``stages.{i}.blocks.{j}.attn.w_msa.*``,
    ``ffn.layers.{0.0,1}``, ``stages.{i}.downsample`` at the end of stage ``i``, ``norm{i}``.
    Its patch merging gathers the 2x2 children with ``nn.Unfold``: input channel
    ``c * 4 + k`` with ``k`` the row-major kernel offset (0,0), (0,1), (1,0), (1,1), where the
    official order is ``j * C + c`` with ``j`` = (0,0), (1,0), (0,1), (1,1); the downsample
    ``reduction`` / ``norm`` are permuted back.
``'official-pvt'``
    whai362/PVT ``classification/pvt.py`` / ``pvt_v2.py``: ``patch_embed{i}``, ``pos_embed{i}``
    (v1), ``block{i}.{j}``, ``norm`` (v1) or ``norm{i}`` (v2), ``head``, v1's ``cls_token``.  The
    flat names become ours by the stage (``block{i}`` -> ``stages.{i-1}.blocks`` and so on: the
    PVT backbone's ``FLAT_PVT_KEYS``); the class token stays for a class-token model and is
    dropped with its ``pos_embed4`` row for a dense one.
``'mm-pvt'``
    mmdet ``PyramidVisionTransformer(V2)`` (``pvt_convert`` of the release): ``layers.{i}.{0,1,2}``
    (patch embedding, blocks, norm), converted on load by the PVT backbone's filter.
``'timm-pvt'``
    timm ``pvt_v2_b*`` (``timm/models/pvt_v2.py``): ``patch_embed``, ``stages.{i}.downsample`` (the
    next stage's patch embedding), ``stages.{i}.blocks.{j}``, ``stages.{i}.norm``, ``head``.

Every foreign layout but the official ones is also written: :mod:`tlalign_mm.models.export`, through
each backbone file's ``export_state_dict`` (the same :class:`KeyMap` tables read backwards).

Checkpoints are read by mmengine's ``CheckpointLoader`` (local paths, ``https://`` and every
other scheme mmseg / mmdet configs use) with every ``torch.load`` forced to ``weights_only=True``;
the non-tensor objects mmengine keeps in its checkpoints (``HistoryBuffer``, numpy arrays /
scalars / dtypes) are allow-listed by :func:`~tlalign_mm.utils.torch_compat.mmengine_safe_globals` (the one list shared
with the process-wide registration done at ``import tlalign_mm``; re-exported here), never by
unpickling arbitrary code.
"""
from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..utils.checkpoint_io import load_checkpoint_file

__all__ = ['LAYOUTS', 'EXPORT_TARGETS', 'LoadReport', 'KeyMap', 'ExportResult', 'register_layouts',
           'layout_families', 'has_key', 'stage_ids', 'is_recomputed_buffer', 'filter_state_dict', 'rename_key',
           'extract_state_dict', 'detect_layout', 'convert_state_dict', 'resize_pos_embed',
           'resize_relative_position_bias_table', 'load_backbone_checkpoint', 'unsupported_target', 'format_call']

_CONTAINER_KEYS = ('state_dict', 'model', 'module')
_BUFFER_NAMES = ('relative_position_index', 'attn_mask', 'relative_coords_table')
_ROOT_MARKERS = ('patch_embed.', 'blocks.0.', 'layers.0.', 'stages.0.', 'cls_token', 'pos_embed', 'patch_embed1.',
                 'block1.0.')


# ---------------------------------------------------------------------------------------------
# The registry the backbone files fill
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayoutFamily:
    """One backbone file's layouts: ``detect(state_dict) -> layout or None`` and
    ``convert(state_dict, layout) -> (renamed, ignored keys)``, tried in ``priority`` order;
    ``export(state_dict, target, head, readout) -> ExportResult`` writes ours into a library's
    layout (None: the family writes only ours)."""
    name: str
    layouts: tuple
    detect: Callable
    convert: Callable
    priority: int
    export: Callable | None = None


_FAMILIES: dict[str, LayoutFamily] = {}
LAYOUTS: tuple = ('tlalign',)
"""Layouts :func:`detect_layout` can return (besides ``'unknown'``): ours and every registered one."""


def register_layouts(name: str, layouts, detect: Callable, convert: Callable, priority: int,
                     export: Callable | None = None) -> None:
    """Register a backbone family's checkpoint layouts (called by each backbone file at import).

    Args:
        name: the family ('vit', 'swin', 'pvt').
        layouts: the layout names its ``detect`` returns (besides ``'tlalign'``).
        detect, convert: its ``detect_layout`` and ``checkpoint_filter_fn``.
        priority: detection order, lowest first (a family whose keys another family's detector
            could mistake comes first: mm Swin before mm ViT).
        export: its ``export_state_dict(state_dict, target, head, readout) -> ExportResult``, the
            reverse of ``convert`` for the targets of :data:`EXPORT_TARGETS` it can hold.

    Raises:
        ValueError: a layout name another family already registered.
    """
    global LAYOUTS
    taken = {lay: f.name for f in _FAMILIES.values() if f.name != name for lay in f.layouts}
    clash = [lay for lay in layouts if lay in taken]
    if clash:
        raise ValueError(f'checkpoint layouts {clash} of {name!r} are registered by {[taken[c] for c in clash]}')
    _FAMILIES[name] = LayoutFamily(name, tuple(layouts), detect, convert, int(priority), export)
    LAYOUTS = ('tlalign',) + tuple(lay for f in layout_families() for lay in f.layouts)


def layout_families() -> list[LayoutFamily]:
    """The registered families in detection order (importing ``tlalign_mm.models`` registers ours)."""
    return sorted(_FAMILIES.values(), key=lambda f: f.priority)


# ---------------------------------------------------------------------------------------------
# Unwrapping, prefixes
# ---------------------------------------------------------------------------------------------
def _top_prefixes(keys, limit: int = 12) -> str:
    cnt = Counter(k.split('.', 1)[0] for k in keys)
    items = [f'{p!r} ({n})' for p, n in cnt.most_common(limit)]
    if len(cnt) > limit:
        items.append(f'... {len(cnt) - limit} more')
    return ', '.join(items) if items else '(none: empty state dict)'


def _backbone_prefix_candidates(keys) -> list[str]:
    """Prefixes ``P`` under which the keys form a recognised backbone layout, most keys first.

    Candidates are the strings before a ``_ROOT_MARKERS`` entry; kept when the keys under them
    are recognised by :func:`detect_layout` and cover at least half as many keys as the best.
    """
    keys = list(keys)
    cands = set()
    for k in keys:
        for m in _ROOT_MARKERS:
            i = k.find('.' + m)
            if i >= 0:
                cands.add(k[:i + 1])
    scored = []
    for p in cands:
        sub = {k[len(p):]: None for k in keys if k.startswith(p)}
        if detect_layout(sub) != 'unknown':
            scored.append((len(sub), p))
    scored.sort(key=lambda t: (-t[0], t[1]))
    return [p for n, p in scored if n * 2 >= scored[0][0]][:5] if scored else []


def _norm_prefix(prefix: str) -> str:
    return prefix if not prefix or prefix.endswith('.') else prefix + '.'


def extract_state_dict(checkpoint: Mapping, prefix: str | None = None) -> tuple[dict, str]:
    """Find the backbone state dict inside a loaded checkpoint.

    Unwraps ``{'state_dict': sd, 'meta': ...}`` (mmengine / timm), ``{'model': sd}`` (DeiT,
    Swin), ``{'module': sd}`` (DeepSpeed), nested once more if needed, or takes a raw state dict;
    keeps tensor values only; strips the DistributedDataParallel ``module.`` prefix.  Then:

    * ``prefix`` given (``'backbone.'`` or ``'backbone'``): keeps the keys under it, stripped;
      ``''`` keeps every key.
    * ``prefix=None``: keys under ``backbone.`` if there are any (mmengine classifier /
      segmentor / detector checkpoints), else every key.

    Args:
        checkpoint: what :func:`load_checkpoint_file` returned, or a state dict.
        prefix: see above.

    Returns:
        (state dict with backbone-relative keys, prefix used).

    Raises:
        ValueError: nothing is left under ``prefix``, or no tensors at all; the message lists the
            top-level prefixes present (and likely backbone prefixes).
    """
    sd: Any = checkpoint
    for _ in range(3):
        if not isinstance(sd, Mapping):
            break
        inner = next((sd[k] for k in _CONTAINER_KEYS if isinstance(sd.get(k), Mapping)), None)
        if inner is None:
            break
        sd = inner
    if not isinstance(sd, Mapping):
        raise TypeError(f'expected a dict state dict, got {type(sd).__name__}')
    sd = {k[len('module.'):] if k.startswith('module.') else k: v
          for k, v in sd.items() if isinstance(v, Tensor)}
    if not sd:
        raise ValueError('the checkpoint holds no tensors; top-level keys: '
                         f'{sorted(map(str, checkpoint))[:20]}')
    if prefix is None:
        prefix = 'backbone.' if any(k.startswith('backbone.') for k in sd) else ''
    prefix = _norm_prefix(prefix)
    if prefix:
        sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if not sub:
            cands = _backbone_prefix_candidates(sd)
            hint = f'; backbone-like keys sit under {cands}' if cands else ''
            raise ValueError(f'no checkpoint key starts with prefix {prefix!r}; top-level prefixes '
                             f'present: {_top_prefixes(sd)}{hint}')
        sd = sub
    return sd, prefix


# ---------------------------------------------------------------------------------------------
# Layout detection and conversion
# ---------------------------------------------------------------------------------------------
def has_key(sd: Mapping, pattern: str) -> bool:
    """Whether a key of ``sd`` matches the regex ``pattern`` at its start."""
    rx = re.compile(pattern)
    return any(rx.match(k) for k in sd)


def stage_ids(sd: Mapping, root: str) -> list[int]:
    """The sorted stage numbers ``i`` of keys ``{root}.{i}.*``."""
    rx = re.compile(rf'{root}\.(\d+)\.')
    return sorted({int(m.group(1)) for k in sd if (m := rx.match(k))})


def detect_layout(state_dict: Mapping[str, Tensor]) -> str:
    """Name the layout of a backbone state dict (keys already unwrapped / un-prefixed).

    Each backbone file recognises its own family (``detect_layout`` in
    ``tlalign_mm/models/backbones/swin.py`` and ``vit.py``; the rules are in their docstrings
    and in this module's).

    Args:
        state_dict: mapping of key -> tensor.

    Returns:
        One of :data:`LAYOUTS` or ``'unknown'``.
    """
    for family in layout_families():
        layout = family.detect(state_dict)
        if layout is not None:
            return layout
    return 'unknown'


def is_recomputed_buffer(k: str) -> bool:
    """Whether ``k`` names a buffer the model recomputes (relative position index, attention mask)."""
    return k.rsplit('.', 1)[-1] in _BUFFER_NAMES


def convert_state_dict(state_dict: Mapping[str, Tensor], layout: str | None = None
                       ) -> tuple[dict[str, Tensor], str, list[str]]:
    """Rename a backbone state dict of any recognised layout into ours.

    Drops classifier heads (``head.*``, ``head.fc.*``, ``head_dist.*``, ``fc_norm.*``) and the
    buffers ``relative_position_index``, ``attn_mask``, ``relative_coords_table`` (recomputed by
    the model); Swin's final ``norm`` becomes ``norm{last stage}``; the DeiT ``norm`` stays
    ``norm``.  Tensors are not copied unless reordered (mm patch merging).  Keys that no rule
    knows are kept as they are (they then show up as "unexpected" when loading).  The renaming
    is the backbone file's ``checkpoint_filter_fn`` (as in timm).

    Args:
        state_dict: backbone-relative keys (see :func:`extract_state_dict`).
        layout: one of :data:`LAYOUTS`; detected when None.

    Returns:
        (converted state dict, layout, ignored keys (source names)).

    Raises:
        ValueError: unknown / unsupported layout.
    """
    if layout is None:
        layout = detect_layout(state_dict)
    if layout not in LAYOUTS:
        raise ValueError(f'unsupported checkpoint layout {layout!r}; known: {LAYOUTS}')
    for family in layout_families():
        if layout in family.layouts or (layout == 'tlalign' and family.detect(state_dict)):
            out, ignored = family.convert(state_dict, layout)
            return out, layout, ignored
    raise ValueError(f'no backbone family converts layout {layout!r}')  # LAYOUTS lists only theirs


def _detect_or_raise(sd: Mapping[str, Tensor], source: str, prefix: str, prefix_hint: str) -> str:
    """:func:`detect_layout`, or the one unknown-layout error (names the prefixes present)."""
    layout = detect_layout(sd)
    if layout == 'unknown':
        cands = _backbone_prefix_candidates(sd)
        hint = f'; backbone-like keys sit under {cands}: {prefix_hint}' if cands else ''
        raise ValueError(f'{source}: unrecognised checkpoint layout (prefix {prefix!r}); '
                         f'top-level prefixes present: {_top_prefixes(sd)}{hint}')
    return layout


def filter_state_dict(state_dict: Mapping[str, Tensor], layout: str, rename) -> tuple[dict[str, Tensor], list[str]]:
    """The loop every backbone's ``checkpoint_filter_fn`` shares.

    Drops recomputed buffers and, for a foreign layout, classifier heads (``head``, ``head_dist``,
    ``fc_norm``); renames the rest with ``rename(key, tensor) -> (new key, tensor)``.

    Returns:
        (renamed state dict, dropped source keys).

    Raises:
        ValueError: two source keys map to one name.
    """
    out: dict[str, Tensor] = {}
    ignored: list[str] = []
    for k, v in state_dict.items():
        if is_recomputed_buffer(k) or (layout != 'tlalign' and re.match(r'(head|head_dist|fc_norm)\.', k)):
            ignored.append(k)
            continue
        new, v = rename(k, v)
        if new in out:
            raise ValueError(f'two checkpoint keys map to {new!r} (layout {layout!r})')
        out[new] = v
    return out, ignored


def rename_key(key: str, rules, first_only: bool) -> str:
    """Apply ``(compiled regex, replacement)`` rules to a key: the first that matches when
    ``first_only``, else each in turn.  Used by the backbones' ``checkpoint_filter_fn``."""
    for rx, repl in rules:
        new = rx.sub(repl, key, count=1)
        if new != key:
            key = new
            if first_only:
                break
    return key


_PLACEHOLDER = re.compile(r'\{([a-z])([+-]\d+)?\}')


class KeyMap:
    """Key names of one foreign layout, written once as ``(ours, theirs)`` template pairs and used
    both ways: :meth:`to_ours` when reading that layout (a backbone's ``checkpoint_filter_fn``),
    :meth:`from_ours` when exporting to it (its ``export_state_dict``).

    A template is a key, or a key prefix when it ends in ``'.'``; ``{i}`` (any lower-case letter)
    stands for a number, ``{i+1}`` / ``{i-2}`` for that number shifted (timm's Swin holds stage
    ``i``'s patch merging in ``layers.{i+1}``).  Pairs are tried in order and the first whose
    template matches the start of the key (the whole key for a template without the final dot)
    renames it; the rest of the key is kept.

    Example: ``KeyMap([('blocks.{i}.norm1.', 'layers.{i}.ln1.')]).from_ours('blocks.3.norm1.weight')``
    is ``'layers.3.ln1.weight'``.

    Args:
        pairs: ``(our template, their template)``, each index field (``{i}``, ``{j}``,
            ``{i+1}``) appearing once in each.
    """

    def __init__(self, pairs):
        self.pairs = tuple(pairs)
        self._to_ours = [self._rule(theirs, ours) for ours, theirs in self.pairs]
        self._from_ours = [self._rule(ours, theirs) for ours, theirs in self.pairs]

    @staticmethod
    def _rule(src: str, dst: str):
        parts, offsets, pos = [], {}, 0
        for m in _PLACEHOLDER.finditer(src):
            parts += [re.escape(src[pos:m.start()]), rf'(?P<{m.group(1)}>\d+)']
            offsets[m.group(1)] = int(m.group(2) or 0)
            pos = m.end()
        parts.append(re.escape(src[pos:]))
        rx = re.compile('^' + ''.join(parts) + ('' if src.endswith('.') else '$'))

        def fill(m):
            vals = {k: int(v) - offsets[k] for k, v in m.groupdict().items()}
            return _PLACEHOLDER.sub(lambda p: str(vals[p.group(1)] + int(p.group(2) or 0)), dst)
        return rx, fill

    @staticmethod
    def _apply(rules, key: str) -> str:
        for rx, fill in rules:
            m = rx.match(key)
            if m:
                return fill(m) + key[m.end():]
        return key

    def to_ours(self, key: str) -> str:
        """Their key -> ours (unchanged when no template matches)."""
        return self._apply(self._to_ours, key)

    def from_ours(self, key: str) -> str:
        """Our key -> theirs (unchanged when no template matches)."""
        return self._apply(self._from_ours, key)


EXPORT_TARGETS = ('tlalign', 'timm', 'mmseg', 'mmdet', 'mmpretrain')
"""Libraries :func:`tlalign_mm.models.export.export_state_dict` writes for (``'tlalign'``: ours)."""


@dataclass
class ExportResult:
    """What a backbone file's ``export_state_dict`` made of our state dict for one library.

    Attributes:
        state_dict: the tensors under the target model's names (head included where it has one).
        layout: the layout name our reader gives it back (:func:`detect_layout`), e.g. ``'timm-vit'``.
        model: the target class, with the upstream file its key names come from.
        build: a Python call that builds a target model this state dict loads into with
            ``strict=True`` (arch, sizes, pooling), e.g. ``timm.create_model(...)``.
        dropped: our parameter names the target cannot hold; :func:`~tlalign_mm.models.export.
            export_state_dict` refuses to write unless told to drop them.
        notes: what else a user must know (sizes the model must be built at, numerics).
    """

    state_dict: dict
    layout: str
    model: str
    build: str
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def format_call(fn: str, **kwargs) -> str:
    """``fn(k=v, ...)`` with each value's ``repr`` (a tuple for a list): the build line of an :class:`ExportResult`."""
    args = ', '.join(f'{k}={tuple(v) if isinstance(v, list) else v!r}' for k, v in kwargs.items())
    return f'{fn}({args})'


def unsupported_target(what: str, target: str, alternatives: str) -> ValueError:
    """The one error for a target that cannot hold an architecture: names both and what to use.

    Args:
        what: our architecture (``'PVT v1'``); target: the ``--to`` value; alternatives: the
            targets that hold it.
    """
    return ValueError(f'cannot export {what} to {target!r}: {alternatives}')


# ---------------------------------------------------------------------------------------------
# Resizing
# ---------------------------------------------------------------------------------------------
def _square_side(n: int) -> int | None:
    s = math.isqrt(n)
    return s if s * s == n else None


def resize_pos_embed(pos_embed: Tensor, new_grid: tuple[int, int], num_prefix_tokens: int = 1,
                     old_grid: tuple[int, int] | None = None, mode: str = 'bicubic') -> Tensor:
    """Resample an absolute position embedding to another patch grid.

    Prefix-token rows are kept; the grid part is resampled with timm's
    ``resample_abs_pos_embed(..., antialias=False)`` (bicubic, ``align_corners=False``: the
    interpolation timm and mmseg's ``resize_pos_embed`` apply).

    Args:
        pos_embed: (1, P + h*w, C).
        new_grid: (H, W) patch grid of the model.
        num_prefix_tokens: P.
        old_grid: (h, w); square when None.
        mode: interpolation mode.

    Returns:
        (1, P + H*W, C), same dtype.

    Raises:
        ValueError: the grid size cannot be inferred (not a square) or does not match old_grid.
    """
    from timm.layers import resample_abs_pos_embed
    n = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        s = _square_side(n)
        if s is None:
            raise ValueError(f'pos_embed {tuple(pos_embed.shape)} with {num_prefix_tokens} prefix '
                             f'token(s): {n} grid tokens is not a square grid; cannot resize')
        old_grid = (s, s)
    if old_grid[0] * old_grid[1] != n:
        raise ValueError(f'pos_embed {tuple(pos_embed.shape)} does not hold a {old_grid} grid')
    return resample_abs_pos_embed(pos_embed, list(new_grid), list(old_grid),
                                  num_prefix_tokens=num_prefix_tokens, interpolation=mode,
                                  antialias=False)


def resize_relative_position_bias_table(table: Tensor, window: int | tuple[int, int]) -> Tensor:
    """Resize a Swin relative-position bias table to another window.

    The table is a (2W-1) x (2W-1) grid per head; each head's grid is resampled bicubically
    (``align_corners=False``), as the official Swin ``load_pretrained`` does for fine-tuning at
    another window size (e.g. 7 -> 12 for 384px).

    Args:
        table: ((2W-1)^2, H) (square source window).
        window: new window size W' (int or (Wh, Ww)).

    Returns:
        ((2Wh'-1) * (2Ww'-1), H), same dtype.

    Raises:
        ValueError: the table length is not the square of an odd number.
    """
    wh, ww = (window, window) if isinstance(window, int) else tuple(window)
    length, heads = table.shape
    s = _square_side(length)
    if s is None or s % 2 == 0:
        raise ValueError(f'relative_position_bias_table {tuple(table.shape)}: length is not '
                         '(2W-1)^2 for a square window')
    grid = table.float().transpose(0, 1).reshape(1, heads, s, s)
    grid = F.interpolate(grid, size=(2 * wh - 1, 2 * ww - 1), mode='bicubic', align_corners=False)
    return grid.reshape(heads, -1).transpose(0, 1).contiguous().to(table.dtype)


def _num_prefix_tokens_in(sd: Mapping[str, Tensor]) -> int:
    return int('cls_token' in sd) + int('dist_token' in sd)


def _fit_to_model(sd: dict[str, Tensor], model: nn.Module, model_sd: Mapping[str, Tensor],
                  layout: str) -> list[str]:
    """Resize pos_embed / relative tables in place; raise on any other shape mismatch."""
    resized: list[str] = []
    mismatched: list[str] = []
    for k in list(sd):
        if k not in model_sd:
            continue
        v, t = sd[k], model_sd[k]
        if v.shape == t.shape:
            continue
        old = tuple(v.shape)
        try:
            if k == 'pos_embed' and v.dim() == 3 and t.dim() == 3 and v.shape[-1] == t.shape[-1]:
                p_model = getattr(model, 'num_prefix_tokens', 1)
                p_ckpt = _num_prefix_tokens_in(sd) or p_model
                if p_ckpt < p_model:
                    raise ValueError(f'pos_embed: the checkpoint has {p_ckpt} prefix token(s), the '
                                     f'model {p_model} (a distilled model needs a distilled checkpoint)')
                if p_ckpt > p_model:  # e.g. distilled DeiT into a plain one: drop the dist row
                    v = torch.cat([v[:, :p_model], v[:, p_ckpt:]], dim=1)
                grid = getattr(model, 'patch_grid', None)
                if grid is None:
                    s = _square_side(t.shape[1] - p_model)
                    if s is None:
                        raise ValueError('pos_embed: cannot infer the model grid')
                    grid = (s, s)
                if v.shape != t.shape:  # a square checkpoint grid resampled to the model's
                    v = resize_pos_embed(v, tuple(grid), p_model, None,
                                         getattr(model, 'interpolate_mode', 'bicubic'))
            elif k.endswith('relative_position_bias_table') and v.dim() == 2 and t.dim() == 2 \
                    and v.shape[1] == t.shape[1]:
                s = _square_side(t.shape[0])
                if s is None or s % 2 == 0:
                    raise ValueError(f'{k}: model table {tuple(t.shape)} is not for a square window')
                v = resize_relative_position_bias_table(v, (s + 1) // 2)
            else:
                mismatched.append(f'{k}: checkpoint {old} vs model {tuple(t.shape)}')
                continue
        except ValueError as e:
            mismatched.append(f'{k}: checkpoint {old} vs model {tuple(t.shape)} ({e})')
            continue
        if v.shape != t.shape:
            mismatched.append(f'{k}: checkpoint {old} vs model {tuple(t.shape)} (after resizing: '
                              f'{tuple(v.shape)})')
            continue
        sd[k] = v
        resized.append(f'{k} {old}->{tuple(v.shape)}')
    if mismatched:
        more = f' ... and {len(mismatched) - 10} more' if len(mismatched) > 10 else ''
        raise ValueError(f"checkpoint (layout {layout!r}) does not fit {type(model).__name__}: "
                         f"{len(mismatched)} shape mismatch(es): " + '; '.join(mismatched[:10]) + more
                         + ' (a checkpoint of another architecture or configuration?)')
    return resized


# ---------------------------------------------------------------------------------------------
# Loading into a model, export
# ---------------------------------------------------------------------------------------------
@dataclass
class LoadReport:
    """What :func:`load_backbone_checkpoint` loaded.

    Attributes:
        layout: detected source layout (:func:`detect_layout`).
        matched: model state-dict keys that were loaded.
        missing: model state-dict keys the checkpoint did not provide (left as initialised).
        unexpected: converted checkpoint keys the model does not have (not loaded).
        resized: ``'key (old shape)->(new shape)'`` for resized tensors.
        ignored: checkpoint keys dropped on purpose (heads, recomputed buffers).
        source: the path (or ``'<state_dict>'``); prefix: the key prefix used.
        num_params: parameter tensors of the model; num_matched_params: how many were loaded.
    """

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
        def sample(keys):
            return ', '.join(keys[:5]) + (', ...' if len(keys) > 5 else '')

        parts = [f'loaded {self.num_matched_params}/{self.num_params} parameter tensors '
                 f'({len(self.matched)} keys) from {self.source!r} '
                 f'(layout {self.layout!r}{", prefix " + repr(self.prefix) if self.prefix else ""})']
        if self.resized:
            parts.append(f'resized {len(self.resized)}: ' + ', '.join(self.resized[:3])
                         + (', ...' if len(self.resized) > 3 else ''))
        if self.missing:
            parts.append(f'missing {len(self.missing)}: {sample(self.missing)}')
        if self.unexpected:
            parts.append(f'unexpected {len(self.unexpected)}: {sample(self.unexpected)}')
        if self.ignored:
            parts.append(f'ignored {len(self.ignored)} (heads / buffers)')
        return '; '.join(parts)


def _sample(keys, n: int = 10) -> str:
    keys = list(keys)
    return (repr(keys[:n]) + (f' ... ({len(keys)} in all)' if len(keys) > n else '')) if keys else '[]'


def load_backbone_checkpoint(model: nn.Module, path_or_state_dict: str | os.PathLike | Mapping,
                             prefix: str | None = None, map_location: Any = 'cpu',
                             min_match: float = 0.9, source: str | None = None) -> LoadReport:
    """Load pretrained weights of any recognised layout into a TL-Align backbone.

    Steps: :func:`load_checkpoint_file` (weights_only) -> :func:`extract_state_dict` (unwrap,
    ``module.``, ``backbone.`` or ``prefix``) -> :func:`detect_layout` ->
    :func:`convert_state_dict` -> the model's ``adapt_checkpoint(state_dict, source)`` if it has
    one (PVT: keep or drop v1's class token, refuse a class-token model a checkpoint without
    ``cls_token``) -> resize ``pos_embed`` (model grid / prefix tokens) and
    ``relative_position_bias_table`` (model window) -> check -> ``load_state_dict(strict=False)``
    of the matched tensors only.  Nothing is loaded unless every check passes.

    Args:
        model: a :class:`~tlalign_mm.TLAVisionTransformer` / :class:`~tlalign_mm.TLASwinTransformer`
            (or any module with our parameter names).
        path_or_state_dict: checkpoint path, or an already loaded checkpoint / state dict.
        prefix: key prefix of the backbone (default: ``backbone.`` when present, else none).
        map_location: as ``torch.load``.
        min_match: minimum fraction of the model's parameter tensors the checkpoint must
            provide.
        source: the name messages give an already loaded checkpoint (its path, say); default
            ``'<state_dict>'``.

    Returns:
        :class:`LoadReport`.

    Raises:
        FileNotFoundError, pickle.UnpicklingError: see :func:`load_checkpoint_file`.
        ValueError: prefix with no keys, unrecognised layout (message lists the prefixes found),
            what the model's ``adapt_checkpoint`` refuses, or a shape mismatch other than a
            resizable pos_embed / bias table (message names each key with both shapes, e.g. a
            deit-tiny checkpoint for deit-small).
        RuntimeError: under ``min_match`` of the parameters matched (message names the layout,
            the fraction and samples of missing and unexpected keys).
    """
    if isinstance(path_or_state_dict, Mapping):
        ckpt, source = path_or_state_dict, source or '<state_dict>'
    else:
        source = os.fspath(path_or_state_dict)
        ckpt = load_checkpoint_file(source, map_location)
    sd, used_prefix = extract_state_dict(ckpt, prefix)
    layout = _detect_or_raise(sd, source, used_prefix, 'pass prefix=...')
    sd, layout, ignored = convert_state_dict(sd, layout)
    adapt = getattr(model, 'adapt_checkpoint', None)
    if callable(adapt):      # what depends on the model's configuration (PVT v1's class token)
        sd, dropped = adapt(sd, source)
        ignored = ignored + dropped

    model_sd = model.state_dict()
    param_names = set(dict(model.named_parameters()))
    named = [k for k in sd if k in model_sd]
    n_named_params = sum(k in param_names for k in named)
    if param_names and n_named_params < min_match * len(param_names):
        missing = [k for k in model_sd if k not in sd]
        unexpected = [k for k in sd if k not in model_sd]
        raise RuntimeError(
            f'{source}: checkpoint layout {layout!r} (prefix {used_prefix!r}) provides only '
            f'{n_named_params}/{len(param_names)} ({n_named_params / len(param_names):.1%}) of '
            f'{type(model).__name__} parameters, below min_match={min_match:.0%}. '
            f'Missing: {_sample(missing)}. Unexpected: {_sample(unexpected)}. '
            f'(Wrong model family, or the backbone sits under another prefix?)')
    resized = _fit_to_model(sd, model, model_sd, layout)

    matched = [k for k in sd if k in model_sd]
    unexpected = [k for k in sd if k not in model_sd]
    missing = [k for k in model_sd if k not in sd]
    result = model.load_state_dict({k: sd[k] for k in matched}, strict=False)
    if result.unexpected_keys:  # cannot happen: matched keys are model keys
        raise RuntimeError(f'unexpected keys while loading: {result.unexpected_keys}')
    return LoadReport(layout=layout, matched=matched, missing=missing, unexpected=unexpected,
                      resized=resized, ignored=ignored, source=source, prefix=used_prefix,
                      num_params=len(param_names),
                      num_matched_params=sum(k in param_names for k in matched))
