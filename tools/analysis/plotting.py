"""Figures and CSV files of the analysis tools, from what :mod:`tlalign_mm.analysis` measures.

* :func:`write_fluctuation_csv` / :func:`plot_fluctuation`: a
  :class:`~tlalign_mm.analysis.fluctuation.FluctuationResult` (``token_fluctuation.py``);
* :func:`plot_label_maps`: :class:`~tlalign_mm.analysis.label_maps.LabelMaps`
  (``visualize_aligned_labels.py``);
* :func:`write_rule_lambdas` / :func:`plot_rule_lambdas`: the curves of
  :func:`~tlalign_mm.analysis.rule_lambdas.rule_lambdas` (``rule_lambdas.py``).

A module of the analysis tools, imported as ``plotting`` with this folder on ``sys.path`` (a
script's own folder is); not part of the ``tlalign_mm`` package, which measures and writes no
files.  matplotlib is imported (Agg backend) when a figure is drawn.
"""
from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

from torch import Tensor

from tlalign_mm.analysis.rule_lambdas import RULES

if TYPE_CHECKING:
    from tlalign_mm.analysis import FluctuationResult, LabelMaps

__all__ = ['write_fluctuation_csv', 'plot_fluctuation', 'plot_label_maps', 'write_rule_lambdas', 'plot_rule_lambdas']


def _fmt(v: float) -> str:
    return f'{v:.6g}'


def write_fluctuation_csv(result: FluctuationResult, out_dir: str, weights: str) -> tuple[str, str]:
    """Write ``fluctuation.csv`` (one row per sample) and ``fluctuation_layers.csv`` (one per block).

    Args:
        result: see :func:`run_fluctuation`.
        out_dir: directory (created if needed).
        weights: what the model's weights are (a checkpoint path, or ``'random-init'``); written
            in a ``weights`` column of both files.

    Returns:
        the two paths.  ``fluctuation.csv`` columns: weights, batch, index, mode, label,
        partner_label, lam, lam_aligned, lam_gap (= lam_aligned - lam), target_l2.
        ``fluctuation_layers.csv`` columns: weights, layer (global block index), name, readout,
        mean_abs_drift (= mean |lam_l - lam|), std_abs_drift, mean_lam_l, mean_lam.
    """
    os.makedirs(out_dir, exist_ok=True)
    samples = os.path.join(out_dir, 'fluctuation.csv')
    with open(samples, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['weights', 'batch', 'index', 'mode', 'label', 'partner_label', 'lam', 'lam_aligned',
                    'lam_gap', 'target_l2'])
        for bi, b in enumerate(result.batches):
            for i in range(b.lam.numel()):
                lam, lam_aligned = float(b.lam[i]), float(b.lam_aligned[i])
                w.writerow([weights, bi, i, b.mode, int(b.labels[i]), int(b.partner_labels[i]),
                            _fmt(lam), _fmt(lam_aligned), _fmt(lam_aligned - lam), _fmt(float(b.target_l2[i]))])
    layers = os.path.join(out_dir, 'fluctuation_layers.csv')
    mean_d, std_d = result.layer_drift()
    layer_lam = result.layer_lam
    lam_mean = float(result.lam.mean()) if result.lam.numel() else math.nan
    with open(layers, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['weights', 'layer', 'name', 'readout', 'mean_abs_drift', 'std_abs_drift', 'mean_lam_l',
                    'mean_lam'])
        for i, name in enumerate(result.layer_names):
            mlam = float(layer_lam[i].mean()) if layer_lam.shape[1] else math.nan
            w.writerow([weights, i, name, result.readout, _fmt(float(mean_d[i])), _fmt(float(std_d[i])),
                        _fmt(mlam), _fmt(lam_mean)])
    return samples, layers


