"""A/B harness: train two (or more) configs with several seeds, compare val top-1.

    python tools/analysis/ab_experiment.py [--configs A.py B.py ...] [--names tla cutmix ...] [--baseline NAME]
        [--seeds 0 1 2] [--epochs E] [--val-interval V] [--work-dir DIR]
        [--cfg-options K=V ...] [--threads N] [--skip-existing] [--collect-only] [--dry-run]

Defaults: the two demo configs (the CutMix baseline, then TL-Align, on Fashion-MNIST), seeds 0 1 2,
``work_dirs/ab_experiment``.  For every config the harness writes the effective config (with
``--cfg-options`` and ``--epochs`` applied) to ``DIR/<name>/config.py`` and trains every seed in
its own subprocess::

    python tools/train.py DIR/<name>/config.py --work-dir DIR/<name>/seed<S> \\
        --cfg-options randomness.seed=<S>

(stdout/stderr in ``DIR/<name>/seed<S>/train.log``).  It then reads each run's
``<timestamp>/vis_data/scalars.json`` (the latest one with validation entries), takes the
``accuracy/top1`` of every evaluation, and writes

* ``DIR/ab_results.csv``: one row per (variant, seed, evaluated epoch): top-1 / top-5;
* ``DIR/ab_results.md``: final and best top-1 per variant as mean +- std over seeds (sample std,
  n - 1), per-seed values, and the paired difference of every variant to the baseline
  (``--baseline NAME``, default the first variant; same seeds);
* ``DIR/ab_results.png``: learning curves, mean over seeds with a +-std band.

``--epochs E`` shortens (or lengthens) the schedule: ``train_cfg.max_epochs = E``; epoch-based
parameter schedulers that end at the old last epoch (or later than E) end at E, those that would
begin at or after E are dropped, and a cosine ``T_max`` that spanned its scheduler is rescaled to
the new span; ``val_interval`` is capped at E (mmengine also evaluates after the last epoch).
What was changed is printed and recorded in ``config.py``'s header comment.
"""
from __future__ import annotations

import argparse
import copy
import csv
import glob
import json
import math
import os
import os.path as osp
import statistics
import subprocess
import sys
import time
from typing import Optional

from results_file import add_results_arg, table, write_results  # tools/analysis/results_file.py

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
# the baseline first: paired differences are taken against the first variant by default
DEFAULT_CONFIGS = ('configs/demo/deit-demo_cutmix_1xb64-10e_fashion-mnist.py',
                   'configs/demo/deit-demo_tla_1xb64-10e_fashion-mnist.py')


def parse_args(argv=None):
    import _common  # noqa: F401  (tools/analysis/_common.py puts tools/ on sys.path)
    from config_checks import CfgOptions, config_file  # tools/config_checks.py

    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--configs', nargs='+', type=config_file, default=list(DEFAULT_CONFIGS),
                   help='configs to compare (default: the demo TL-Align and CutMix configs)')
    p.add_argument('--names', nargs='+', default=None,
                   help='variant names (default: the parts of the config names that differ)')
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    p.add_argument('--baseline', default=None,
                   help='variant name the paired differences are taken against (default: the first)')
    p.add_argument('--epochs', type=int, default=None, help='override the number of epochs (see above)')
    p.add_argument('--val-interval', type=int, default=None, help='evaluate every V epochs')
    p.add_argument('--work-dir', default=osp.join('work_dirs', 'ab_experiment'))
    p.add_argument('--cfg-options', nargs='+', action=CfgOptions,
                   help='overrides applied to every config (KEY=VALUE), e.g. '
                        'train_dataloader.dataset.indices=200')
    p.add_argument('--threads', type=int, default=None, help='OMP_NUM_THREADS of the training processes')
    p.add_argument('--python', default=sys.executable, help='interpreter that runs tools/train.py')
    p.add_argument('--skip-existing', action='store_true',
                   help='do not retrain a run whose scalars already hold the last epoch\'s evaluation')
    p.add_argument('--collect-only', action='store_true', help='only read existing runs and report')
    p.add_argument('--dry-run', action='store_true', help='write the configs, print the commands, stop')
    add_results_arg(p)
    args = p.parse_args(argv)
    if args.names is not None and len(args.names) != len(args.configs):
        p.error(f'--names needs one name per config ({len(args.configs)})')
    args.names = args.names or variant_names(args.configs)      # the variants' names, decided once
    if args.baseline is not None and args.baseline not in args.names:
        p.error(f'--baseline {args.baseline!r} is not one of the variants {args.names}')
    if args.epochs is not None and args.epochs < 1:
        p.error('--epochs must be >= 1')
    return args


