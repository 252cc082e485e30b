"""Benchmark the TL-Align label path: step time and peak memory, several ways, one run.

Variants, on the same backbone, batch and weights (training step = forward + backward of a
soft-target cross-entropy through a linear head; under ``--amp-dtype`` the forward runs in
``torch.autocast`` as AMP training does):

* ``baseline``  - CutMix baseline: no labels, target = lam * y_A + (1 - lam) * y_B;
* ``tla``       - ours: TL-Align, K = 2 source embedding taking each block's own attention
                  (``label_dtype='auto'``, the default): with ``--attn-impl fused`` riding in
                  the features' attention call (on CPU the flash kernel for DeiT, the
                  written-out window attention for Swin in training), with ``materialised``
                  read off the one written-out softmax; one attention call per block under
                  autocast either way;
* ``tla32``     - ours with ``label_dtype='float32'``: under autocast a second, float32
                  attention call per block for the labels (the same as ``tla`` without autocast);
* ``split``     - ours: plain SDPA for the features, a no-grad float32 head-mean attention pass
                  for the K = 2 labels (``attn_impl='split'``);
* ``reference`` - the reference code's way: K = num_classes labels, per-head attention
                  materialised (``attn_impl='materialised'``).

``--attn-impl`` (default ``auto``, as the backbones) sets the attention of ``baseline``, ``tla``
and ``tla32``, so that their ratio is the cost of the labels alone.
``tools/analysis/benchmark_official.py`` compares our step with the official TL-Align code's and
timm's.

Step time (CUDA events on a GPU, wall clock on CPU): median over ``--iters`` steps after
``--warmup``, the variants interleaved step by step (the order reversed every other round) so
that machine noise hits all alike.  ``x base`` is the ratio of the medians; ``paired`` is the
geometric mean over rounds of each round's ratio to the baseline step of the same round, with its
95% confidence interval (normal approximation on the log ratios).  The paired figure is the one
to quote on a noisy machine: the pairing cancels the drift of a shared machine's step time.

Peak memory: each variant in a fresh subprocess; on CPU the growth of the process's peak RSS
over its steady state before the first step, on GPU ``torch.cuda.max_memory_allocated`` during the steps.

``--dense`` adds the dense-prediction comparison: forward + backward at 512x512 of our DeiT-S
and Swin-T (no labels) against mmseg's ``VisionTransformer`` and mmdet's ``SwinTransformer`` with
the same settings (needs mmseg / mmdet).

``--compile`` puts every variant's backbone through ``torch.compile`` (inductor); the warm-up
steps then include the compilation.

Example (the figures in docs/benchmarks.md):
    python tools/analysis/benchmark_label_path.py --model deit-small --batch 8 --variants tla
    python tools/analysis/benchmark_label_path.py --model deit-small --batch 8 --variants tla,tla32 \
        --amp-dtype bfloat16 --attn-impl fused
    python tools/analysis/benchmark_label_path.py --model swin-tiny --batch 8
    python tools/analysis/benchmark_label_path.py --dense-only --batch 2
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn
from _common import device_arg  # tools/analysis/_common.py
from results_file import add_results_arg, table, write_results  # tools/analysis/results_file.py

VARIANTS = ('baseline', 'tla', 'tla32', 'split', 'reference')
#: the columns of the printed table and of the ``label_path`` results table
LABEL_PATH_COLUMNS = ['variant', 'step s', 'img/s', 'x base', 'paired [95% CI]', 'peak MiB', 'x base mem']
AMP_DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


def build(model_name: str, variant: str, num_classes: int, drop_path: float, attn_impl: str = 'auto'):
    """(backbone, linear head, prefix tokens, readout) of a variant; ``attn_impl`` for baseline / tla / tla32."""
    from tlalign_mm.models.backbones import TLASwinTransformer, TLAVisionTransformer
    impl = {'reference': 'materialised', 'split': 'split'}.get(variant, attn_impl)
    kw = dict(attn_impl=impl, label_dtype='float32' if variant == 'tla32' else 'auto', drop_path_rate=drop_path)
    if model_name.startswith('deit'):
        bb = TLAVisionTransformer(model_name, out_type='cls_token', **kw)
        dim, prefix, readout = bb.embed_dims, 1, 'cls'
    elif model_name.startswith('swin'):
        bb = TLASwinTransformer(model_name, out_indices=(3,), out_type='avg_featmap', **kw)
        dim, prefix, readout = bb.num_features, 0, 'mean'
    else:
        raise SystemExit(f'unknown --model {model_name!r}: deit-tiny/small/base or swin-tiny/small/base')
    torch.manual_seed(0)
    bb.init_weights()
    head = nn.Linear(dim, num_classes)
    return bb, head, prefix, readout


def make_batch(bb, prefix, batch, img, num_classes, variant, device):
    """A fixed CutMix-like batch for ``variant``: ``(x, initial_labels, lam, y_a, y_b)`` on ``device``.

    x (B, 3, img, img) float32 noise; a centred box of image B covering half the token grid of
    each side; lam (B,) the share of image A; y_a / y_b (B, num_classes) one-hot smoothed by 0.1
    (y_b is y_a flipped over the batch); initial_labels None for ``baseline``, the K = 2 source
    embedding (B, N, 2) for ``tla`` / ``tla32`` / ``split``, the K = num_classes class embedding
    (B, N, num_classes) for ``reference`` (N with the ``prefix`` tokens).  Seeded: every call
    gives the same tensors.
    """
    from tlalign_mm.align import initial_class_labels, initial_source_labels, smooth_one_hot
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, img, img, generator=g)
    gh, gw = bb.token_grid((img, img))
    share = torch.zeros(batch, gh, gw)
    share[:, gh // 4: 3 * gh // 4, gw // 4: 3 * gw // 4] = 1.0
    share = share.flatten(1)
    lam = 1 - share.mean(1)
    y = torch.randint(0, num_classes, (batch,), generator=g)
    y_a = smooth_one_hot(y, num_classes, 0.1)
    y_b = y_a.flip(0)
    if variant == 'baseline':
        initial_labels = None
    elif variant in ('tla', 'tla32', 'split'):
        initial_labels = initial_source_labels(share, lam, prefix)
    else:
        initial_labels = initial_class_labels(share, lam, y_a, y_b, prefix)
    mv = lambda t: None if t is None else t.to(device)  # noqa: E731
    return mv(x), mv(initial_labels), mv(lam), mv(y_a), mv(y_b)


def step(bb, head, batch, variant, readout, amp_dtype=torch.float32):
    """One training step (forward under autocast unless float32, soft-target cross-entropy, backward).

    The target: ``baseline`` the area target; ``reference`` the aligned class labels read out
    (``readout`` 'cls': the class token's row, 'mean': the token mean); the others the aligned
    K = 2 source shares expanded to y_a / y_b.  Gradients are dropped (``set_to_none``) after
    the backward; returns the loss, detached (no host sync).
    """
    from tlalign_mm.align import expand_source_labels, mixed_target
    x, initial_labels, lam, y_a, y_b = batch
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
        if variant == 'baseline':
            (feat,) = bb(x)
            target = mixed_target(lam, y_a, y_b)
        else:
            (feat,), lab = bb(x, initial_labels)
            lab = lab[:, 0] if readout == 'cls' else lab.mean(1)
            target = lab if variant == 'reference' else expand_source_labels(lab, y_a, y_b)
        logits = head(feat)
    loss = torch.sum(-target * torch.log_softmax(logits.float(), -1), -1).mean()
    loss.backward()
    bb.zero_grad(set_to_none=True)
    head.zero_grad(set_to_none=True)
    return loss.detach()


def sync(device):
    """Wait for the device's queued work (CUDA); a no-op elsewhere."""
    if device.type == 'cuda':
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    """Seconds that ``fn()`` takes: CUDA events on a GPU (device time), wall clock elsewhere."""
    if device.type == 'cuda':
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def prepare(args, variant, device):
    bb, head, prefix, readout = build(args.model, variant, args.num_classes, args.drop_path, args.attn_impl)
    bb, head = bb.to(device).train(), head.to(device)
    batch = make_batch(bb, prefix, args.batch, args.img, args.num_classes, variant, device)
    if args.compile:
        bb = torch.compile(bb)
    return bb, head, readout, batch


def time_variants(args, device):
    variants = args.variants
    models = {v: prepare(args, v, device) for v in variants}
    amp = AMP_DTYPES[args.amp_dtype]
    times = {v: [] for v in variants}
    for it in range(args.warmup + args.iters):
        for v in (variants if it % 2 == 0 else variants[::-1]):
            bb, head, readout, batch = models[v]
            t = timed(lambda: step(bb, head, batch, v, readout, amp), device)  # noqa: B023
            if it >= args.warmup:
                times[v].append(t)
    return times


def _rss_bytes():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def memory_one(args, variant, device):
    bb, head, readout, batch = prepare(args, variant, device)
    amp = AMP_DTYPES[args.amp_dtype]
    if device.type == 'cuda':
        step(bb, head, batch, variant, readout, amp)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(2):
            step(bb, head, batch, variant, readout, amp)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    base = _rss_bytes()
    for _ in range(2):
        step(bb, head, batch, variant, readout, amp)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base


#: the dense pair per backbone: our config and the codebase whose stock backbone it is compared with
DENSE_PAIRS = {
    'deit-s': (dict(type='tlalign_mm.TLAVisionTransformer', arch='deit-small', out_indices=(2, 5, 8, 11),
                    drop_path_rate=0.1), 'mmseg'),
    'swin-t': (dict(type='tlalign_mm.TLASwinTransformer', arch='tiny', out_indices=(0, 1, 2, 3), drop_path_rate=0.3),
               'mmdet'),
}


def dense_compare(args, device):
    """Our DeiT-S / Swin-T vs mmseg's ViT / mmdet's Swin: forward+backward at --dense-size.

    The stock backbone is built from ours by :func:`model_cost.stock_backbone_config` (``tools/analysis/``)
    (the mapping the FLOPs and downstream tools use), in the codebase's own registry.
    """
    import mmdet.models  # noqa: F401  (registers mmdet's backbones)
    import mmseg.models  # noqa: F401
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmseg.registry import MODELS as MMSEG_MODELS
    from model_cost import stock_backbone_config  # tools/analysis/model_cost.py
    from timing import paired_ratios  # tools/analysis/timing.py

    import tlalign_mm  # noqa: F401  (our registry: the configs name it across scopes)
    registries = {'mmseg': MMSEG_MODELS, 'mmdet': MMDET_MODELS}
    s = args.dense_size
    x = torch.randn(args.batch, 3, s, s, device=device)
    res = {}
    for name, (cfg, scope) in DENSE_PAIRS.items():
        cfg = dict(cfg, img_size=s) if cfg['type'].endswith('TLAVisionTransformer') else dict(cfg)
        torch.manual_seed(0)
        ours = registries[scope].build(cfg).to(device)
        theirs = registries[scope].build(stock_backbone_config(cfg, scope)).to(device)
        ours.train()
        theirs.train()   # (mmseg's VisionTransformer.train returns None: no chaining)
        t = {'ours': [], 'stock': []}
        for it in range(args.warmup + args.iters):
            pair = (('ours', ours), ('stock', theirs))
            for key, m in (pair if it % 2 == 0 else pair[::-1]):
                sync(device)
                t0 = time.perf_counter()
                outs = m(x)
                sum(o.float().mean() for o in outs).backward()
                m.zero_grad(set_to_none=True)
                sync(device)
                if it >= args.warmup:
                    t[key].append(time.perf_counter() - t0)
        res[name] = {k: statistics.median(v) for k, v in t.items()}
        res[name]['paired'] = paired_ratios(t, ref='stock')['ours']
    return res


def label_path(args, device) -> dict:
    """Time the variants interleaved and measure their peak memory.

    ``args`` as :func:`main` parses them (``model``, ``batch``, ``img``, ``num_classes``,
    ``drop_path``, ``iters``, ``warmup``, ``variants``, ``amp_dtype``, ``attn_impl``, ``compile``).  Memory: on
    CUDA in this process (``max_memory_allocated`` over two steps, less what was allocated
    before), elsewhere in a fresh subprocess per variant (peak RSS growth).

    Returns:
        dict(model, batch, img, amp_dtype, attn_impl, compile, step_s (median per variant), step_s_rounds,
        paired_ratio (variant -> (mean, low, high) against the baseline), peak_bytes).
    """
    from timing import paired_ratios  # tools/analysis/timing.py
    rounds = time_variants(args, device)
    mem = {}
    for v in args.variants:
        if device.type == 'cuda':
            torch.cuda.empty_cache()
            mem[v] = memory_one(args, v, device)
            continue
        cmd = [sys.executable, os.path.abspath(__file__), '--_memory', v, '--model', args.model,
               '--batch', str(args.batch), '--img', str(args.img), '--num-classes', str(args.num_classes),
               '--drop-path', str(args.drop_path), '--amp-dtype', args.amp_dtype, '--device', str(device),
               '--attn-impl', args.attn_impl]
        if args.compile:
            cmd.append('--compile')
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        mem[v] = json.loads(r.stdout.strip().splitlines()[-1])['peak_bytes']
    return dict(model=args.model, batch=args.batch, img=args.img, amp_dtype=args.amp_dtype, attn_impl=args.attn_impl,
                compile=args.compile,
                step_s={v: statistics.median(t) for v, t in rounds.items()}, step_s_rounds=rounds,
                paired_ratio=paired_ratios(rounds, ref='baseline'), peak_bytes=mem)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='deit-small', help='deit-tiny/small/base or swin-tiny/small/base')
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--img', type=int, default=224)
    p.add_argument('--num-classes', type=int, default=1000)
    p.add_argument('--drop-path', type=float, default=0.0)
    p.add_argument('--iters', type=int, default=10)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--threads', type=int, default=0, help='torch threads (0 = default)')
    p.add_argument('--device', type=device_arg, default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--amp-dtype', default='float32', choices=sorted(AMP_DTYPES),
                   help='run the forward under torch.autocast in this dtype (float32: no autocast)')
    p.add_argument('--attn-impl', default='auto', choices=('auto', 'fused', 'materialised'),
                   help="attn_impl of the baseline, tla and tla32 backbones (split / reference fix their own)")
    p.add_argument('--compile', action='store_true', help='torch.compile every variant\'s backbone (inductor)')
    p.add_argument('--dense', action='store_true', help='also compare dense forward+backward with mmseg/mmdet')
    p.add_argument('--dense-only', action='store_true')
    p.add_argument('--dense-size', type=int, default=512)
    p.add_argument('--json', help='also write the figures to this JSON file')
    add_results_arg(p)
    p.add_argument('--variants', default=','.join(VARIANTS),
                   help=f'comma-separated subset of {",".join(VARIANTS)} to run (baseline is always run); '
                        'fewer variants per round pair the steps more tightly')
    p.add_argument('--_memory', choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    chosen = [v.strip() for v in args.variants.split(',') if v.strip()]
    bad = sorted(set(chosen) - set(VARIANTS))
    if bad:
        p.error(f'--variants: unknown {bad}; choose from {",".join(VARIANTS)}')
    args.variants = tuple(v for v in VARIANTS if v == 'baseline' or v in chosen)

    if args._memory:
        print(json.dumps({'peak_bytes': memory_one(args, args._memory, device)}))
        return

    out = {'device': str(device), 'threads': torch.get_num_threads(), 'torch': torch.__version__}
    tables = {}
    if not args.dense_only:
        print(f'# {args.model}, batch {args.batch}, {args.img}px, K={args.num_classes}, {device}, '
              f'{torch.get_num_threads()} threads, autocast {args.amp_dtype}, attn_impl {args.attn_impl}'
              f'{", compiled" if args.compile else ""}, median of {args.iters} steps')
        res = label_path(args, device)
        times, paired, mem = res['step_s'], res['paired_ratio'], res['peak_bytes']
        rows = [[v, f'{times[v]:.3f}', f'{args.batch / times[v]:.1f}', f'{times[v] / times["baseline"]:.3f}',
                 '{:.3f} [{:.3f}, {:.3f}]'.format(*paired[v]), f'{mem[v] / 2**20:.1f}',
                 f'{mem[v] / mem["baseline"]:.3f}'] for v in args.variants]
        widths = (-10, 8, 8, 7, 21, 9, 7)
        for r in [LABEL_PATH_COLUMNS] + rows:
            print(' '.join(f'{c:<{-w}}' if w < 0 else f'{c:>{w}}' for c, w in zip(r, widths)))
        tables['label_path'] = table(LABEL_PATH_COLUMNS, rows)
        out.update(res)
    if args.dense or args.dense_only:
        res = dense_compare(args, device)
        print(f'# dense forward+backward {args.dense_size}px batch {args.batch}: ours vs stock mm backbone')
        dense_rows = []
        for name, r in res.items():
            mean, lo, hi = r['paired']
            print(f'{name:<7} ours {r["ours"]:.3f}s  stock {r["stock"]:.3f}s  ratio {r["ours"] / r["stock"]:.3f}  '
                  f'paired {mean:.3f} [{lo:.3f}, {hi:.3f}]')
            dense_rows.append([name, f'{r["ours"]:.3f}', f'{r["stock"]:.3f}', f'{mean:.3f} [{lo:.3f}, {hi:.3f}]'])
        tables['dense'] = table(['model', 'ours step s', 'stock step s', 'ours / stock, paired [95% CI]'],
                                dense_rows)
        out['dense'] = res
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(out, f, indent=1)
    if args.results_json:
        write_results(args.results_json, tables, out)
        print(f'wrote {args.results_json}')


if __name__ == '__main__':
    main()
