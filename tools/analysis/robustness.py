"""Robustness and out-of-distribution evaluation of classifiers, written as one table.

    python tools/analysis/robustness.py CONFIG CHECKPOINT [CHECKPOINT ...] [CONFIG CHECKPOINT ...] [--names N ...]
        [--suites clean a r sketch v2 c fgsm pgd autoattack] [--data-root data]
        [--imagenet-a DIR] [--imagenet-r DIR] [--imagenet-sketch DIR] [--imagenet-v2 DIR] [--imagenet-c DIR]
        [--eps 1/255] [--pgd-steps 10] [--pgd-alpha A] [--autoattack-version standard] [--adv-samples 1000]
        [--autoattack-samples N]
        [--baseline NAME] [--classes FILE] [--out-dir DIR] [--batch-size B] [--num-workers W] [--device D]

Suites (each optional; a missing folder is skipped with a line saying where it was looked for):

``clean``      top-1 on the config's test set.
``a`` / ``r``  ImageNet-A / ImageNet-R (``<dir>/<wnid>/*``), logits restricted to their 200 classes
               (the wnid lists in ``tlalign_mm/evaluation/wnids/``), as their ``eval.py`` scores them.
``sketch``     ImageNet-Sketch (``<dir>/<wnid>/*``, or ``<dir>/sketch/<wnid>/*``), 1000 classes.
``v2``         ImageNet-V2 (``<dir>/<class index 0..999>/*``, the release's folder format).
``c``          ImageNet-C (``<dir>/<corruption>/<severity>/<class>/*``): top-1 error per corruption
               averaged over the severities, the mCE normalised by AlexNet's published errors
               (ImageNet-1k models only), the unnormalised mean, and with ``--baseline`` the mCE
               relative to that run.  Images are scored as Hendrycks' ``test.py`` does, without
               resizing: the test transform's ``crop_pct`` is set to 1.
``fgsm`` / ``pgd`` / ``autoattack``
               L-inf attacks from torchattacks (FGSM; PGD with random start; AutoAttack, ``standard``
               = APGD-CE, APGD-T, FAB-T, Square) in pixel space [0, 1] with ``--eps``, on
               ``--adv-samples`` images spread evenly over the config's test set (AutoAttack on
               ``--autoattack-samples`` of them when given).

Classes: an ImageNet-1k model (1000 classes) is taken to use the standard wnid order
(``tlalign_mm/evaluation/wnids/imagenet_1k.txt``); any other model's classes are those of its
config's test set, or ``--classes FILE``.  A benchmark folder whose class folders are not in the
list it is scored against raises an error naming that list.

Every checkpoint is evaluated with the config (a ``.py`` file) before it; all of them make one
table with a column per name.  A run's name is its config's file stem unless ``--names`` gives one
per checkpoint; runs that share a name (seeds) are shown as mean ± std.  Writes ``robustness.md``
and ``robustness.csv`` (the table) and ``robustness_runs.csv`` (every run's values) to
``--out-dir`` (default ``work_dirs/robustness``).
"""
from __future__ import annotations

import argparse
import copy
import csv
import math
import os
import os.path as osp
import time
from fractions import Fraction

from _common import device_arg  # tools/analysis/_common.py
from results_file import add_results_arg, render_table, write_results  # tools/analysis/results_file.py
from results_file import table as results_table

import tlalign_mm  # noqa: F401  (registries)

SUITES = ('clean', 'a', 'r', 'sketch', 'v2', 'c', 'fgsm', 'pgd', 'autoattack')
FOLDER_SUITES = {'a': ('imagenet_a', 'imagenet-a'), 'r': ('imagenet_r', 'imagenet-r'),
                 'sketch': ('imagenet_sketch', 'imagenet-sketch'),
                 'v2': ('imagenet_v2', 'imagenetv2-matched-frequency-format-val'),
                 'c': ('imagenet_c', 'imagenet-c')}
ADV_SUITES = ('fgsm', 'pgd', 'autoattack')