# ----------------------------------------------------------------------------------- configs
def variant_names(configs: list[str]) -> list[str]:
    """Names from the config file stems: the '_'-separated parts that differ (common leading and
    trailing parts dropped), e.g. ``deit-demo_tla_1xb64...`` / ``deit-demo_cutmix_1xb64...`` ->
    ``tla`` / ``cutmix``; the stems themselves when that leaves nothing distinct."""
    stems = [osp.splitext(osp.basename(c))[0] for c in configs]
    parts = [s.split('_') for s in stems]
    if len(parts) > 1:
        lo = 0
        while all(len(p) > lo + 1 for p in parts) and len({p[lo] for p in parts}) == 1:
            lo += 1
        hi = 0
        while all(len(p) > lo + hi + 1 for p in parts) and len({p[-1 - hi] for p in parts}) == 1:
            hi += 1
        names = ['_'.join(p[lo:len(p) - hi]) for p in parts]
        if all(names) and len(set(names)) == len(names):
            return names
    if len(set(stems)) == len(stems):
        return stems
    return [f'{s}-{i}' for i, s in enumerate(stems)]


def override_epochs(cfg, epochs: int, val_interval: Optional[int] = None) -> list[str]:
    """Change the schedule of ``cfg`` to ``epochs`` epochs, in place (see the module docstring).

    Returns:
        human-readable lines describing every change.
    """
    notes = []
    old = int(cfg.train_cfg.get('max_epochs', epochs))
    if old != epochs:
        notes.append(f'train_cfg.max_epochs: {old} -> {epochs}')
    cfg.train_cfg.max_epochs = epochs
    if 'max_epochs' in cfg:  # the top-level variable the config used; keep it truthful
        cfg.max_epochs = epochs
    scheds = cfg.get('param_scheduler', None)
    if scheds is not None:
        single = isinstance(scheds, dict)
        new = []
        for i, s in enumerate([scheds] if single else list(scheds)):
            s = copy.deepcopy(s)
            name = f"param_scheduler[{i}] ({s.get('type')})"
            if not s.get('by_epoch', True):
                notes.append(f'{name}: iteration-based, left as is')
                new.append(s)
                continue
            begin, end = s.get('begin', 0), s.get('end', None)
            if begin >= epochs:
                notes.append(f'{name}: begins at epoch {begin} >= {epochs}, dropped')
                continue
            if end is not None and (end >= old or end > epochs) and end != epochs:
                t_max = s.get('T_max', None)
                s['end'] = epochs
                notes.append(f'{name}: end {end} -> {epochs}')
                if t_max is not None and t_max == end - begin:
                    s['T_max'] = epochs - begin
                    notes.append(f'{name}: T_max {t_max} -> {epochs - begin}')
            new.append(s)
        cfg.param_scheduler = new[0] if single and new else new
    cur = cfg.train_cfg.get('val_interval', 1)
    want = val_interval if val_interval is not None else min(cur, epochs)
    if want != cur:
        notes.append(f'train_cfg.val_interval: {cur} -> {want}')
        cfg.train_cfg.val_interval = want
    return notes


