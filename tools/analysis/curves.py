"""Training curves from mmengine's ``LocalVisBackend`` logs (``<run>/<timestamp>/vis_data/scalars.json``).

Each line of ``scalars.json`` is one JSON object that mmengine's ``LoggerHook`` wrote:

* after a training iteration (every ``default_hooks.logger.interval`` iterations): the smoothed
  losses (``loss``, ``decode.loss_ce``, ``s0.loss_cls``, ...), ``lr``, ``time``, ... with
  ``step`` = the global iteration (1-based) and, for epoch-based loops, ``epoch``;
* after a validation: the metrics (``accuracy/top1``, ``mIoU``, ``coco/bbox_mAP``, ...) with
  ``step`` = the epoch (epoch-based loops) or the iteration (iteration-based loops) and no
  ``lr``.

:func:`read_scalars` splits a file into those two kinds of rows; :func:`plot_curves` draws them
(``tools/analysis/plot_curves.py``).  The format is mmengine 0.10's; nothing here imports
mmengine.

A module of the analysis tools, imported as ``curves`` with this folder on ``sys.path`` (a
script's own folder is); not part of the ``tlalign_mm`` package, which measures models and does
not read logs or draw.
"""
from __future__ import annotations

import glob
import json
import math
import os.path as osp
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

__all__ = ['RunScalars', 'find_scalars', 'read_scalars', 'loss_keys', 'metric_keys', 'plot_curves']

#: validation metrics plotted by default, in this order, when a run logged them
DEFAULT_METRICS = ('accuracy/top1', 'accuracy/top5', 'mIoU', 'mAcc', 'aAcc', 'coco/bbox_mAP', 'coco/bbox_mAP_50',
                   'coco/segm_mAP', 'coco/segm_mAP_50')


@dataclass
class RunScalars:
    """The scalars of one run.

    Attributes:
        path: the ``scalars.json`` they come from.
        train: training rows, in file order; each has ``step`` (global iteration, int).
        val: validation rows, in file order; each has ``step`` (epoch or iteration, see
            ``val_unit``).
        val_unit: ``'epoch'`` when the training rows carry an ``epoch`` key (epoch-based loop),
            else ``'iter'``.
    """
    path: str
    train: list[dict] = field(default_factory=list)
    val: list[dict] = field(default_factory=list)
    val_unit: str = 'iter'

    def series(self, key: str, split: str = 'train') -> tuple[list[int], list[float]]:
        """``(steps, values)`` of ``key`` over the rows of ``split`` that have it (finite values only)."""
        rows = self.train if split == 'train' else self.val
        xs, ys = [], []
        for r in rows:
            v = r.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                xs.append(int(r['step']))
                ys.append(float(v))
        return xs, ys


def find_scalars(run_dir: str) -> str:
    """The newest ``<timestamp>/vis_data/scalars.json`` under ``run_dir`` (an mmengine work dir),
    or ``run_dir`` itself when it is such a file.

    Raises:
        FileNotFoundError: none exists (the run never logged, or the visualizer had no
            ``LocalVisBackend``).
    """
    if osp.isfile(run_dir):
        return run_dir
    files = glob.glob(osp.join(run_dir, '*', 'vis_data', 'scalars.json'))
    if not files:
        raise FileNotFoundError(
            f'no <timestamp>/vis_data/scalars.json under {run_dir!r}: pass an mmengine work dir of a run '
            "that logged with visualizer=dict(vis_backends=[dict(type='LocalVisBackend')])")
    return max(files, key=lambda p: (osp.getmtime(p), p))


def read_scalars(path: str) -> RunScalars:
    """Parse one ``scalars.json`` (or the newest under a work dir, :func:`find_scalars`).

    A row is a training row when it has ``lr`` or ``base_lr`` (LoggerHook logs the learning rate
    with every training record), else a validation row.  Blank lines are skipped.

    Raises:
        FileNotFoundError: see :func:`find_scalars`.
        ValueError: a line is not JSON or has no ``step`` (not an mmengine scalars file);
            the message names the file and line.
    """
    path = find_scalars(path)
    run = RunScalars(path=path)
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f'{path}:{n}: not a JSON line ({e})') from None
            if not isinstance(row, dict) or 'step' not in row:
                raise ValueError(f'{path}:{n}: no "step" key; not an mmengine LocalVisBackend scalars file')
            if 'lr' in row or 'base_lr' in row:
                run.train.append(row)
                if 'epoch' in row:
                    run.val_unit = 'epoch'
            else:
                run.val.append(row)
    return run


def loss_keys(run: RunScalars) -> list[str]:
    """Training keys that are losses (the total ``loss`` first, then the parts, sorted)."""
    keys = {k for r in run.train for k in r if k == 'loss' or 'loss' in k.split('.')[-1]}
    return sorted(keys, key=lambda k: (k != 'loss', k))


def metric_keys(run: RunScalars, wanted: Optional[Sequence[str]] = None) -> list[str]:
    """Validation keys to plot: ``wanted`` (default :data:`DEFAULT_METRICS`) that the run has."""
    have = {k for r in run.val for k in r}
    return [k for k in (wanted or DEFAULT_METRICS) if k in have]


def plot_curves(runs: Sequence[RunScalars], path: str, titles: Optional[Sequence[str]] = None,
                metrics: Optional[Sequence[str]] = None, max_losses: int = 8) -> str:
    """Draw one row per run: training losses vs iteration (left), validation metrics (right).

    Args:
        runs: parsed runs (:func:`read_scalars`).
        path: output image (PNG by extension), written with matplotlib's Agg backend.
        titles: one title per run (default: the scalars file's run folder).
        metrics: validation keys to plot (default :data:`DEFAULT_METRICS`, those present).
        max_losses: at most this many loss keys per run (the total ``loss`` and the first parts).

    Returns:
        ``path``.

    Raises:
        ValueError: no runs, or ``titles`` of the wrong length, or a run without training rows.
    """
    if not runs:
        raise ValueError('plot_curves: no runs given')
    if titles is not None and len(titles) != len(runs):
        raise ValueError(f'plot_curves: {len(titles)} titles for {len(runs)} runs')
    import matplotlib
    matplotlib.use('Agg', force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 2, figsize=(12, 3.6 * len(runs)), squeeze=False)
    for i, run in enumerate(runs):
        if not run.train:
            raise ValueError(f'{run.path}: no training rows (lr / base_lr) to plot')
        title = titles[i] if titles is not None else osp.basename(osp.dirname(osp.dirname(osp.dirname(run.path))))
        ax = axes[i, 0]
        for k in loss_keys(run)[:max_losses]:
            xs, ys = run.series(k)
            ax.plot(xs, ys, lw=2.0 if k == 'loss' else 1.0, label=k)
        ax.set(xlabel='iteration', ylabel='loss', title=f'{title}: training losses')
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        ax = axes[i, 1]
        keys = metric_keys(run, metrics)
        for k in keys:
            xs, ys = run.series(k, 'val')
            ax.plot(xs, ys, marker='o', label=k)
            if ys:
                ax.annotate(f'{ys[-1]:.3g}', (xs[-1], ys[-1]), fontsize=7, textcoords='offset points',
                            xytext=(3, 3))
        ax.set(xlabel=run.val_unit, ylabel='metric', title=f'{title}: validation')
        if keys:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, 'no validation logged', ha='center', va='center', transform=ax.transAxes)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
