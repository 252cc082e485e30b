"""Convert a checkpoint between tlalign_mm's layout and timm's, mmseg's, mmdet's and mmpretrain's.

Reads official DeiT / TL-Align, official Swin, official PVT, timm, mmseg / mmdet / mmpretrain and
mmengine checkpoints (always with ``torch.load(weights_only=True)``).  ``--to tlalign`` (the
default) writes ``{'state_dict': ..., 'meta': ...}`` whose keys are the backbones' parameter
names, for ``init_cfg=dict(type='Pretrained', checkpoint=DST)``; ``--to timm / mmseg / mmdet /
mmpretrain`` writes the backbone (and, for timm, the classifier head) under that library's names
and prints the call that builds the model it loads into with ``strict=True``.  DST ending in
``.safetensors`` holds the flat ``{name: tensor}``; DST is written atomically and may not be SRC.
Exit status 2 for a bad argument, 1 for a source it cannot read or convert, or a DST that does not
load into ``--arch`` (DST is then kept, and the message says so).  See :mod:`tlalign_mm.checkpoint.export`.

Example::

    python tools/convert_checkpoint.py deit_small_patch16_224-cd65a155.pth \\
        pretrain/deit_small_tla.pth --arch deit-small
    python tools/convert_checkpoint.py upernet_swin.pth swin_backbone.pth --prefix backbone. \\
        --arch swin-tiny
    python tools/convert_checkpoint.py work_dirs/deit/epoch_300.pth deit_timm.safetensors --to timm
    python tools/convert_checkpoint.py work_dirs/pvt/epoch_300.pth pvt_mmdet.pth --to mmdet --allow-drop
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys

from tlalign_mm.checkpoint import export_checkpoint, load_backbone_checkpoint
from tlalign_mm.checkpoint.export import EXPORT_TARGETS, READOUTS
from tlalign_mm.checkpoint.layouts import LAYOUTS

SWIN_ARCHS = ('swin-tiny', 'swin-small', 'swin-base', 'swin-t', 'swin-s', 'swin-b')
VIT_ARCHS = ('deit-tiny', 'deit-small', 'deit-base', 'deit-t', 'deit-s', 'deit-b')


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description='Convert a DeiT / Swin / PVT checkpoint (official, timm, mmseg, mmdet, mmpretrain, '
                    'mmengine, ours) into a backbone checkpoint in tlalign_mm layout, or for timm, mmseg, '
                    f'mmdet or mmpretrain (--to). Recognised layouts: {", ".join(LAYOUTS)}.')
    p.add_argument('src', help='source checkpoint (.pth / .pt / .safetensors)')
    p.add_argument('dst', help='output checkpoint path (.safetensors: a flat {name: tensor} file)')
    p.add_argument('--to', default='tlalign', metavar='TARGET',
                   help=f'layout to write: {", ".join(EXPORT_TARGETS)} (default tlalign)')
    p.add_argument('--readout', default=None, metavar='READOUT',
                   help=f'our classifier\'s pooled feature ({", ".join(READOUTS)}) when SRC does not tell; '
                        'picks timm\'s global_pool for a DeiT head')
    p.add_argument('--allow-drop', action='store_true',
                   help='write even when the target cannot hold some parameters (they are listed)')
    p.add_argument('--no-head', action='store_true', help='leave the classifier head out (timm: num_classes=0)')
    p.add_argument('--prefix', default=None,
                   help="key prefix of the backbone in SRC (default: 'backbone.' when present, "
                        "else none; '' forces none)")
    p.add_argument('--arch', default=None, choices=VIT_ARCHS + SWIN_ARCHS,
                   help='also build this backbone and check that DST loads into it')
    p.add_argument('--img-size', type=int, default=224,
                   help='image size of the --arch check model (ViT position embedding)')
    p.add_argument('--window-size', type=int, default=7, help='window of the --arch Swin check model')
    p.add_argument('--distilled', action='store_true', help='--arch check model has a dist token')
    return p.parse_args(argv)


def build_check_model(args: argparse.Namespace):
    """The backbone ``--arch`` names, for checking that the exported file loads."""
    from tlalign_mm import TLASwinTransformer, TLAVisionTransformer
    if args.arch in SWIN_ARCHS:
        return TLASwinTransformer(args.arch, img_size=args.img_size, window_size=args.window_size)
    return TLAVisionTransformer(args.arch, img_size=args.img_size, distilled=args.distilled)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.to not in EXPORT_TARGETS:
        print(f'convert_checkpoint: error: unknown --to {args.to!r}; choose one of {", ".join(EXPORT_TARGETS)}',
              file=sys.stderr)
        return 2
    if os.path.exists(args.dst) and os.path.exists(args.src) and os.path.samefile(args.src, args.dst):
        print(f'convert_checkpoint: error: DST is SRC ({args.dst}): writing it would replace the source; choose '
              'another output path', file=sys.stderr)
        return 2
    try:
        info = export_checkpoint(args.src, args.dst, to=args.to, prefix=args.prefix, readout=args.readout,
                                 allow_drop=args.allow_drop, with_head=not args.no_head)
    except (ValueError, TypeError, OSError, pickle.UnpicklingError) as e:
        print(f'convert_checkpoint: error: {e}', file=sys.stderr)
        return 1
    print(f'source layout: {info["layout"]}' + (f' (prefix {info["prefix"]!r})' if info['prefix'] else ''))
    print(f'wrote {info["num_keys"]} tensors to {info["dst"]}; dropped {len(info["ignored"])} '
          f'(heads / buffers)')
    if args.to != 'tlalign':
        print(f'layout {info["target_layout"]}: {info["model"]}'
              + (f'; with the classifier head (readout {info["readout"]})' if info['head'] else '; backbone only'))
        print(f'build: {info["build"]}')
        for note in info['notes']:
            print(f'note: {note}')
    if info['dropped']:
        print(f'dropped (--allow-drop): {", ".join(info["dropped"])}')
    if info['label_params']:
        print(f'left out {len(info["label_params"])} pretraining-only label parameters (label_rule.*)')
    if args.arch:
        try:
            report = load_backbone_checkpoint(build_check_model(args), args.dst)
        except (ValueError, RuntimeError) as e:
            print(f'convert_checkpoint: error: {args.dst} was written, but does not load into --arch {args.arch}: '
                  f'{e}', file=sys.stderr)
            return 1
        print(f'check {args.arch}: {report.summary()}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