def write_variant_config(config: str, out_path: str, cfg_options: Optional[dict], epochs: Optional[int],
                         val_interval: Optional[int]) -> list[str]:
    """Load ``config``, apply the overrides, dump it to ``out_path``; returns the change notes."""
    from mmengine.config import Config

    cfg = Config.fromfile(config)
    notes = []
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
        notes += [f'--cfg-options {k}={v!r}' for k, v in cfg_options.items()]
    if epochs is not None:
        notes += override_epochs(cfg, epochs, val_interval)
    elif val_interval is not None:
        notes.append(f'train_cfg.val_interval: {cfg.train_cfg.get("val_interval", 1)} -> {val_interval}')
        cfg.train_cfg.val_interval = val_interval
    os.makedirs(osp.dirname(out_path), exist_ok=True)
    text = cfg.pretty_text
    header = [f'# Written by tools/analysis/ab_experiment.py from {config}'] + [f'#   {n}' for n in notes]
    with open(out_path, 'w') as f:
        f.write('\n'.join(header) + '\n' + text + '\n')
    return notes


# ----------------------------------------------------------------------------------- results
def read_val_scalars(run_dir: str, newer_than: Optional[float] = None) -> list[dict]:
    """Validation entries of a run: ``[{epoch, top1, top5}, ...]`` from the latest
    ``<timestamp>/vis_data/scalars.json`` under ``run_dir`` that has any (empty list if none).
    ``newer_than``: ignore timestamp folders last modified before this time (``time.time()``),
    so a failed re-run never reports an older run's numbers."""
    files = sorted(glob.glob(osp.join(run_dir, '*', 'vis_data', 'scalars.json')), reverse=True)
    for path in files:
        if newer_than is not None and osp.getmtime(path) < newer_than:
            continue
        rows = []
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                d = json.loads(line)
                if 'accuracy/top1' in d:
                    rows.append(dict(epoch=int(d.get('step', len(rows) + 1)), top1=float(d['accuracy/top1']),
                                     top5=float(d['accuracy/top5']) if 'accuracy/top5' in d else math.nan))
        if rows:
            return rows
    return []


def _mean_std(vals: list[float]) -> tuple[float, float]:
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else math.nan)


def _pm(m: float, s: float, digits: int = 2) -> str:
    if math.isnan(m):
        return 'n/a'
    return f'{m:.{digits}f}' + (f' ± {s:.{digits}f}' if not math.isnan(s) else ' (1 seed)')


def summarise(runs: dict[str, dict[int, list[dict]]]) -> dict:
    """Per variant: final / best top-1 per seed and their mean, std; the mean curve.

    Args:
        runs: variant -> seed -> val rows (:func:`read_val_scalars`).

    Returns:
        variant -> dict(final, best (seed -> value), final_mean, final_std, best_mean, best_std,
        curve: [(epoch, mean, std, n)] over the epochs every seed evaluated).
    """
    out = {}
    for name, seeds in runs.items():
        final = {s: rows[-1]['top1'] for s, rows in seeds.items() if rows}
        best = {s: max(r['top1'] for r in rows) for s, rows in seeds.items() if rows}
        epochs = sorted(set.intersection(*[{r['epoch'] for r in rows} for rows in seeds.values() if rows])
                        ) if final else []
        curve = []
        for e in epochs:
            vals = [next(r['top1'] for r in rows if r['epoch'] == e) for rows in seeds.values() if rows]
            m, sd = _mean_std(vals)
            curve.append((e, m, sd, len(vals)))
        fm, fs = _mean_std(list(final.values()))
        bm, bs = _mean_std(list(best.values()))
        out[name] = dict(final=final, best=best, final_mean=fm, final_std=fs, best_mean=bm, best_std=bs,
                         curve=curve)
    return out


def paired_diffs(summary: dict, baseline: str, other: str) -> list[float]:
    """Final top-1 of ``other`` minus ``baseline``, seed by seed, over the seeds both finished."""
    common = sorted(set(summary[baseline]['final']) & set(summary[other]['final']))
    return [summary[other]['final'][k] - summary[baseline]['final'][k] for k in common]