def _fraction(text: str) -> float:
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError) as e:
        raise argparse.ArgumentTypeError(f'not a number or fraction: {text!r}') from e


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument('runs', nargs='+', metavar='CONFIG CHECKPOINT',
                   help='a config (.py) followed by one or more of its full classifier checkpoints; repeatable')
    p.add_argument('--names', nargs='+', default=None,
                   help='a column name per checkpoint (default: its config\'s stem); repeated names are averaged')
    p.add_argument('--suites', nargs='+', default=list(SUITES), choices=SUITES)
    p.add_argument('--data-root', default='data', help='where the default benchmark folders are looked for')
    for suite, (dest, default) in FOLDER_SUITES.items():
        p.add_argument('--' + dest.replace('_', '-'), dest=dest, default=None, metavar='DIR',
                       help=f'the {suite!r} suite folder (default: DATA_ROOT/{default})')
    p.add_argument('--corruptions', nargs='+', default=None, help='ImageNet-C corruptions (default: all 15)')
    p.add_argument('--severities', nargs='+', type=int, default=[1, 2, 3, 4, 5])
    p.add_argument('--eps', type=_fraction, default=1 / 255, help='L-inf radius in [0, 1] pixel units (1/255 ok)')
    p.add_argument('--pgd-steps', type=int, default=10)
    p.add_argument('--pgd-alpha', type=_fraction, default=None, help='PGD step (default 2.5 * eps / steps)')
    p.add_argument('--autoattack-version', default='standard', choices=('standard', 'plus', 'rand'))
    p.add_argument('--adv-samples', type=int, default=1000, help='test images attacked (evenly spaced)')
    p.add_argument('--autoattack-samples', type=int, default=None,
                   help='test images AutoAttack attacks (default: --adv-samples; it costs ~100x PGD-10)')
    p.add_argument('--adv-batch-size', type=int, default=None, help='default: --batch-size')
    p.add_argument('--baseline', default=None, help='a --names entry: adds the mCE relative to it')
    p.add_argument('--classes', default=None, help='a file with the model\'s class names, one per line')
    p.add_argument('--batch-size', type=int, default=None, help="default: the config's test batch size")
    p.add_argument('--num-workers', type=int, default=2)
    p.add_argument('--device', type=device_arg, default=None, help='cpu, cuda, ... (default: cuda if available)')
    p.add_argument('--out-dir', default=osp.join('work_dirs', 'robustness'))
    p.add_argument('--seed', type=int, default=0, help='seed of the attacks\' random starts')
    add_results_arg(p)
    args = p.parse_args(argv)
    args.pairs, config = [], None
    for path in args.runs:
        if path.endswith('.py'):
            if config is not None and not any(c == config for c, _ in args.pairs):
                p.error(f'config {config} is followed by no checkpoint')
            config = path
        elif config is None:
            p.error(f'{path}: a checkpoint must follow the config it belongs to (CONFIG CHECKPOINT ...)')
        else:
            args.pairs.append((config, path))
    if not any(c == config for c, _ in args.pairs):
        p.error(f'config {config} is followed by no checkpoint')
    # every file before any evaluation: a typo in the last pair must not cost the first pair's run
    if missing := [f for pair in args.pairs for f in pair if not osp.isfile(f)]:
        p.error(f'not found: {", ".join(dict.fromkeys(missing))} (CONFIG CHECKPOINT pairs)')
    if args.names is None:
        args.names = [osp.splitext(osp.basename(c))[0] for c, _ in args.pairs]
    if len(args.names) != len(args.pairs):
        p.error(f'--names has {len(args.names)} entries for {len(args.pairs)} checkpoints')
    if args.baseline is not None and args.baseline not in args.names:
        p.error(f'--baseline {args.baseline!r} is not one of --names {sorted(set(args.names))}')
    if not set(args.severities) <= {1, 2, 3, 4, 5}:
        p.error('--severities are in 1..5')
    if args.eps <= 0 or args.pgd_steps < 1 or args.adv_samples < 1 or (args.autoattack_samples or 1) < 1:
        p.error('--eps, --pgd-steps and --adv-samples must be positive')
    if args.pgd_alpha is None:
        args.pgd_alpha = 2.5 * args.eps / args.pgd_steps
    return args


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

def class_folders(root: str) -> list[str]:
    """The sorted, non-hidden sub-folder names of ``root``."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith('.'))


def eval_pipeline(cfg, crop_pct: float | None = None) -> list:
    """The config's test pipeline, with ``crop_pct`` of its ``TimmClassificationTransform`` replaced."""
    pipeline = copy.deepcopy(cfg.test_dataloader['dataset']['pipeline'])
    if crop_pct is not None:
        for step in pipeline:
            if isinstance(step, dict) and step.get('type') == 'TimmClassificationTransform':
                step['crop_pct'] = crop_pct
    return pipeline


