"""Convert a pretrained checkpoint into a backbone-only checkpoint in tlalign_mm's layout.

Reads official DeiT / TL-Align, official Swin, timm, mmseg / mmdet / mmpretrain and mmengine
checkpoints (always with ``torch.load(weights_only=True)``), and writes
``{'state_dict': ..., 'meta': ...}`` whose keys are the backbones' parameter names, for
``init_cfg=dict(type='Pretrained', checkpoint=DST)``.  See :mod:`tlalign_mm.checkpoint`.

Example::

    python tools/convert_checkpoint.py deit_small_patch16_224-cd65a155.pth \\
        pretrain/deit_small_tla.pth --arch deit-small
    python tools/convert_checkpoint.py upernet_swin.pth swin_backbone.pth --prefix backbone. \\
        --arch swin-tiny
"""
from __future__ import annotations

import argparse
import os
import sys

try:
    import tlalign_mm  # noqa: F401
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tlalign_mm.checkpoint import LAYOUTS, export_backbone, load_backbone_checkpoint  # noqa: E402
from tlalign_mm.utils.checkpoint_io import exit_on_checkpoint_error  # noqa: E402

SWIN_ARCHS = ('swin-tiny', 'swin-small', 'swin-base', 'swin-t', 'swin-s', 'swin-b')
VIT_ARCHS = ('deit-tiny', 'deit-small', 'deit-base', 'deit-t', 'deit-s', 'deit-b')


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description='Convert a DeiT / Swin checkpoint (official, timm, mmseg, mmdet, mmpretrain, '
                    'mmengine) into a backbone-only checkpoint in tlalign_mm layout. '
                    f'Recognised layouts: {", ".join(LAYOUTS)}.')
    p.add_argument('src', help='source checkpoint (.pth / .pt / .safetensors)')
    p.add_argument('dst', help='output checkpoint path')
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
    with exit_on_checkpoint_error('convert_checkpoint.py'):
        return _convert(args)


def _convert(args: argparse.Namespace) -> int:
    info = export_backbone(args.src, args.dst, prefix=args.prefix)
    print(f'source layout: {info["layout"]}' + (f' (prefix {info["prefix"]!r})' if info['prefix'] else ''))
    print(f'wrote {info["num_keys"]} tensors to {info["dst"]}; dropped {len(info["ignored"])} '
          f'(heads / buffers)')
    if args.arch:
        report = load_backbone_checkpoint(build_check_model(args), args.dst)
        print(f'check {args.arch}: {report.summary()}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