def results_table(names: list[str], summary: dict, seeds: list[int], baseline: Optional[str] = None) -> dict:
    """The ``final`` table of ``--results-json``: per variant the final top-1 (mean ± std), per seed, and
    the paired difference against ``baseline`` (default the first variant)."""
    baseline = baseline or names[0]
    rows = []
    for name in names:
        s = summary[name]
        per_seed = ' / '.join(f'{s["final"][k]:.2f}' if k in s['final'] else '—' for k in seeds)
        if name == baseline:
            diff = '(baseline)'
        else:
            m, sd = _mean_std(paired_diffs(summary, baseline, name))
            diff = 'n/a' if math.isnan(m) else f'{m:+.2f}' + ('' if math.isnan(sd) else f' ± {sd:.2f}')
        rows.append([name, f'{_pm(s["final_mean"], s["final_std"])} (n = {len(s["final"])})', per_seed, diff])
    return table(['variant', 'final top-1', 'per seed ' + ' / '.join(map(str, seeds)), f'paired − {baseline}'],
                 rows)


def write_reports(work_dir: str, names: list[str], configs: list[str], runs: dict, summary: dict,
                  notes: dict[str, list[str]], seeds: list[int], wall: dict,
                  baseline: Optional[str] = None) -> tuple[str, str, str]:
    """Write ``ab_results.{csv,md,png}`` in ``work_dir``; returns their paths.  Paired differences
    are taken against ``baseline`` (a variant name; default the first)."""
    baseline = baseline or names[0]
    csv_path = osp.join(work_dir, 'ab_results.csv')
    with open(csv_path, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['variant', 'config', 'seed', 'epoch', 'top1', 'top5'])
        for name, cfg in zip(names, configs):
            for seed, rows in sorted(runs[name].items()):
                for r in rows:
                    w.writerow([name, cfg, seed, r['epoch'], f"{r['top1']:.4f}", f"{r['top5']:.4f}"])

    md_path = osp.join(work_dir, 'ab_results.md')
    lines = ['# A/B results', '',
             f'Seeds: {" ".join(map(str, seeds))}. Val top-1 (%), mean ± sample std over seeds. '
             'Final = last evaluation; best = max over evaluations.', '',
             '| variant | config | seeds done | final top-1 | best top-1 |', '|---|---|---:|---:|---:|']
    for name, cfg in zip(names, configs):
        s = summary[name]
        lines.append(f'| {name} | `{cfg}` | {len(s["final"])}/{len(seeds)} | {_pm(s["final_mean"], s["final_std"])} '
                     f'| {_pm(s["best_mean"], s["best_std"])} |')
    if len(names) > 1:
        lines += ['', f'Paired differences (other − {baseline}, same seed), final top-1:', '']
        for other in names:
            if other == baseline:
                continue
            diffs = paired_diffs(summary, baseline, other)
            m, sd = _mean_std(diffs)
            val = 'n/a' if math.isnan(m) else f'{m:+.2f}' + ('' if math.isnan(sd) else f' ± {sd:.2f}')
            lines.append(f'- {other} − {baseline}: {val} points over {len(diffs)} seed(s)'
                         + (f' (per seed: {", ".join(f"{d:+.2f}" for d in diffs)})' if diffs else ''))
    lines += ['', '## Per seed', '', '| variant | seed | final top-1 | best top-1 | evals | wall (s) |',
              '|---|---:|---:|---:|---:|---:|']
    for name in names:
        for seed in seeds:
            rows = runs[name].get(seed, [])
            fin = f'{rows[-1]["top1"]:.2f}' if rows else 'missing'
            best = f'{max(r["top1"] for r in rows):.2f}' if rows else '—'
            t = wall.get((name, seed))
            lines.append(f'| {name} | {seed} | {fin} | {best} | {len(rows)} | {t:.0f} |' if t is not None
                         else f'| {name} | {seed} | {fin} | {best} | {len(rows)} | — |')
    lines += ['', '## Settings', '']
    for name in names:
        lines.append(f'- {name}: `{osp.join(work_dir, name, "config.py")}`'
                     + (': ' + '; '.join(notes.get(name, [])) if notes.get(name) else ''))
    with open(md_path, 'w') as f:
        f.write('\n'.join(lines) + '\n')

    png_path = osp.join(work_dir, 'ab_results.png')
    import matplotlib
    matplotlib.use('Agg', force=False)
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in names:
        curve = summary[name]['curve']
        if not curve:
            continue
        ep = [c[0] for c in curve]
        m = [c[1] for c in curve]
        sd = [0.0 if math.isnan(c[2]) else c[2] for c in curve]
        n = min(c[3] for c in curve)
        final = _pm(summary[name]['final_mean'], summary[name]['final_std'])
        line, = ax.plot(ep, m, marker='o', label=f'{name} (n={n}): final {final}')
        ax.fill_between(ep, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)],
                        color=line.get_color(), alpha=0.2)
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel='epoch', ylabel='val top-1 (%)', title='A/B: val top-1, mean ± std over seeds')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return csv_path, md_path, png_path