def plot_fluctuation(result: FluctuationResult, path: str, title: str = '') -> str:
    """Save a 2x2 figure (matplotlib, Agg backend) to ``path`` and return it.

    Panels: lam vs aligned lam (scatter, diagonal = no fluctuation); histogram of
    ``|lam_aligned - lam|``; histogram of the per-sample target L2; per-block drift
    ``mean |lam_l - lam|`` with a +-std band.
    """
    import matplotlib
    matplotlib.use('Agg', force=False)
    import matplotlib.pyplot as plt

    s = result.summary()
    lam, lam_aligned, target_l2 = result.lam.numpy(), result.lam_aligned.numpy(), result.target_l2.numpy()
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    ax = axes[0, 0]
    ax.plot([0, 1], [0, 1], color='0.6', lw=1, ls='--', label='no fluctuation')
    ax.scatter(lam, lam_aligned, s=10, alpha=0.6)
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel='lam (area share of A)',
           ylabel=f'aligned lam ({"class token" if result.readout == "cls" else "mean token"})',
           title='lam vs aligned lam')
    ax.legend(loc='upper left', fontsize=8)

    ax = axes[0, 1]
    ax.hist(abs(lam_aligned - lam), bins=30, color='tab:orange')
    ax.set(xlabel='|lam_aligned - lam|', ylabel='samples',
           title=f'|lam_aligned - lam|: mean {s["lam_gap_mean"]:.4f} ± {s["lam_gap_std"]:.4f}')

    ax = axes[1, 0]
    ax.hist(target_l2, bins=30, color='tab:green')
    ax.set(xlabel='||y_aligned - y_area||_2', ylabel='samples',
           title=f'target L2: mean {s["target_l2_mean"]:.4f} ± {s["target_l2_std"]:.4f}')

    ax = axes[1, 1]
    mean_d, std_d = (t.numpy() for t in result.layer_drift())
    x = list(range(len(result.layer_names)))
    ax.plot(x, mean_d, marker='o', color='tab:red')
    ax.fill_between(x, mean_d - std_d, mean_d + std_d, color='tab:red', alpha=0.2)
    ax.set_xticks(x)
    ax.set_xticklabels(result.layer_names, rotation=90 if len(x) > 12 else 0, fontsize=8)
    ax.set(xlabel='block' + (' (stage.block)' if any('.' in n for n in result.layer_names) else ''),
           ylabel='mean |lam_l - lam|',
           title=f'per-block drift of the {"class token" if result.readout == "cls" else "mean token"}')
    ax.set_ylim(bottom=0)

    fig.suptitle(f'{title}\n{s["num_samples"]} samples in {s["num_batches"]} batches', fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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


def write_rule_lambdas(curves: dict[str, Tensor], samples: list[int], layer_names: list[str], path: str,
                       sample_names: Optional[list[str]] = None) -> str:
    """CSV with one row per (sample, rule, block): ``sample, rule, block, lam_A``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['sample', 'rule', 'block', 'lam_A'])
        for j, i in enumerate(samples):
            name = sample_names[j] if sample_names else str(i)
            for rule in RULES:
                if rule in curves:
                    for layer, v in zip(layer_names, curves[rule][:, i].tolist()):
                        w.writerow([name, rule, layer, f'{v:.6f}'])
    return path


def plot_rule_lambdas(curves: dict[str, Tensor], samples: list[int], layer_names: list[str], path: str,
                      title: str = '', sample_names: Optional[list[str]] = None) -> str:
    """One panel per sample: ``lam_A`` against the block, one line per rule."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    style = {'area': dict(color='0.4', ls='--'), 'tl_align': dict(color='C0', marker='o', ms=3),
             'transmix': dict(color='C1', marker='s', ms=3), 'tokenmix': dict(color='C2', ls=':')}
    n = len(samples)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False, sharey=True)
    x = list(range(len(layer_names)))
    for j, i in enumerate(samples):
        ax = axes[j // cols][j % cols]
        for rule in RULES:
            if rule in curves:
                ax.plot(x, curves[rule][:, i].numpy(), label=rule, **style[rule])
        ax.set_title(sample_names[j] if sample_names else f'sample {i}', fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xticks(x[::max(1, len(x) // 6)])
        ax.set_xticklabels(layer_names[::max(1, len(x) // 6)], fontsize=7)
        ax.set_xlabel('block', fontsize=8)
        if j % cols == 0:
            ax.set_ylabel('share of image A in the target', fontsize=8)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis('off')
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
