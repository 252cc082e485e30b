"""Token-label maps: where the share of image A sits on the token grid, before and after blocks.

For a CutMix pair (image A with a box of its partner B), every patch token starts with the share
of A among its pixels (1 outside the box, 0 inside for token CutMix).  TL-Align moves these
labels with each block's attention (``Y <- (Y + mean_h(A_h) Y) / 2``); Swin's patch merging
pools them 2x2.  :func:`compute_label_maps` records the share of A per token after chosen blocks
(through forward hooks, :mod:`tlalign_mm.analysis.tracing`); ``tools/analysis/plotting.py``
draws them (``visualize_aligned_labels.py``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from ..structures import MixResult
from .tracing import BlockRef, block_names, iter_blocks, parse_layer_spec, record_block_labels, source_share_readout

__all__ = ['LabelMaps', 'compute_label_maps', 'denormalise']


@dataclass
class LabelMaps:
    """Share-of-A maps of a few mixed images.

    Attributes:
        images_a, images_b, mixed: (n, 3, H, W) float in [0, 1] for display (de-normalised):
            the image, its partner and the mixed input the model saw.
        lam: (n,) area share of A.
        initial: (n, h0, w0) initial share of A per patch token (``1 - share_b``), in [0, 1].
        maps: block index -> (n, h_l, w_l) share of A per token after that block (the stage's
            grid for Swin).
        readout: block index -> (n,) share of A in the model's readout after that block (class
            token for DeiT, mean token for Swin); key -1 holds the initial value (lam for the
            class token, the mean of ``initial`` for Swin).
        names: block index -> display name ('3' for ViT, 'stage.block' for Swin).
        labels, partner_labels: (n,) classes of A and B.
        readout_kind: 'cls' or 'mean'.
    """
    images_a: Tensor
    images_b: Tensor
    mixed: Tensor
    lam: Tensor
    initial: Tensor
    maps: dict[int, Tensor] = field(default_factory=dict)
    readout: dict[int, Tensor] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    labels: Optional[Tensor] = None
    partner_labels: Optional[Tensor] = None
    readout_kind: str = 'cls'


def denormalise(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(B, 3, H, W) normalised images -> float in [0, 1] (``mean`` / ``std`` in 0..255 units,
    shape (3, 1, 1) as the data preprocessor's buffers)."""
    return ((x.float() * std.to(x.device) + mean.to(x.device)) / 255.0).clamp(0.0, 1.0)


@torch.no_grad()
def compute_label_maps(model, images: Tensor, labels: Tensor, mix: MixResult,
                       layers: Sequence[int | str | BlockRef], num_images: Optional[int] = None) -> LabelMaps:
    """Trace the source labels of a mixed batch and keep the maps after ``layers``.

    Args:
        model: a :class:`~tlalign_mm.models.TLAImageClassifier` (DeiT or Swin backbone); its
            train/eval mode is left as it is (use eval for deterministic maps).
        images: (B, 3, H, W) the *unmixed* normalised images (``mix`` was drawn from them).
        labels: (B,) their classes.
        mix: the :class:`~tlalign_mm.structures.MixResult` of ``images`` (its ``images`` are fed to
            the model, its ``share_b`` / ``lam`` give the initial labels).
        layers: blocks to record: global indices, 'stage.block' strings (Swin) or
            :class:`~tlalign_mm.analysis.tracing.BlockRef` s.
        num_images: keep the first n samples (default: all B).

    Returns:
        :class:`LabelMaps`.

    Raises:
        ValueError: a layer that does not exist; a mix whose token grid differs from the
            backbone's.
    """
    backbone = model.backbone
    blocks = iter_blocks(backbone)
    names = dict(zip((b.index for b in blocks), block_names(blocks)))
    chosen = parse_layer_spec([s.index if isinstance(s, BlockRef) else s for s in layers], blocks)
    n = images.shape[0] if num_images is None else min(num_images, images.shape[0])
    prefix = model.num_prefix_tokens
    mixed = mix.images
    grid = tuple(backbone.token_grid(mixed.shape[-2:]))
    if tuple(mix.token_grid) != grid:
        raise ValueError(f'the mix is on a {tuple(mix.token_grid)} token grid but the backbone has {grid}: '
                         "set the mixer's patch_size to the backbone's")
    start = model.backbone.first_stage_mix(mix)           # the share the first stage sees (PVT v2: its window)
    initial_labels = start.source_labels(prefix).to(mixed.device)
    with record_block_labels(backbone, mixed.shape[-2:], only=[b.index for b in chosen]) as trace:
        backbone(mixed, initial_labels)
    maps, readout = {}, {}
    readout[-1] = source_share_readout(initial_labels, model.label_rule.readout, prefix)[:n].cpu()
    for b in chosen:
        lab = trace.labels[b.index]
        h, w = trace.grids[b.index]
        maps[b.index] = lab[:n, prefix:, 0].reshape(n, h, w).cpu()
        readout[b.index] = source_share_readout(lab, model.label_rule.readout, prefix)[:n].cpu()
    pre = model.data_preprocessor
    partner = mix.partner.to(images.device)
    return LabelMaps(
        images_a=denormalise(images[:n], pre.mean, pre.std).cpu(),
        images_b=denormalise(images[partner][:n], pre.mean, pre.std).cpu(),
        mixed=denormalise(mixed[:n], pre.mean, pre.std).cpu(),
        lam=mix.lam[:n].float().cpu(),
        initial=(1.0 - start.share_b[:n].float()).reshape(n, *grid).cpu(),
        maps=maps, readout=readout, names={b.index: names[b.index] for b in chosen},
        labels=labels[:n].cpu(), partner_labels=labels.to(partner.device)[partner][:n].cpu(),
        readout_kind=model.label_rule.readout)