# ----------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    args = parse_args(argv)
    names = args.names
    work_dir = args.work_dir
    os.makedirs(work_dir, exist_ok=True)
    env = dict(os.environ)
    env['PYTHONPATH'] = REPO + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
    if args.threads is not None:
        env['OMP_NUM_THREADS'] = str(args.threads)

    notes: dict[str, list[str]] = {}
    wall: dict = {}
    runs: dict[str, dict[int, list[dict]]] = {n: {} for n in names}
    for name, config in zip(names, args.configs):
        cfg_path = osp.join(work_dir, name, 'config.py')
        if not args.collect_only:
            notes[name] = write_variant_config(config, cfg_path, args.cfg_options, args.epochs, args.val_interval)
            for n in notes[name]:
                print(f'[{name}] {n}')
        elif osp.exists(cfg_path):
            with open(cfg_path) as f:
                notes[name] = [ln[4:].rstrip() for ln in f if ln.startswith('#   ')]
        for seed in args.seeds:
            run_dir = osp.join(work_dir, name, f'seed{seed}')
            cmd = [args.python, osp.join(REPO, 'tools', 'train.py'), cfg_path, '--work-dir', run_dir,
                   '--cfg-options', f'randomness.seed={seed}']
            if not args.collect_only:
                done = read_val_scalars(run_dir) if args.skip_existing else []
                if done and args.epochs is not None and done[-1]['epoch'] < args.epochs:
                    done = []
                if done:
                    print(f'[{name} seed {seed}] exists ({len(done)} evals), skipped')
                elif args.dry_run:
                    print(' '.join(cmd))
                else:
                    os.makedirs(run_dir, exist_ok=True)
                    print(f'[{name} seed {seed}] training: {" ".join(cmd)}', flush=True)
                    t0 = time.time()
                    with open(osp.join(run_dir, 'train.log'), 'w') as log:
                        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
                    wall[(name, seed)] = time.time() - t0
                    if rc != 0:
                        print(f'[{name} seed {seed}] FAILED (exit {rc}); see {osp.join(run_dir, "train.log")}')
                    else:
                        print(f'[{name} seed {seed}] done in {wall[(name, seed)]:.0f} s', flush=True)
                    runs[name][seed] = read_val_scalars(run_dir, newer_than=t0)
                    continue
            runs[name][seed] = read_val_scalars(run_dir)
    if args.dry_run:
        return {}
    summary = summarise(runs)
    paths = write_reports(work_dir, names, args.configs, runs, summary, notes, args.seeds, wall, args.baseline)
    for name in names:
        s = summary[name]
        print(f'{name}: final top-1 {_pm(s["final_mean"], s["final_std"])} over {len(s["final"])} seed(s), '
              f'best {_pm(s["best_mean"], s["best_std"])}')
    for p in paths:
        print(f'wrote {p}')
    if args.results_json:
        write_results(args.results_json, {'final': results_table(names, summary, args.seeds, args.baseline)},
                      {'summary': {n: {k: summary[n][k] for k in ('final', 'best')} for n in names},
                       'configs': dict(zip(names, args.configs))})
        print(f'wrote {args.results_json}')
    missing = [(n, s) for n in names for s in args.seeds if not runs[n].get(s)]
    if missing:
        print('runs without validation results: ' + ', '.join(f'{n}/seed{s}' for n, s in missing))
        raise SystemExit(1)
    return summary


if __name__ == '__main__':
    main()
