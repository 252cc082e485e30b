"""One-command GPU check of TL-Align under mixed precision: cost, precision, a synchronisation-free step.

Run on a machine with one NVIDIA GPU (``bash tools/gpu_check.sh``; needs only torch, timm,
mmengine and this package -- no mmcv / mmseg / mmdet).  It does three things and prints one table:

1. **Label-path cost** (``tools/analysis/benchmark_label_path.py``, in this process): DeiT-S and
   DeiT-B at batch 128, Swin-T at batch 64, 224 px, under bfloat16 and float16 autocast; the
   variants ``baseline`` (CutMix, no labels), ``tla`` (ours, ``attn_impl='auto'``: on a GPU the
   labels ride in the features' own fused attention call), ``tla32`` (``label_dtype='float32'``: a
   second float32 attention call per block) and ``reference`` (K = 1000 labels, materialised
   attention, the reference code's way); then ``baseline`` and ``tla`` again with
   ``attn_impl='materialised'`` (the softmax written out once for features and labels, the path
   ``'auto'`` takes on a CPU under low-precision autocast), so that the table shows what the
   other path costs on this GPU (compare the step ms; each row's ratio is against the baseline
   of its own ``attn_impl``).
   Forward + backward timed with CUDA events, interleaved, as paired ratios against the baseline
   with a 95% interval; images per second; ``torch.cuda.max_memory_allocated`` growth.
2. **Precision**: DeiT-S and Swin-T with trained-like attention
   (``structure_attention_``, ``tools/analysis/structured_attention.py``), one mixed batch traced in
   float32 and under each autocast dtype, with each ``attn_impl`` (``fused``, ``materialised``)
   and each ``label_dtype``; the budget is a mean move of the aligned share of A
   <= 5e-4, worst <= 5e-3, label mass within 1e-3.
3. **Pretraining without host syncs**: ``--pretrain-iters`` (50) iterations of each of
   :data:`PRETRAIN_CONFIGS` (TL-Align and TransMix on DeiT-S, under ``configs/pretrain/``; their
   AmpOptimWrapper, float16) through mmengine's Runner on synthetic ImageNet-shaped images, each ``train_step`` under
   ``torch.cuda.set_sync_debug_mode('error')``.  mmengine's own logging hooks, which read the
   losses back after the step, run outside that mode.

Each part's wall time is printed under the table (the whole check is meant to take under
8 minutes on one recent GPU with the defaults).

Exit status: 0 when every check ran and met its budget, 1 otherwise (also without CUDA).

Usage:
    bash tools/gpu_check.sh [--iters 20] [--warmup 5] [--pretrain-iters 50] [--json gpu_check.json]
"""
from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import sys
import time
import traceback
from types import SimpleNamespace

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = (('deit-small', 128), ('deit-base', 128), ('swin-tiny', 64))
AMP = ('bfloat16', 'float16')
VARIANTS = ('baseline', 'tla', 'tla32', 'reference')
#: attn_impl -> the variants timed with it: 'auto' (the fused kernel on a GPU) all of them, the
#: materialised path the baseline and ours
ATTN_IMPLS = {'auto': VARIANTS, 'materialised': ('baseline', 'tla')}
BUDGET = dict(share_absdiff_mean=5e-4, share_absdiff_max=5e-3, mass_err_max=1e-3)