def folder_loader(cfg, args, root: str, classes, pipeline, indices=None, batch_size=None):
    """A test dataloader over ``root/<class>/*`` with labels = positions in ``classes``."""
    dl = dict(cfg.test_dataloader)
    dl['dataset'] = dict(type='ImageNetDataset', data_root=root, split='', classes=list(classes),
                         pipeline=pipeline, test_mode=True, indices=indices)
    return _loader(dl, args, batch_size)


def config_loader(cfg, args, indices=None, batch_size=None):
    """The config's own test dataloader (optionally on a subset of its samples)."""
    dl = copy.deepcopy(cfg.test_dataloader)
    if indices is not None:
        dl['dataset']['indices'] = indices
    return _loader(dl, args, batch_size)


def _loader(dl, args, batch_size):
    from _common import build_dataloader
    return build_dataloader(dl, batch_size or args.batch_size or dl.get('batch_size', 64), args.num_workers,
                            seed=args.seed, shuffle=False)


def model_classes(cfg, model, args) -> tuple[list[str], str]:
    """The model's class names in label order and where they come from (named in errors)."""
    from _common import build_dataset, class_names

    from tlalign_mm.evaluation.robustness import read_wnids, wnid_list_path
    k = model.num_classes
    if args.classes:
        with open(args.classes) as f:
            names = [ln.strip() for ln in f if ln.strip()]
        source = f'--classes {args.classes}'
    elif k == 1000:
        names, source = list(read_wnids('imagenet_1k')), wnid_list_path('imagenet_1k')
    else:
        try:
            names = class_names(build_dataset(cfg, 'test'))
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f'cannot tell the {k} class names of the model from its test set ({e}); '
                             'pass --classes FILE') from e
        root = cfg.test_dataloader['dataset'].get('data_root', '')
        source = f"the classes of the config's test set ({root})"
        if names is None:
            raise SystemExit(f'the config\'s test set lists no class names; pass --classes FILE ({k} lines)')
    if len(names) != k:
        raise SystemExit(f'{source} names {len(names)} classes but the model has {k}')
    return names, source


def locate(args, suite: str) -> str | None:
    """The suite's folder, or None (and a line saying where it was looked for) when absent."""
    dest, default = FOLDER_SUITES[suite]
    given = getattr(args, dest)
    root = given or osp.join(args.data_root, default)
    if suite == 'sketch' and osp.isdir(osp.join(root, 'sketch')):
        root = osp.join(root, 'sketch')  # the release's archive unpacks to sketch/<wnid>/
    if not osp.isdir(root):
        how = '' if given else f' (pass --{dest.replace("_", "-")} DIR)'
        log(f'[{suite}] skipped: no folder {root}{how}')
        return None
    return root


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------

def top1(model, loader, device, indices=None) -> tuple[float, int]:
    """Top-1 accuracy in [0, 1] and the number of images; logits restricted to ``indices``."""
    import torch
    correct = torch.zeros((), dtype=torch.long, device=device)
    n = 0
    with torch.no_grad():
        for data in loader:
            data = model.data_preprocessor(data, False)
            logits = model(data['inputs'], mode='tensor')
            if indices is not None:
                logits = logits[:, indices]
            labels = torch.cat([ds.gt_label.reshape(-1) for ds in data['data_samples']]).to(device)
            correct += (logits.argmax(1) == labels).sum()
            n += labels.numel()
    if n == 0:
        raise SystemExit('the dataloader yielded no images')
    return int(correct) / n, n


def run_subset_suite(suite, cfg, args, model, classes, device, rows):
    """ImageNet-A / -R: 200 wnid folders, logits restricted to them."""
    from tlalign_mm.evaluation.robustness import check_class_folders, read_wnids, subset_indices, wnid_list_path
    root = locate(args, suite)
    if root is None:
        return
    list_name = {'a': 'imagenet_a', 'r': 'imagenet_r'}[suite]
    wnids, list_path = read_wnids(list_name), wnid_list_path(list_name)
    check_class_folders(class_folders(root), wnids, list_path, root)
    idx = subset_indices(classes, wnids, list_path).to(device)
    acc, n = top1(model, folder_loader(cfg, args, root, wnids, eval_pipeline(cfg)), device, idx)
    rows.append(('imagenet-' + suite, 'top-1 (%), 200 classes', 'up', 100 * acc, n))


