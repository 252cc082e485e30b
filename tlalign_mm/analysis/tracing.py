"""Record the TL-Align label embedding after every block of a label-carrying backbone.

The backbones return only the final labels; the analysis tools also need the labels after each
block.  Every block returns ``(x, labels)`` (ViT: ``blocks[i](x, labels)``; Swin:
``layers[s].blocks[j](x, hw, labels)``; PVT: ``stages[s].blocks[j](x, hw, labels, s + 1)``), so a
forward hook on each block sees that layer's labels.  Nothing here changes the model: hooks are
removed when the context exits.

Block numbering: ViT blocks are numbered ``0 .. num_layers - 1``; Swin and PVT blocks get a
*global* index running over the stages (``stage 0`` blocks first), plus their ``(stage, block)`` pair.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch.nn as nn
from torch import Tensor

from ..align import read_labels
from ..models.backbones.base import TLABackbone

__all__ = ['BlockRef', 'iter_blocks', 'block_names', 'record_block_labels', 'LabelTrace', 'parse_layer_spec',
           'source_share_readout']


@dataclass(frozen=True)
class BlockRef:
    """One transformer block of a backbone.

    Attributes:
        index: global block index (0-based, over all stages for Swin and PVT).
        stage: stage index (always 0 for ViT).
        block: index of the block inside its stage (equals ``index`` for ViT).
        module: the block module.
    """
    index: int
    stage: int
    block: int
    module: nn.Module = field(compare=False, repr=False)


def iter_blocks(backbone: nn.Module) -> list[BlockRef]:
    """All label blocks of a TL-Align backbone in forward order, with their stage and position: its
    declared :meth:`~tlalign_mm.models.backbones.TLABackbone.label_blocks` and
    :meth:`~tlalign_mm.models.backbones.TLABackbone.label_block_ids`.

    Args:
        backbone: a :class:`~tlalign_mm.models.backbones.TLABackbone`.

    Returns:
        list of :class:`BlockRef`, ``index`` = position in the list.

    Raises:
        TypeError: not a TLABackbone, or one that cannot carry labels.
    """
    if not isinstance(backbone, TLABackbone) or not backbone.carries_labels:
        raise TypeError(f'{type(backbone).__name__} is not a label-carrying TLABackbone: no blocks to trace')
    return [BlockRef(i, stage, j, blk)
            for i, (blk, (stage, j)) in enumerate(zip(backbone.label_blocks(), backbone.label_block_ids()))]


def block_names(blocks: Sequence[BlockRef]) -> list[str]:
    """Display names: ``'0', '1', ...`` for a single-stage (ViT) backbone, ``'s.j'`` (stage.block)
    for a multi-stage (Swin, PVT) one."""
    multi = len({b.stage for b in blocks}) > 1
    return [f'{b.stage}.{b.block}' if multi else str(b.index) for b in blocks]


def parse_layer_spec(specs: Sequence[str | int], blocks: Sequence[BlockRef]) -> list[BlockRef]:
    """Resolve user layer choices to blocks.

    Args:
        specs: each an int / digit string (global block index, negative counts from the end) or
            ``'S.J'`` / ``'S:J'`` (block ``J`` of stage ``S``, Swin and PVT; ``J`` may be negative).
        blocks: :func:`iter_blocks` of the backbone.

    Returns:
        the chosen blocks, in the order given, duplicates removed.

    Raises:
        ValueError: an unparsable spec or an index out of range (the message lists the valid
            range / stage depths).
    """
    depths: dict[int, int] = {}
    for b in blocks:
        depths[b.stage] = depths.get(b.stage, 0) + 1
    out: list[BlockRef] = []
    for spec in specs:
        s = str(spec).strip()
        try:
            if '.' in s or ':' in s:
                st, bl = (int(v) for v in s.replace(':', '.').split('.'))
                if st not in depths:
                    raise ValueError
                bl = bl + depths[st] if bl < 0 else bl
                ref = next(b for b in blocks if b.stage == st and b.block == bl)
            else:
                i = int(s)
                i = i + len(blocks) if i < 0 else i
                if not 0 <= i < len(blocks):
                    raise ValueError
                ref = blocks[i]
        except (ValueError, StopIteration):
            raise ValueError(f'layer {spec!r} does not exist: give a global block index in '
                             f'[{-len(blocks)}, {len(blocks) - 1}] or STAGE.BLOCK with stage depths '
                             f'{dict(sorted(depths.items()))}') from None
        if ref not in out:
            out.append(ref)
    return out


@dataclass
class LabelTrace:
    """Labels recorded after each block during one forward pass.

    Attributes:
        labels: global block index -> (B, N_l, K) float32 labels after that block (detached;
            N_l includes the prefix tokens for ViT, is the stage's token count for Swin and PVT, plus
            PVT v1's class token in its last stage).
        grids: global block index -> (h, w) patch-token grid those labels live on.
    """
    labels: dict[int, Tensor] = field(default_factory=dict)
    grids: dict[int, tuple[int, int]] = field(default_factory=dict)


@contextlib.contextmanager
def record_block_labels(backbone: nn.Module, img_hw: Sequence[int],
                        only: Optional[Sequence[int]] = None) -> Iterator[LabelTrace]:
    """Context manager: forward hooks that store each block's output labels.

    Args:
        backbone: a TL-Align backbone (see :func:`iter_blocks`).
        img_hw: (H, W) of the input images (for the ViT token grid).
        only: global block indices to record (default: all).

    Yields:
        a :class:`LabelTrace` filled by every forward pass run inside the context (a later pass
        overwrites an earlier one).  Blocks run without labels record nothing.
    """
    blocks = iter_blocks(backbone)
    keep = None if only is None else set(only)
    trace = LabelTrace()
    vit_grid = tuple(backbone.token_grid(img_hw))
    # hierarchical backbones (Swin, PVT) hand each block its stage's (h, w) as the second argument
    staged = len({b.stage for b in blocks}) > 1
    handles = []

    def make_hook(idx: int):
        def hook(module, args, output):
            if not isinstance(output, tuple) or len(output) < 2 or output[1] is None:
                return
            trace.labels[idx] = output[1].detach().float()
            if staged and len(args) > 1:
                trace.grids[idx] = tuple(int(v) for v in args[1])
            elif vit_grid is not None:
                trace.grids[idx] = vit_grid
        return hook

    try:
        for ref in blocks:
            if keep is None or ref.index in keep:
                handles.append(ref.module.register_forward_hook(make_hook(ref.index)))
        yield trace
    finally:
        for h in handles:
            h.remove()


def source_share_readout(labels: Tensor, readout: str, num_prefix_tokens: int) -> Tensor:
    """Share of image A in the model's target read out of a 2-channel label embedding.

    Args:
        labels: (B, N, 2) source labels (channel 0 = share of A).
        readout: 'cls' (row 0, the class token) or 'mean' (mean over the patch tokens).
        num_prefix_tokens: prefix rows to skip for 'mean'.

    Returns:
        (B,) float32 in [0, 1].
    """
    return read_labels(labels, readout, num_prefix_tokens)[:, 0].float()
