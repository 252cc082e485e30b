"""Draw TL-Align token-label maps: the share of image A per token, before and after chosen blocks.

    python tools/analysis/visualize_aligned_labels.py CONFIG [CHECKPOINT] [--layers 0 3 11]
        [--num-images 4] [--out-dir DIR] [--split val] [--lam-range 0.3 0.8] [--seed S]
        [--device DEV] [--cfg-options K=V ...]

For ``--num-images`` images of the config's dataset (``--split``, default val: its deterministic
test pipeline) the tool mixes each image with a partner through the model's own mixer (token
CutMix in the TL-Align configs; no random erasing, so the images stay readable), traces the
2-channel source labels through the backbone, and draws one row per image: A, B, the mixed image,
the initial share-of-A map and the map after each chosen block, as heat maps over the image.
The batch holds 2 x num-images images so that every drawn image has a partner not drawn in
another row.

``--layers``: global block indices (DeiT: ``blocks[i]``; Swin: counted over all stages, negative
from the end) or ``STAGE.BLOCK`` for Swin (``2.5`` = ``layers[2].blocks[5]``).  Default: the
first, a middle and the last block.  Without CHECKPOINT the network is randomly initialised
(said in the figure's title).  Output: ``DIR/label_maps.png``.

The computation lives in :mod:`tlalign_mm.analysis.label_maps`, the figure in ``plotting.py`` next to
this script.
"""
from __future__ import annotations

import argparse
import os.path as osp
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

from _common import add_config_checkpoint_args, device_arg, output_dir, weights_title
from config_checks import CfgOptions  # tools/config_checks.py (tools/ on sys.path: _common)

import tlalign_mm  # noqa: F401

if TYPE_CHECKING:
    from torch import Tensor

    from tlalign_mm.mixing import BatchMixer
    from tlalign_mm.structures import MixResult


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_checkpoint_args(p)
    p.add_argument('--layers', nargs='+', default=None,
                   help='blocks after which to draw the map: global indices or STAGE.BLOCK (Swin)')
    p.add_argument('--num-images', type=int, default=4)
    p.add_argument('--out-dir', default=None)
    p.add_argument('--out-name', default='label_maps.png')
    p.add_argument('--split', choices=('train', 'val', 'test'), default='val')
    p.add_argument('--lam-range', nargs=2, type=float, default=(0.3, 0.8), metavar=('LO', 'HI'),
                   help='redraw the mix until lam is in [LO, HI] (a visible box)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', type=device_arg, default=None, help='cpu, cuda, ... (default: cuda if available)')
    p.add_argument('--cfg-options', nargs='+', action=CfgOptions, help='override config keys (KEY=VALUE)')
    return p.parse_args(argv)


def draw_display_mix(mixer: BatchMixer, images: Tensor, rng: Optional[random.Random] = None,
                     lam_range: Sequence[float] = (0.0, 1.0), max_tries: int = 200) -> MixResult:
    """Mix ``images`` with ``mixer``, redrawing until the batch is mixed with ``lam`` in range.

    Args:
        mixer: the model's :class:`~tlalign_mm.mixing.BatchMixer`.
        images: (B, 3, H, W) normalised images.
        rng: ``random.Random`` for reproducible draws (the mixer's host-side generator).
        lam_range: (lo, hi) accepted ``lam`` of the batch (e.g. (0.3, 0.8) for a clearly visible
            box).  The last draw is returned if none fits within ``max_tries``.

    Returns:
        the :class:`~tlalign_mm.structures.MixResult`.
    """
    lo, hi = lam_range
    mix = None
    for _ in range(max(1, max_tries)):
        mix = mixer(images, rng=rng)
        lam = float(mix.lam.min())
        if mix.mixed and lo <= lam <= hi:
            break
    return mix


def main(argv=None) -> str:
    args = parse_args(argv)
    import torch
    from _common import (  # tools/analysis/_common.py
        build_classifier,
        build_dataset,
        class_names,
        load_config,
        pick_device,
    )
    from mmengine.dataset import pseudo_collate
    from plotting import plot_label_maps  # tools/analysis/plotting.py

    from tlalign_mm.analysis import compute_label_maps, iter_blocks

    if args.num_images < 1:
        raise SystemExit('--num-images must be >= 1')
    cfg = load_config(args.config, args.cfg_options, [f'{args.split}_dataloader'])
    stem, out_dir = output_dir(args.config, args.out_dir, 'label_maps')
    device = pick_device(args.device)
    model, weights = build_classifier(cfg, args.checkpoint, device, seed=args.seed)
    mixer = model.data_preprocessor.mixer
    if mixer is None:
        raise SystemExit('the config has no mixer (model.data_preprocessor.mixer): nothing to align')

    n_blocks = len(iter_blocks(model.backbone))
    layers = args.layers or sorted({0, n_blocks // 2, n_blocks - 1})

    dataset = build_dataset(cfg, args.split)
    batch = 2 * args.num_images
    if len(dataset) < batch:
        raise SystemExit(f'the {args.split} set has {len(dataset)} images; need {batch} (2 x --num-images)')
    gen = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(dataset), generator=gen)[:batch].tolist()
    data = model.data_preprocessor(pseudo_collate([dataset[i] for i in idx]), training=False)
    images = data['inputs']
    labels = model._labels(data['data_samples']).to(images.device)
    mix = draw_display_mix(mixer, images, random.Random(args.seed), args.lam_range)

    maps = compute_label_maps(model, images, labels, mix, layers, num_images=args.num_images)
    what = weights_title(weights)
    readout = 'class token' if model.label_rule.readout == 'cls' else 'mean token'
    title = (f'{stem} -- weights: {what} -- {mix.mode}, lam={float(mix.lam[0]):.2f}; maps: share of A per token '
             f'(red = A, blue = B); "A share" = {readout}')
    path = plot_label_maps(maps, osp.join(out_dir, args.out_name), title, class_names(dataset))
    print(f'weights: {weights}; layers: ' + ', '.join(maps.names[k] for k in maps.maps))
    for k in [-1] + list(maps.maps):
        name = 'initial' if k == -1 else f'after block {maps.names[k]}'
        vals = ', '.join(f'{float(v):.3f}' for v in maps.readout[k])
        print(f'  {readout} share of A, {name}: {vals}')
    print(f'wrote {path}')
    return path


if __name__ == '__main__':
    from config_checks import DataRootError  # tools/config_checks.py (tools/ on sys.path: _common)
    from launch import exit_on_checkpoint_error  # tools/launch.py
    with exit_on_checkpoint_error('visualize_aligned_labels.py', DataRootError):
        main()