def run_full_suite(suite, cfg, args, model, classes, class_source, device, rows):
    """ImageNet-Sketch (wnid folders) and ImageNet-V2 (class-index folders) on all classes."""
    from tlalign_mm.evaluation.robustness import check_class_folders
    root = locate(args, suite)
    if root is None:
        return
    if suite == 'v2':
        labels = [str(i) for i in range(len(classes))]
        check_class_folders(class_folders(root), labels,
                            f'the class indices 0..{len(classes) - 1} of {class_source}', root)
        name = 'imagenet-v2'
    else:
        labels = classes
        check_class_folders(class_folders(root), labels, class_source, root)
        name = 'imagenet-sketch'
    acc, n = top1(model, folder_loader(cfg, args, root, labels, eval_pipeline(cfg)), device)
    rows.append((name, 'top-1 (%)', 'up', 100 * acc, n))


def run_corruption_suite(cfg, args, model, classes, class_source, device, rows, c_errors):
    """ImageNet-C: top-1 per corruption and severity -> E_c, mCE."""
    from tlalign_mm.evaluation.robustness import (
        ALEXNET_ERRORS,
        IMAGENET_C_CORRUPTIONS,
        check_class_folders,
        corruption_errors,
        mean_corruption_error,
        read_wnids,
    )
    root = locate(args, 'c')
    if root is None:
        return
    names = args.corruptions or list(IMAGENET_C_CORRUPTIONS)
    pipeline = eval_pipeline(cfg, crop_pct=1.0)
    acc, counts = {}, 0
    for name in names:
        for sev in args.severities:
            folder = osp.join(root, name, str(sev))
            if not osp.isdir(folder):
                log(f'[c] skipped {name} severity {sev}: no folder {folder}')
                continue
            check_class_folders(class_folders(folder), classes, class_source, folder)
            acc[(name, sev)], n = top1(model, folder_loader(cfg, args, folder, classes, pipeline), device)
            counts += n
        if any(k[0] == name for k in acc):
            log(f'[c] {name}: ' + ', '.join(f's{s} {100 * a:.1f}' for (c, s), a in acc.items() if c == name))
    if not acc:
        log(f'[c] skipped: no <corruption>/<severity> folders under {root}')
        return
    errors = corruption_errors(acc)
    core = [k for k in acc if k[0] in IMAGENET_C_CORRUPTIONS]
    note = '' if len(core) == 75 else f', {len(core)} of 75 corruption/severity folders'
    alexnet = {c: e for c, e in errors.items() if c in ALEXNET_ERRORS}  # extra corruptions have none
    if alexnet and list(classes) == list(read_wnids('imagenet_1k')):
        rows.append(('imagenet-c', f'mCE (%), AlexNet-normalised{note}', 'down',
                     mean_corruption_error(alexnet, ALEXNET_ERRORS), counts))
    rows.append(('imagenet-c', f'mean corruption error (%){note}', 'down', mean_corruption_error(errors), counts))
    for name, err in errors.items():
        rows.append(('imagenet-c', f'{name} error (%)', 'down', 100 * err, counts // max(1, len(errors))))
    c_errors.update(errors)


def run_attacks(cfg, args, model, device, rows):
    """FGSM / PGD / AutoAttack on evenly spaced test images, in [0, 1] pixel space."""
    try:
        import torchattacks
    except ImportError as e:
        raise SystemExit('the attack suites need torchattacks 3.5.1 (tools/setup_env.sh installs it; '
                         f'or pip install --no-deps torchattacks==3.5.1): {e}') from e
    from tlalign_mm.evaluation.robustness import PixelSpaceClassifier
    try:
        size = len(config_loader(cfg, args, batch_size=1).dataset)
    except (FileNotFoundError, ValueError) as e:
        log(f'[adversarial] skipped: the config\'s test set cannot be read ({str(e).splitlines()[0]})')
        return
    net = PixelSpaceClassifier(model).to(device).eval()
    eps, alpha = args.eps, args.pgd_alpha
    attacks = {
        'fgsm': (f'FGSM eps={_fmt_eps(eps)} top-1 (%)',
                 lambda: torchattacks.FGSM(net, eps=eps)),
        'pgd': (f'PGD-{args.pgd_steps} eps={_fmt_eps(eps)} alpha={_fmt_eps(alpha)} top-1 (%)',
                lambda: torchattacks.PGD(net, eps=eps, alpha=alpha, steps=args.pgd_steps, random_start=True)),
        'autoattack': (f'AutoAttack-{args.autoattack_version} eps={_fmt_eps(eps)} top-1 (%)',
                       lambda: torchattacks.AutoAttack(net, norm='Linf', eps=eps, version=args.autoattack_version,
                                                       n_classes=model.num_classes, seed=args.seed)),
    }
    groups: dict[int, list[str]] = {}
    for suite in (s for s in ADV_SUITES if s in args.suites):
        n = args.autoattack_samples if suite == 'autoattack' and args.autoattack_samples else args.adv_samples
        groups.setdefault(min(n, size), []).append(suite)
    for n_samples, suites in groups.items():
        correct, n = attack_subset(cfg, args, net, {s: attacks[s][1] for s in suites}, size, n_samples, device)
        rows.append(('adversarial', f'clean top-1 (%) on the images attacked by {"/".join(suites)}', 'up',
                     100 * correct['clean'] / n, n))
        for s in suites:
            rows.append(('adversarial', attacks[s][0], 'up', 100 * correct[s] / n, n))


def attack_subset(cfg, args, net, attacks, size, n_samples, device) -> tuple[dict, int]:
    """Correct predictions (clean and under each attack) on ``n_samples`` evenly spaced test images."""
    import numpy as np
    import torch
    picks = sorted(set(np.linspace(0, size - 1, n_samples).round().astype(int).tolist()))
    loader = config_loader(cfg, args, picks, args.adv_batch_size)
    torch.manual_seed(args.seed)
    built = {s: make() for s, make in attacks.items()}
    correct = dict.fromkeys(['clean', *attacks], 0)
    n, t0 = 0, time.time()
    for data in loader:
        inputs = data['inputs']
        x = (torch.stack(list(inputs)) if isinstance(inputs, (list, tuple)) else inputs).to(device).float() / 255
        y = torch.cat([ds.gt_label.reshape(-1) for ds in data['data_samples']]).to(device)
        with torch.no_grad():
            correct['clean'] += int((net(x).argmax(1) == y).sum())
        for s, attack in built.items():
            adv = attack(x, y)
            with torch.no_grad():
                correct[s] += int((net(adv).argmax(1) == y).sum())
        n += y.numel()
    log(f'[adversarial] {", ".join(attacks)} on {n} images in {time.time() - t0:.0f} s')
    return correct, n


def _fmt_eps(x: float) -> str:
    """A radius in [0, 1] pixel units as 'k/255' (``1/255``, ``0.25/255``)."""
    v = x * 255
    return f'{round(v)}/255' if abs(v - round(v)) < 1e-9 else f'{v:.3g}/255'


def evaluate_run(config, checkpoint, args) -> tuple[list, dict]:
    """Every requested suite for one CONFIG CHECKPOINT pair: ``(rows, c_errors)``."""
    from _common import build_classifier, load_config, pick_device
    cfg = load_config(config)
    device = pick_device(args.device)
    model, _ = build_classifier(cfg, checkpoint, device, seed=args.seed, log=log, require_head=True)
    classes, source = model_classes(cfg, model, args)
    rows, c_errors = [], {}
    if 'clean' in args.suites:
        try:
            loader = config_loader(cfg, args)
        except (FileNotFoundError, ValueError) as e:
            log(f'[clean] skipped: the config\'s test set cannot be read ({str(e).splitlines()[0]})')
        else:
            acc, n = top1(model, loader, device)
            rows.append(('clean', 'top-1 (%)', 'up', 100 * acc, n))
    for suite in ('a', 'r'):
        if suite in args.suites:
            run_subset_suite(suite, cfg, args, model, classes, device, rows)
    for suite in ('sketch', 'v2'):
        if suite in args.suites:
            run_full_suite(suite, cfg, args, model, classes, source, device, rows)
    if 'c' in args.suites:
        run_corruption_suite(cfg, args, model, classes, source, device, rows, c_errors)
    if any(s in args.suites for s in ADV_SUITES):
        run_attacks(cfg, args, model, device, rows)
    return rows, c_errors


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------

def relative_mce_rows(results, args) -> None:
    """Add 'mCE relative to BASELINE' to every run that has corruption errors."""
    from tlalign_mm.evaluation.robustness import mean_corruption_error
    base = [errs for name, (_, errs) in zip(args.names, results) if name == args.baseline and errs]
    if not base:
        return
    common = set.intersection(*(set(e) for _, (_, e) in zip(args.names, results) if e))
    ref = {c: sum(b[c] for b in base) / len(base) for c in common}
    for rows, errs in results:
        if errs:
            mce = mean_corruption_error({c: errs[c] for c in common}, ref)
            at = next(i for i, r in enumerate(rows) if r[1].startswith('mean corruption error')) + 1
            rows.insert(at, ('imagenet-c', f'mCE (%) relative to {args.baseline}', 'down', mce, None))


def build_table(results, names):
    """Rows of (suite, metric, better, {name: [values]}, images) in first-seen metric order."""
    order, table = [], {}
    for (rows, _), name in zip(results, names):
        for suite, metric, better, value, n in rows:
            key = (suite, metric)
            if key not in table:
                order.append(key)
                table[key] = dict(better=better, values={}, images=n)
            table[key]['values'].setdefault(name, []).append(value)
    return [(s, m, table[(s, m)]['better'], table[(s, m)]['values'], table[(s, m)]['images']) for s, m in order]


def mean_std(values):
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summary_table(table, names_per_run: list[str]) -> dict:
    """The summary (a ``results_file.table``): one row per suite and metric, one column per name, mean ± std
    over the runs of that name (its seeds)."""
    names = list(dict.fromkeys(names_per_run))
    seeds = {n: names_per_run.count(n) for n in names}
    rows = []
    for suite, metric, better, values, images in table:
        cells = []
        for n in names:
            m, s = mean_std(values[n]) if n in values else (None, None)
            cells.append('' if m is None else f'{m:.2f}' + ('' if s is None else f' ± {s:.2f}'))
        rows.append([suite, f'{metric} {"↑" if better == "up" else "↓"}', *cells, images or ''])
    return results_table(['suite', 'metric', *(f'{n} (n={seeds[n]})' if seeds[n] > 1 else n for n in names),
                          'images'], rows)


def write_outputs(table, results, args) -> tuple[str, str, str]:
    os.makedirs(args.out_dir, exist_ok=True)
    names = list(dict.fromkeys(args.names))
    md = osp.join(args.out_dir, 'robustness.md')
    summary = summary_table(table, args.names)
    with open(md, 'w') as f:
        f.write(render_table(summary) + '\n')
    if args.results_json:
        write_results(args.results_json, {'summary': summary},
                      {'runs': [dict(name=n, config=c, checkpoint=k, rows=[list(r) for r in rows])
                                for (rows, _), n, (c, k) in zip(results, args.names, args.pairs)]})
    csv_path = osp.join(args.out_dir, 'robustness.csv')
    with open(csv_path, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['suite', 'metric', 'better'] + [c for n in names for c in (n, f'{n}_std', f'{n}_runs')]
                   + ['images'])
        for suite, metric, better, values, images in table:
            cells = []
            for n in names:
                m, s = mean_std(values[n]) if n in values else (None, None)
                cells += ['' if m is None else f'{m:.4f}', '' if s is None else f'{s:.4f}', len(values.get(n, []))]
            w.writerow([suite, metric, better] + cells + [images or ''])
    runs_path = osp.join(args.out_dir, 'robustness_runs.csv')
    with open(runs_path, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['name', 'config', 'checkpoint', 'suite', 'metric', 'value', 'images'])
        for (rows, _), name, (cfg, ck) in zip(results, args.names, args.pairs):
            for suite, metric, _better, value, n in rows:
                w.writerow([name, cfg, ck, suite, metric, f'{value:.4f}', n or ''])
    return md, csv_path, runs_path


def main(argv=None) -> dict:
    args = parse_args(argv)
    results = []
    for i, ((config, checkpoint), name) in enumerate(zip(args.pairs, args.names)):
        log(f'==== run {i + 1}/{len(args.pairs)}: {name}: {config} {checkpoint}')
        results.append(evaluate_run(config, checkpoint, args))
    if args.baseline:
        relative_mce_rows(results, args)
    table = build_table(results, args.names)
    if not table:
        raise SystemExit('no suite could be evaluated (see the skipped lines above)')
    md, csv_path, runs_path = write_outputs(table, results, args)
    with open(md) as f:
        log('\n' + f.read())
    log(f'wrote {md}\nwrote {csv_path}\nwrote {runs_path}')
    return dict(table=table, md=md, csv=csv_path, runs_csv=runs_path)


if __name__ == '__main__':
    import _common  # noqa: F401  (puts tools/ on sys.path)
    from launch import exit_on_checkpoint_error
    with exit_on_checkpoint_error('robustness.py'):
        main()
