"""What the family modules (``vit.py``, ``swin.py``, ``pvt.py``) share: key tables, filter helpers, export record.

A family module holds ``NAME``, ``MODEL`` (our backbone class), ``LAYOUTS`` (the foreign layouts it reads) and
``detect(sd)`` (its layout of a state dict, ``'tlalign'`` for ours; None: another family's), ``convert(sd, layout)``
(the read filter: our state dict and the dropped keys), ``arch(sd)`` (what our weights tell, in ``MODEL``'s argument
names), ``stock(a, lib)`` (the ``lib`` class path and keyword arguments of the architecture ``a``, :func:`arch`'s
or a config's, its keys consumed; ValueError for what ``lib`` cannot hold) and ``export(sd, to, head, readout)``
(our state dict for ``to``, :class:`ExportResult`; arguments: :func:`~tlalign_mm.checkpoint.export_state_dict`'s).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor

__all__ = ['KeyMap', 'has_key', 'stage_ids', 'filter_state_dict', 'ExportResult', 'call', 'ratio', 'no_counterpart',
           'stock_args']

_PLACEHOLDER = re.compile(r'\{([a-z])([+-]\d+)?\}')
_BUFFERS = ('relative_position_index', 'attn_mask', 'relative_coords_table')
_HEADS = re.compile(r'(head|head_dist|fc_norm)\.')


class KeyMap:
    """A foreign layout's key names as ``(ours, theirs)`` template pairs, read both ways (:meth:`to_ours`,
    :meth:`from_ours`).  A template is a key, or a prefix when it ends in ``'.'``; ``{i}`` (a lower-case letter)
    is a number, ``{i+1}`` that number shifted.  The first matching pair renames the key, the rest of it kept;
    no match leaves it unchanged: ``KeyMap([('blocks.{i}.norm1.', 'layers.{i}.ln1.')]).from_ours(
    'blocks.3.norm1.weight') == 'layers.3.ln1.weight'``."""

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
        rx = re.compile(''.join(parts) + re.escape(src[pos:]) + ('' if src.endswith('.') else '$'))

        def fill(m):
            vals = {k: int(v) - offsets[k] for k, v in m.groupdict().items()}
            return _PLACEHOLDER.sub(lambda p: str(vals[p.group(1)] + int(p.group(2) or 0)), dst)
        return rx, fill

    @staticmethod
    def _apply(rules, key: str) -> str:
        return next((fill(m) + key[m.end():] for rx, fill in rules if (m := rx.match(key))), key)

    def to_ours(self, key: str) -> str:
        """Their key -> ours."""
        return self._apply(self._to_ours, key)

    def from_ours(self, key: str) -> str:
        """Our key -> theirs."""
        return self._apply(self._from_ours, key)


def has_key(sd: Mapping, pattern: str) -> bool:
    """Whether a key of ``sd`` matches the regex ``pattern`` at its start."""
    rx = re.compile(pattern)
    return any(rx.match(k) for k in sd)


def stage_ids(sd: Mapping, root: str) -> list[int]:
    """The sorted numbers ``i`` of the keys ``{root}.{i}.*`` (``root`` a regex)."""
    rx = re.compile(rf'{root}\.(\d+)\.')
    return sorted({int(m.group(1)) for k in sd if (m := rx.match(k))})


def filter_state_dict(state_dict: Mapping[str, Tensor], layout: str, rename) -> tuple[dict[str, Tensor], list[str]]:
    """The loop of the families' read filters (timm's ``checkpoint_filter_fn``): drop recomputed buffers and, for
    a foreign layout, classifier heads (``head``, ``head_dist``, ``fc_norm``); ``rename(key, tensor) -> [(key,
    tensor), ...]`` the rest.  Returns (state dict, dropped keys); raises ValueError when two keys map to one name."""
    out, source, ignored = {}, {}, []
    for k, v in state_dict.items():
        if k.rsplit('.', 1)[-1] in _BUFFERS or (layout != 'tlalign' and _HEADS.match(k)):
            ignored.append(k)
            continue
        for new, t in rename(k, v):
            if new in out:
                raise ValueError(f'checkpoint keys {source[new]!r} and {k!r} both map to {new!r} (layout {layout!r})')
            out[new], source[new] = t, k
    return out, ignored


@dataclass
class ExportResult:
    """What a family's writer made of our backbone state dict for one library: ``state_dict`` under the target's
    names (head included where it has one), ``layout`` (what our reader calls it), ``model`` (the class and its
    upstream file), ``build`` (a call building a model it loads into with ``strict=True``), ``dropped`` (our
    parameters the target cannot hold), ``notes`` (sizes to build at, numerics)."""

    state_dict: dict
    layout: str
    model: str
    build: str
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def timm(cls, model: str, layout: str, out: dict, head: Mapping | None, head_key: str, name: str | None,
             custom: dict, dropped=(), notes=(), **extra) -> ExportResult:
        """A family's export to timm (``model``: the class and its file) of ``out``, renamed already: ``head``
        (``{'weight': (K, C), 'bias': (K,)}``) added under ``head_key``; the build line ``timm.create_model`` of the
        stock model ``name``, else of the ``custom`` architecture (its ``model_name`` the base), with
        ``num_classes`` (K, 0 without a head) and ``extra``."""
        if head:
            out[head_key + 'weight'], out[head_key + 'bias'] = head['weight'], head['bias']
        kw = dict(model_name=name, pretrained=False) if name else dict(custom, pretrained=False)
        kw |= dict(num_classes=head['weight'].shape[0] if head else 0, **extra)
        return cls(out, layout, f'timm {model}', call('timm.create_model', kw), list(dropped), list(notes))


def call(fn: str, kwargs: Mapping) -> str:
    """``fn(k=v, ...)``, each value's ``repr`` (a list as a tuple): a build line."""
    return f'{fn}(' + ', '.join(f'{k}={tuple(v) if isinstance(v, list) else v!r}' for k, v in kwargs.items()) + ')'


def ratio(r: float) -> float | int:
    """An integral MLP ratio as an int: the stock classes build ``Linear(C, mlp_ratio * C)``, which needs one."""
    return int(r) if float(r).is_integer() else r


def stock_args(a: dict, cls: str, extra=(), img: str = 'pretrain_img_size', drop=()) -> dict:
    """Pop ``out_type`` (anything but ``'featmap'`` raises ValueError: the stock ``cls`` returns feature maps
    only) and the ``drop`` keys (what ``cls`` lacks) from a stock-model argument dict; return ``img_size`` (as
    ``img``, a sequence as a tuple) when set, and the ``extra`` keys it holds (passed on as given)."""
    if (out_type := a.pop('out_type', 'featmap')) != 'featmap':
        raise ValueError(f"stock {cls} returns feature maps only: out_type={out_type!r}, use 'featmap'")
    for k in drop:
        a.pop(k, None)
    size = a.pop('img_size', None)
    return {k: a.pop(k) for k in extra if k in a} | ({} if size is None else {img: size if isinstance(size, int)
                                                                                else tuple(size)})


def no_counterpart(what: str, target: str, alternatives: str) -> ValueError:
    """The one error for an architecture a target library cannot hold: names both, and what can."""
    return ValueError(f'{what} has no counterpart in {target!r}: {alternatives}')

