"""Token-label maps: where the share of image A sits on the token grid, before and after blocks.

For a CutMix pair (image A with a box of its partner B), every patch token starts with the share
of A among its pixels (1 outside the box, 0 inside for token CutMix).  TL-Align moves these
labels with each block's attention (``Y <- (Y + mean_h(A_h) Y) / 2``); Swin's patch merging
pools them 2x2.  :func:`compute_label_maps` records the share of A per token after chosen blocks
(through forward hooks, :mod:`tlalign_mm.analysis.tracing`) and :func:`plot_label_maps` draws,
for each image: A, B, the mixed image, the initial map and the map after each chosen block, the
maps as heat maps over the mixed image (each token's value spread over the pixels it covers).
"""
from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from ..mixing import BatchMixer, MixResult
from .tracing import BlockRef, block_names, iter_blocks, parse_layer_spec, record_block_labels, source_share_readout

__all__ = ['LabelMaps', 'draw_display_mix', 'compute_label_maps', 'denormalise', 'plot_label_maps']


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


def draw_display_mix(mixer: BatchMixer, images: Tensor, generator: Optional[random.Random] = None,
                     lam_range: Sequence[float] = (0.0, 1.0), max_tries: int = 200) -> MixResult:
    """Mix ``images`` with ``mixer``, redrawing until the batch is mixed with ``lam`` in range.

    Args:
        mixer: the model's :class:`~tlalign_mm.mixing.BatchMixer`.
        images: (B, 3, H, W) normalised images.
        generator: ``random.Random`` for reproducible draws (the mixer's host-side generator).
        lam_range: (lo, hi) accepted ``lam`` of the batch (e.g. (0.3, 0.8) for a clearly visible
            box).  The last draw is returned if none fits within ``max_tries``.

    Returns:
        the :class:`~tlalign_mm.mixing.MixResult`.
    """
    lo, hi = lam_range
    mix = None
    for _ in range(max(1, max_tries)):
        mix = mixer(images, generator=generator)
        lam = float(mix.lam.min())
        if mix.mixed and lo <= lam <= hi:
            break
    return mix


@torch.no_grad()
def compute_label_maps(model, images: Tensor, labels: Tensor, mix: MixResult,
                       layers: Sequence[int | str | BlockRef], num_images: Optional[int] = None) -> LabelMaps:
    """Trace the source labels of a mixed batch and keep the maps after ``layers``.

    Args:
        model: a :class:`~tlalign_mm.models.TLAImageClassifier` (DeiT or Swin backbone); its
            train/eval mode is left as it is (use eval for deterministic maps).
        images: (B, 3, H, W) the *unmixed* normalised images (``mix`` was drawn from them).
        labels: (B,) their classes.
        mix: the :class:`~tlalign_mm.mixing.MixResult` of ``images`` (its ``images`` are fed to
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
    if tuple(mix.grid_size) != grid:
        raise ValueError(f'the mix is on a {tuple(mix.grid_size)} token grid but the backbone has {grid}: '
                         "set the mixer's patch_size to the backbone's")
    start = model.backbone.first_stage_mix(mix)           # the share the first stage sees (PVT v2: its window)
    r0 = start.source_labels(prefix).to(mixed.device)
    with record_block_labels(backbone, mixed.shape[-2:], only=[b.index for b in chosen]) as trace:
        backbone(mixed, r0)
    maps, readout = {}, {}
    readout[-1] = source_share_readout(r0, model.label_rule.readout, prefix)[:n].cpu()
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


def plot_label_maps(maps: LabelMaps, path: str, title: str = '',
                    class_names: Optional[Sequence[str]] = None, alpha: float = 0.65) -> str:
    """Draw one row per image: A, B, mixed, initial share-of-A map, maps after the chosen blocks.

    The maps are heat maps (``RdBu_r``: red = all A, blue = all B) on the token grid, stretched over
    the mixed image (nearest neighbour).  Saves a PNG with matplotlib's Agg backend to ``path``.

    Returns:
        ``path``.
    """
    import matplotlib
    matplotlib.use('Agg', force=False)
    import matplotlib.pyplot as plt

    n = maps.mixed.shape[0]
    order = list(maps.maps)
    ncol = 4 + len(order)
    fig, axes = plt.subplots(n, ncol, figsize=(2.1 * ncol + 0.8, 2.3 * n + 0.6), squeeze=False)
    h, w = maps.mixed.shape[-2:]
    what = 'cls' if maps.readout_kind == 'cls' else 'mean'

    def cname(c) -> str:
        c = int(c)
        return class_names[c] if class_names is not None and c < len(class_names) else str(c)

    def show(ax, img):
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation='nearest')

    im = None
    for i in range(n):
        row = axes[i]
        show(row[0], maps.images_a[i])
        row[0].set_title(f'A: {cname(maps.labels[i])}' if maps.labels is not None else 'A', fontsize=8)
        show(row[1], maps.images_b[i])
        row[1].set_title(f'B: {cname(maps.partner_labels[i])}' if maps.partner_labels is not None else 'B',
                         fontsize=8)
        show(row[2], maps.mixed[i])
        row[2].set_title(f'mixed, lam={float(maps.lam[i]):.2f}', fontsize=8)
        cols = [('initial', maps.initial[i], maps.readout[-1][i])]
        cols += [(f'after block {maps.names[k]}', maps.maps[k][i], maps.readout[k][i]) for k in order]
        for ax, (name, m, r) in zip(row[3:], cols):
            gray = maps.mixed[i].mean(0)
            ax.imshow(gray.numpy(), cmap='gray', interpolation='nearest')
            im = ax.imshow(m.numpy(), cmap='RdBu_r', vmin=0.0, vmax=1.0, alpha=alpha,
                           extent=(0, w, h, 0), interpolation='nearest')
            ax.set_title(f'{name}\nA share: {what} {float(r):.2f}', fontsize=8)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    if im is not None:
        cb = fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01)
        cb.set_label('share of image A per token')
    fig.suptitle(title, fontsize=10)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
