"""Token fluctuation of a TL-Align / CutMix classifier on mixed training batches (paper Fig. 3).

    python tools/analysis/token_fluctuation.py CONFIG [CHECKPOINT] [--num-batches N]
        [--batch-size B] [--out-dir DIR] [--device DEV] [--seed S] [--cfg-options K=V ...]
        [--amp-dtype {float16,bfloat16}]

Builds the model and the training dataloader from CONFIG, loads CHECKPOINT (any layout the
backbone loader reads; without one the network is randomly initialised and the outputs say so),
mixes N batches through the model's data preprocessor in training mode (the backbone itself in
eval mode, no gradients) and writes to DIR (default ``work_dirs/token_fluctuation/<config>``):

* ``fluctuation.csv``: one row per sample: lam, aligned lam, target L2 (``||y_al - y_area||_2``);
* ``fluctuation_layers.csv``: one row per block: mean/std of ``|lam_l - lam|`` for the class
  token (DeiT) or the mean token (Swin) after that block;
* ``fluctuation_summary.json`` and ``fluctuation.png``;
* with ``--amp-dtype``: ``amp_drift.json``, how far mixed precision moves the aligned targets
  (:func:`tlalign_mm.analysis.autocast_drift`).

The computation lives in :mod:`tlalign_mm.analysis.fluctuation`, the CSV files and the figure in
``plotting.py`` next to this script.
"""
from __future__ import annotations

import argparse
import json
import os.path as osp

from _common import add_config_checkpoint_args, device_arg, output_dir, weights_title
from config_checks import CfgOptions  # tools/config_checks.py (tools/ on sys.path: _common)

import tlalign_mm  # noqa: F401  (registries)
from tlalign_mm.models.label_rules import TLAlignRule


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_checkpoint_args(p)
    p.add_argument('--num-batches', type=int, default=10)
    p.add_argument('--batch-size', type=int, default=None, help="default: the config's train batch size")
    p.add_argument('--out-dir', default=None)
    p.add_argument('--device', type=device_arg, default=None, help='cpu, cuda, cuda:1 ... (default: cuda if available)')
    p.add_argument('--num-workers', type=int, default=0)
    p.add_argument('--seed', type=int, default=0, help='seeds the initialisation, sampler and mixing')
    p.add_argument('--cfg-options', nargs='+', action=CfgOptions, help='override config keys (KEY=VALUE)')
    p.add_argument('--amp-dtype', choices=('float16', 'bfloat16'), default=None,
                   help='also measure how far mixed precision moves the aligned targets: every batch mixed '
                        'once, traced in float32 and under torch.autocast(dtype) (CUDA: as AMP training; '
                        'CPU autocast runs both dtypes too); writes amp_drift.json')
    return p.parse_args(argv)


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
    from plotting import plot_fluctuation, write_fluctuation_csv  # tools/analysis/plotting.py

    from tlalign_mm.analysis import run_fluctuation

    cfg = load_config(args.config, args.cfg_options, ['train_dataloader'])
    stem, out_dir = output_dir(args.config, args.out_dir, 'token_fluctuation')
    device = pick_device(args.device)
    model, weights = build_classifier(cfg, args.checkpoint, device, seed=args.seed)
    loader = build_train_dataloader(cfg, args.batch_size, args.num_workers, seed=args.seed)
    # the mixer draws from torch's global RNG unless the config seeds it; the training transforms
    # (timm RandAugment, random erasing) from Python's and numpy's: seed all three
    set_random_seed(args.seed)
    result = run_fluctuation(model, loader, args.num_batches)

    samples_csv, layers_csv = write_fluctuation_csv(result, out_dir, weights)
    summary = dict(result.summary(), config=args.config, weights=weights,
                   tl_align=isinstance(model.label_rule, TLAlignRule), device=str(device))
    with open(osp.join(out_dir, 'fluctuation_summary.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    what = weights_title(weights)
    title = f'{stem} -- weights: {what}'
    png = plot_fluctuation(result, osp.join(out_dir, 'fluctuation.png'), title)

    if args.amp_dtype:
        from tlalign_mm.analysis import autocast_drift
        set_random_seed(args.seed)
        drift = autocast_drift(model, loader, args.num_batches, getattr(torch, args.amp_dtype))
        summary['amp_drift'] = drift
        with open(osp.join(out_dir, 'amp_drift.json'), 'w') as f:
            json.dump(drift, f, indent=2)

    print(f'token fluctuation over {summary["num_samples"]} samples ({summary["num_batches"]} batches, '
          f'{summary["num_mixed"]} mixed), weights: {weights}')
    print(f'  target L2 ||y_aligned - y_area||_2: {summary["target_l2_mean"]:.5f} ± {summary["target_l2_std"]:.5f}')
    print(f'  lam {summary["lam_mean"]:.4f}, aligned lam {summary["lam_aligned_mean"]:.4f}, '
          f'|gap| {summary["lam_gap_mean"]:.5f} ± {summary["lam_gap_std"]:.5f}')
    print('  per-block mean |lam_l - lam| (' + summary['readout'] + '): ' + ', '.join(
        f'{n}: {d:.4f}' for n, d in zip(summary['layers'], summary['layer_drift_mean'])))
    if args.amp_dtype:
        d = summary['amp_drift']
        print(f'  autocast {d["dtype"]} on {d["device"]} vs float32 ({d["num_samples"]} samples): '
              f'|lam_al(amp) - lam_al(fp32)| mean {d["lam_aligned_absdiff_mean"]:.2e}, max '
              f'{d["lam_aligned_absdiff_max"]:.2e}; target L2 mean {d["target_l2_mean"]:.2e}, max '
              f'{d["target_l2_max"]:.2e} (fluctuation |lam_al - lam| mean {d["lam_gap_mean"]:.2e})')
        print(f'  wrote {osp.join(out_dir, "amp_drift.json")}')
    for path in (samples_csv, layers_csv, png):
        print(f'  wrote {path}')
    return summary


if __name__ == '__main__':
    from config_checks import DataRootError  # tools/config_checks.py (tools/ on sys.path: _common)
    from launch import exit_on_checkpoint_error  # tools/launch.py
    with exit_on_checkpoint_error('token_fluctuation.py', DataRootError):
        main()