def _bench_module():
    path = os.path.join(REPO, 'tools', 'analysis', 'benchmark_label_path.py')
    spec = importlib.util.spec_from_file_location('benchmark_label_path', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def label_path_rows(iters: int, warmup: int, device: torch.device, models=MODELS, amps=AMP,
                    attn_impls=ATTN_IMPLS, img: int = 224) -> list[dict]:
    """The label-path benchmark for each (model, batch) x autocast dtype x ``attn_impls`` entry.

    Args:
        attn_impls: attn_impl -> the variants to time with it (:data:`ATTN_IMPLS`).
        img: input side in pixels (ImageNet's 224; the CPU test's toy size is smaller).

    Returns:
        one dict per variant and run: model, batch, amp, attn_impl, variant, step_ms, img_s,
        ratio / lo / hi (paired ratio against the baseline of the same run, 95% interval),
        peak_mib, mem_ratio.
    """
    bench = _bench_module()
    rows = []
    for model, batch in models:
        for amp in amps:
            for attn_impl, variants in attn_impls.items():
                args = SimpleNamespace(model=model, batch=batch, img=img, num_classes=1000, drop_path=0.0,
                                       iters=iters, warmup=warmup, variants=variants, amp_dtype=amp,
                                       attn_impl=attn_impl, compile=False)
                res = bench.label_path(args, device)
                for v in variants:
                    mean, lo, hi = res['paired_ratio'][v]
                    rows.append(dict(model=model, batch=batch, amp=amp, attn_impl=attn_impl, variant=v,
                                     step_ms=1e3 * res['step_s'][v], img_s=batch / res['step_s'][v], ratio=mean,
                                     lo=lo, hi=hi, peak_mib=res['peak_bytes'][v] / 2 ** 20,
                                     mem_ratio=res['peak_bytes'][v] / res['peak_bytes']['baseline']))
                if device.type == 'cuda':
                    torch.cuda.empty_cache()
    return rows


def precision_rows(device: torch.device, batch: int = 32, amps=AMP,
                   attn_impls=('fused', 'materialised')) -> list[dict]:
    """:func:`~tlalign_mm.analysis.precision.label_precision` of structured DeiT-S / Swin-T, each
    ``attn_impls`` entry and both label dtypes; one dict per (model, attn_impl, label_dtype, amp)
    with ``ok`` (within :data:`BUDGET`) and the figures of ``label_precision``."""
    from structured_attention import structure_attention_, structured_mixed_batch  # next to this script

    from tlalign_mm.analysis.precision import label_precision
    from tlalign_mm.models.backbones import TLASwinTransformer, TLAVisionTransformer
    rows = []
    for name in ('deit-small', 'swin-tiny'):
        for attn_impl, label_dtype in itertools.product(attn_impls, ('auto', 'float32')):
            torch.manual_seed(0)
            kw = dict(attn_impl=attn_impl, label_dtype=label_dtype)
            if name.startswith('deit'):
                m = TLAVisionTransformer(name, out_type='cls_token', **kw)
            else:
                m = TLASwinTransformer(name, out_indices=(3,), out_type='avg_featmap', **kw)
            m.init_weights()
            structure_attention_(m.eval(), seed=0)
            m = m.to(device)
            x, y0, _ = structured_mixed_batch(m, batch=batch)
            for amp in amps:
                r = label_precision(m, x, y0, getattr(torch, amp))
                ok = all(r[k] <= v for k, v in BUDGET.items())
                rows.append(dict(model=name, attn_impl=attn_impl, label_dtype=label_dtype, amp=amp, ok=ok, **r))
    return rows


class _SyntheticImageNet(torch.utils.data.Dataset):
    """ImageNet-shaped random images (3 x 224 x 224 uint8) with labels 0..999, packed as the
    data preprocessor expects them."""

    def __init__(self, length: int, size: int = 224):
        self.length, self.size = length, size

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        from mmengine.structures import BaseDataElement
        g = torch.Generator().manual_seed(i)
        img = torch.randint(0, 256, (3, self.size, self.size), generator=g, dtype=torch.uint8)
        sample = BaseDataElement()
        sample.set_field(torch.tensor([i % 1000]), 'gt_label')
        return dict(inputs=img, data_samples=sample)


PRETRAIN_CONFIGS = ('deit-small_tla_8xb128-300e_in1k.py', 'deit-small_transmix_8xb128-300e_in1k.py')
"""The pretraining configs part 3 trains (under ``configs/pretrain/``): TL-Align, and TransMix, whose rule
reads the labels differently."""


def pretrain_sync_check(iters: int, work_dir: str, cfg_options: dict | None = None,
                        config: str = PRETRAIN_CONFIGS[0]) -> dict:
    """Train ``configs/pretrain/<config>`` for ``iters`` iterations, each train_step in sync-error mode.

    ``cfg_options`` are merged into the config first (as ``--cfg-options``).  The result names ``config``.
    """
    from mmengine.config import Config
    from mmengine.runner import Runner

    import tlalign_mm  # noqa: F401  (registries)
    cfg = Config.fromfile(os.path.join(REPO, 'configs', 'pretrain', config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if not torch.cuda.is_available():  # a CPU smoke run (tests): fp32, as tools/train.py does
        import _common  # noqa: F401  (tools/analysis/_common.py puts tools/ on sys.path)
        from config_checks import amp_to_fp32_without_cuda  # tools/config_checks.py
        amp_to_fp32_without_cuda(cfg)
    batch = cfg.train_dataloader.batch_size
    runner = Runner(
        model=cfg.model, work_dir=work_dir, default_scope='tlalign_mm',
        train_dataloader=dict(dataset=_SyntheticImageNet(batch * iters), batch_size=batch, num_workers=4,
                              pin_memory=True, sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='default_collate')),
        optim_wrapper=cfg.optim_wrapper, train_cfg=dict(by_epoch=False, max_iters=iters),
        default_hooks=dict(logger=dict(type='LoggerHook', interval=10), checkpoint=None),
        log_processor=dict(by_epoch=False, window_size=10), randomness=dict(seed=0))
    model = runner.model
    plain = model.train_step
    steps = []

    def train_step(*args, **kwargs):
        torch.cuda.set_sync_debug_mode('error')
        try:
            out = plain(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode('default')
        steps.append(out)
        return out

    model.train_step = train_step
    t0 = time.perf_counter()
    try:
        runner.train()
    except Exception as e:  # report where the step synchronised, then fail the check
        frames = [f for f in traceback.extract_tb(e.__traceback__) if 'site-packages/torch/' not in f.filename]
        where = '; '.join(f'{os.path.basename(f.filename)}:{f.lineno} {f.line}' for f in frames[-3:])
        return dict(config=config, ok=False, iters=len(steps), error=f'{type(e).__name__}: {e} at {where}')
    losses = [float(s['loss']) for s in steps]
    return dict(config=config, ok=len(steps) == iters and all(map(lambda v: v == v, losses)), iters=len(steps),
                first_loss=losses[0], last_loss=losses[-1], seconds=time.perf_counter() - t0,
                lam_gap=float(steps[-1].get('align/lam_gap', float('nan'))))


def print_table(device_name: str, bench: list[dict], prec: list[dict], pre: list[dict],
                seconds: dict | None = None) -> None:
    """The three parts as Markdown tables (``pre``: a :func:`pretrain_sync_check` result per config);
    ``seconds`` (part -> wall seconds) on a last line."""
    print(f'\n## GPU check: {device_name} | torch {torch.__version__}')
    print('\n| model | batch | autocast | attn_impl | variant | step ms | img/s | x baseline [95% CI] | peak MiB '
          '| x mem |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for r in bench:
        print(f"| {r['model']} | {r['batch']} | {r['amp']} | {r['attn_impl']} | {r['variant']} | {r['step_ms']:.1f} | "
              f"{r['img_s']:.0f} | {r['ratio']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] | {r['peak_mib']:.0f} | "
              f"{r['mem_ratio']:.3f} |")
    print('\n| model | attn_impl | label_dtype | autocast | share moved, mean | max | mass err max | fluctuation '
          '| budget |')
    print('|---|---|---|---|---|---|---|---|---|')
    for r in prec:
        print(f"| {r['model']} | {r['attn_impl']} | {r['label_dtype']} | {r['amp']} | {r['share_absdiff_mean']:.2e} | "
              f"{r['share_absdiff_max']:.2e} | {r['mass_err_max']:.1e} | {r['fluctuation_mean']:.3f} | "
              f"{'ok' if r['ok'] else 'OVER'} |")
    print('\n| pretraining config, AMP, sync-debug error | iterations | result |')
    print('|---|---|---|')
    for r in pre:
        if r['ok']:
            print(f"| {r['config']} | {r['iters']} | ok: no host sync in train_step; loss {r['first_loss']:.3f} -> "
                  f"{r['last_loss']:.3f}, {r['seconds']:.0f} s |")
        else:
            print(f"| {r['config']} | {r['iters']} before failing | {r.get('error', 'non-finite loss')} |")
    if seconds:
        print('\nwall time: ' + ', '.join(f'{k} {v:.0f} s' for k, v in seconds.items()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--iters', type=int, default=20, help='timed rounds per benchmark')
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--pretrain-iters', type=int, default=50)
    p.add_argument('--work-dir', default='work_dirs/gpu_check')
    p.add_argument('--json', help='also write every figure to this JSON file')
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print('gpu_check: CUDA is not available on this machine; run it where torch sees an NVIDIA GPU.')
        return 1
    device = torch.device('cuda')
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    seconds, t0 = {}, time.perf_counter()
    bench = label_path_rows(args.iters, args.warmup, device)
    seconds['label path'], t0 = time.perf_counter() - t0, time.perf_counter()
    prec = precision_rows(device)
    seconds['precision'], t0 = time.perf_counter() - t0, time.perf_counter()
    pre = [pretrain_sync_check(args.pretrain_iters, os.path.join(args.work_dir, c.split('_')[1]), config=c)
           for c in PRETRAIN_CONFIGS]
    seconds['pretraining'] = time.perf_counter() - t0
    print_table(torch.cuda.get_device_name(), bench, prec, pre, seconds)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, label_path=bench,
                           precision=prec, pretrain=pre, seconds=seconds), f, indent=1)
    auto_ok = all(r['ok'] for r in prec if r['label_dtype'] == 'auto')
    return 0 if auto_ok and all(r['ok'] for r in pre) else 1


if __name__ == '__main__':
    sys.exit(main())
