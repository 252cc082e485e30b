"""The mixing ratio each label rule reads, block by block, for the samples whose share moves most
(the TL-Align paper's Fig. 4).

    python tools/analysis/rule_lambdas.py CONFIG [CHECKPOINT] [--num-batches N] [--top-k K]
        [--teacher-config CFG --teacher-checkpoint CKPT] [--out-dir DIR] [--device DEV] [--seed S]
        [--cfg-options KEY=VALUE ...]

Builds the model and the training dataloader from CONFIG, loads CHECKPOINT (without one the
network is randomly initialised and the outputs say so), mixes N training batches with the
model's data preprocessor and, for every sample, reads the share of image A in the target as
the area rule, TL-Align, TransMix and (with a teacher) TokenMix would give it at every block
(:mod:`tlalign_mm.analysis.rule_lambdas`).  The K samples whose TL-Align share moves most are
written to DIR (default ``work_dirs/rule_lambdas/<config>``) by ``plotting.py`` next to this
script: ``rule_lambdas.csv`` (sample, rule, block, lam_A) and ``rule_lambdas.png`` (one panel
per sample).
"""
from __future__ import annotations

import argparse
import os.path as osp

from _common import add_config_checkpoint_args, device_arg, output_dir, weights_title
from config_checks import CfgOptions  # tools/config_checks.py (tools/ on sys.path: _common)
from results_file import add_results_arg, table, write_results  # tools/analysis/results_file.py

import tlalign_mm  # noqa: F401  (registries)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_checkpoint_args(p)
    p.add_argument('--num-batches', type=int, default=2)
    p.add_argument('--batch-size', type=int, default=None, help="default: the config's train batch size")
    p.add_argument('--top-k', type=int, default=8, help='samples to show (largest TL-Align fluctuation)')
    p.add_argument('--teacher-config', default=None, help='a classifier config: adds the TokenMix curve')
    p.add_argument('--teacher-checkpoint', default=None)
    p.add_argument('--out-dir', default=None)
    p.add_argument('--device', type=device_arg, default=None, help='cpu, cuda, ... (default: cuda if available)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--cfg-options', nargs='+', action=CfgOptions, help='override config keys (KEY=VALUE)')
    add_results_arg(p)
    args = p.parse_args(argv)
    if bool(args.teacher_config) != bool(args.teacher_checkpoint):
        p.error('--teacher-config and --teacher-checkpoint go together')
    if args.top_k < 1 or args.num_batches < 1:
        p.error('--top-k and --num-batches must be >= 1')
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch
    from _common import (  # tools/analysis/_common.py
        build_classifier,
        build_train_dataloader,
        load_config,
        pick_device,
    )
    from mmengine.runner import set_random_seed
    from plotting import plot_rule_lambdas, write_rule_lambdas  # tools/analysis/plotting.py

    from tlalign_mm.analysis.rule_lambdas import most_fluctuating, rule_lambdas
    from tlalign_mm.analysis.tracing import block_names, iter_blocks

    cfg = load_config(args.config, args.cfg_options, ['train_dataloader'])
    stem, out_dir = output_dir(args.config, args.out_dir, 'rule_lambdas')
    device = pick_device(args.device)
    model, weights = build_classifier(cfg, args.checkpoint, device, seed=args.seed)
    teacher = None
    if args.teacher_config:
        from tlalign_mm.models.label_rules import TokenMixRule
        teacher = TokenMixRule(dict(config=args.teacher_config, checkpoint=args.teacher_checkpoint))
        teacher.setup(model)
    loader = build_train_dataloader(cfg, args.batch_size, 0, seed=args.seed)
    set_random_seed(args.seed)
    curves, names = {}, []
    it = iter(loader)
    for b in range(args.num_batches):
        data = model.data_preprocessor(next(it), training=True)
        mix = data['mix']
        if mix is None or not mix.mixed:
            continue
        labels = model._labels(data['data_samples'])
        one = rule_lambdas(model, data['inputs'], labels, mix, teacher)
        for k, v in one.items():
            curves.setdefault(k, []).append(v)
        names += [f'batch {b} sample {i} ({mix.mode})' for i in range(len(labels))]
    if not curves:
        raise SystemExit('no mixed batch among the batches drawn: raise --num-batches')
    curves = {k: torch.cat(v, dim=1) for k, v in curves.items()}
    top = most_fluctuating(curves, args.top_k)
    layers = block_names(iter_blocks(model.backbone))
    picked = [names[i] for i in top]
    csv_path = write_rule_lambdas(curves, top, layers, osp.join(out_dir, 'rule_lambdas.csv'), picked)
    what = weights_title(weights)
    png = plot_rule_lambdas(curves, top, layers, osp.join(out_dir, 'rule_lambdas.png'),
                            f'{stem} -- weights: {what}', picked)
    gap = {k: float((v[:, top] - curves['area'][:, top]).abs().mean()) for k, v in curves.items()}
    print(f'rule_lambdas: {curves["area"].shape[1]} mixed samples, {len(layers)} blocks, weights: {weights}')
    print('  mean |lam_A(rule) - lam_A(area)| over the shown samples and blocks: '
          + ', '.join(f'{k} {v:.4f}' for k, v in gap.items()))
    print(f'  wrote {csv_path}\n  wrote {png}')
    if args.results_json:
        rows = [[k, f'{v:.4f}'] for k, v in gap.items() if k != 'area']
        write_results(args.results_json,
                      {'gap': table(['rule', 'mean abs(lam_A(rule) - lam_A(area)), shown samples x blocks'], rows)},
                      {'gap': gap, 'samples': picked, 'blocks': list(layers), 'weights': what})
        print(f'  wrote {args.results_json}')
    return dict(samples=picked, gap=gap, csv=csv_path, png=png)


if __name__ == '__main__':
    from config_checks import DataRootError  # tools/config_checks.py (tools/ on sys.path: _common)
    from launch import exit_on_checkpoint_error  # tools/launch.py
    with exit_on_checkpoint_error('rule_lambdas.py', DataRootError):
        main()
