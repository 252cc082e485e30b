"""Collect the figures of ``tools/run_demo.sh`` into one results file and print them.

    python tools/analysis/demo_results.py WORK_DIR --seconds SETUP PRETRAIN UPERNET CASCADE TOTAL \
        --results-json WORK_DIR/results.json [--command "bash tools/run_demo.sh"]

Reads the ``metrics: {...}`` line ``tools/test.py`` printed into ``WORK_DIR/{pretrain,upernet,
cascade}/test.txt``. Writes a results file (``tools/analysis/results_file.py``) with two tables,
``stages`` (the metrics of the three stages) and ``timing`` (minutes per stage), and prints the
metrics. ``run_demo.sh`` calls it at its end; ``docs/results/demo.json`` is that file of the run
the docs quote.
"""
from __future__ import annotations

import argparse
import ast
import os.path as osp
import sys

from results_file import table, write_results

STAGES = (
    ('pretrain', 'TL-Align pretraining of a small Swin, Fashion-MNIST, from scratch', '1000 held-out images',
     (('accuracy/top1', 'top-1', '{:.1f} %'), ('accuracy/top5', 'top-5', '{:.1f} %'))),
    ('upernet', 'UperNet, 8 VOC / street photos', 'train = val: fitting',
     (('mIoU', 'mIoU', '{:.2f}'), ('mAcc', 'mAcc', '{:.2f}'), ('aAcc', 'aAcc', '{:.2f}'))),
    ('cascade', 'Cascade Mask R-CNN, 3 VOC photos', 'train = val: fitting',
     (('coco/bbox_mAP', 'box AP', '{:.3f}'), ('coco/bbox_mAP_50', 'box AP50', '{:.3f}'),
      ('coco/segm_mAP', 'mask AP', '{:.3f}'), ('coco/segm_mAP_50', 'mask AP50', '{:.3f}'))),
)


def read_metrics(path: str) -> dict:
    """The last ``metrics: {...}`` line of a ``tools/test.py`` output.

    Raises:
        FileNotFoundError / ValueError: the file is missing or holds no such line (names the file).
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path}: no such file (that stage of tools/run_demo.sh did not finish)')
    with open(path) as f:
        lines = [ln for ln in f if ln.startswith('metrics: ')]
    if not lines:
        raise ValueError(f'{path}: no "metrics: {{...}}" line from tools/test.py')
    return ast.literal_eval(lines[-1][len('metrics: '):])


def _work_dir(value: str) -> str:
    """argparse ``type`` of WORK_DIR: an existing folder, else a usage error naming it."""
    if not osp.isdir(value):
        raise argparse.ArgumentTypeError(f'no such folder: {value!r} (the work dir run_demo.sh wrote)')
    return value


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('work_dir', type=_work_dir)
    p.add_argument('--seconds', nargs=5, type=int, required=True,
                   metavar=('SETUP', 'PRETRAIN', 'UPERNET', 'CASCADE', 'TOTAL'),
                   help='wall time of set-up + data, and of each stage with its test, and in all')
    p.add_argument('--results-json', required=True)
    p.add_argument('--command', default='bash tools/run_demo.sh', help='the command the results file names')
    args = p.parse_args(argv)

    try:
        metrics = {name: read_metrics(osp.join(args.work_dir, name, 'test.txt')) for name, *_ in STAGES}
    except (FileNotFoundError, ValueError) as e:    # a stage that did not run, or whose test failed
        raise SystemExit(f'demo_results.py: error: {e}') from None
    rows = []
    for name, what, images, keys in STAGES:
        m = metrics[name]
        rows.append([what, ', '.join(f'{label} {fmt.format(m[k])}' for k, label, fmt in keys if k in m), images])
    setup, pre, seg, det, total = args.seconds
    timing = [['set-up and data', f'{setup / 60:.1f}'], ['pretraining and test', f'{pre / 60:.1f}'],
              ['UperNet and test', f'{seg / 60:.1f}'], ['Cascade Mask R-CNN and test', f'{det / 60:.1f}'],
              ['the whole command', f'{total / 60:.1f}']]
    tool = 'tools/run_demo.sh'
    command_argv = args.command.split()[2:] if args.command.startswith('bash tools/run_demo.sh') else []
    doc = write_results(
        args.results_json,
        {'stages': table(['stage', 'metric (val images)', 'images'], rows),
         'timing': table(['part', 'minutes'], timing)},
        {'metrics': metrics, 'seconds': dict(zip(('setup', 'pretrain', 'upernet', 'cascade', 'total'),
                                                 args.seconds))},
        argv=command_argv, tool=tool)
    for r in rows:
        print(f'    {r[0]}: {r[1]}')
    return doc


if __name__ == '__main__':
    main()
    sys.exit(0)
