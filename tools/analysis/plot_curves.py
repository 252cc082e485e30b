"""Plot training losses and validation metrics of mmengine runs (one row per run).

    python tools/analysis/plot_curves.py WORK_DIR [WORK_DIR ...] [--out curves.png]
        [--titles T ...] [--metrics accuracy/top1 mIoU coco/bbox_mAP ...]

Each WORK_DIR is an mmengine work dir (the newest ``<timestamp>/vis_data/scalars.json`` in it
is read) or a ``scalars.json`` file.  Left: every loss the run logged (the total ``loss`` bold)
against the iteration; right: the validation metrics against the epoch or iteration, with the
last value written next to the curve.  Prints the final loss and metrics of each run.

The parsing and drawing live in ``curves.py`` next to this script.
"""
from __future__ import annotations

import argparse
import os

from curves import loss_keys, metric_keys, plot_curves, read_scalars  # tools/analysis/curves.py


def _run(value: str) -> str:
    """argparse ``type`` of a run: an existing work dir or file, else a usage error naming it."""
    if not os.path.exists(value):
        raise argparse.ArgumentTypeError(f'no such work dir or scalars.json file: {value!r}')
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('runs', nargs='+', type=_run, help='mmengine work dirs or scalars.json files')
    p.add_argument('--out', default='curves.png', help='output PNG (default: curves.png)')
    p.add_argument('--titles', nargs='+', default=None, help='one title per run (default: the work dir name)')
    p.add_argument('--metrics', nargs='+', default=None,
                   help='validation keys to plot (default: top-1/5, mIoU/mAcc/aAcc, COCO bbox/segm mAP)')
    return p.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    try:
        runs = [read_scalars(r) for r in args.runs]
    except (FileNotFoundError, ValueError) as e:    # a run that never logged, or not a scalars file
        raise SystemExit(f'plot_curves.py: error: {e}') from None
    if os.path.dirname(args.out):
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
    plot_curves(runs, args.out, titles=args.titles, metrics=args.metrics)
    for run in runs:
        last = {k: run.series(k)[1][-1] for k in loss_keys(run)[:1]}
        last.update({k: run.series(k, 'val')[1][-1] for k in metric_keys(run, args.metrics)})
        print(f'{run.path}: ' + ', '.join(f'{k} {v:.4g}' for k, v in last.items()))
    print(f'curves: {args.out}')
    return args.out


if __name__ == '__main__':
    main()
