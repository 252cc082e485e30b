"""Benchmark the TL-Align label path: step time and peak memory, three ways, one run.

Variants, on the same backbone, batch and weights (training step = forward + backward of a
soft-target cross-entropy through a linear head):

* ``baseline``  - CutMix baseline: no labels, target = lam * y_A + (1 - lam) * y_B;
* ``fused``     - ours: TL-Align, K = 2 source embedding riding in the fused attention call
                  (``label_mode='fused'``, the default);
* ``split``     - ours: plain SDPA for the features, a no-grad float32 head-mean attention pass
                  for the K = 2 labels (``label_mode='split'``);
* ``reference`` - the reference code's way: K = num_classes labels, per-head attention
                  materialised (``label_mode='explicit'``).

Step time: median over ``--iters`` steps after ``--warmup``, the variants interleaved step by
step so that machine noise hits all alike.  Peak memory: each variant in a fresh subprocess;
on CPU the growth of the process's peak RSS over its steady state before the first step, on
GPU ``torch.cuda.max_memory_allocated`` during the steps.

``--dense`` adds the dense-prediction comparison: forward + backward at 512x512 of our DeiT-S
and Swin-T (no labels) against mmseg's ``VisionTransformer`` and mmdet's ``SwinTransformer`` with
the same settings (needs mmseg / mmdet).

Example (the figures in README):
    python tools/analysis/benchmark_label_path.py --model deit-small --batch 8
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

VARIANTS = ('baseline', 'fused', 'split', 'reference')


def build(model_name: str, variant: str, num_classes: int, drop_path: float):
    from tlalign_mm.models.backbones import TLASwinTransformer, TLAVisionTransformer
    mode = {'reference': 'explicit', 'split': 'split'}.get(variant, 'fused')
    if model_name.startswith('deit'):
        bb = TLAVisionTransformer(model_name, out_type='cls_token', label_mode=mode, drop_path_rate=drop_path)
        dim, prefix, readout = bb.embed_dims, 1, 'cls'
    elif model_name.startswith('swin'):
        bb = TLASwinTransformer(model_name, out_indices=(3,), out_type='avg_featmap', label_mode=mode,
                                drop_path_rate=drop_path)
        dim, prefix, readout = bb.num_features[-1], 0, 'mean'
    else:
        raise SystemExit(f'unknown --model {model_name!r}: deit-tiny/small/base or swin-tiny/small/base')
    torch.manual_seed(0)
    bb.init_weights()
    head = nn.Linear(dim, num_classes)
    return bb, head, prefix, readout


def make_batch(bb, prefix, batch, img, num_classes, variant, device):
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
        r0 = None
    elif variant in ('fused', 'split'):
        r0 = initial_source_labels(share, lam, prefix)
    else:
        r0 = initial_class_labels(share, lam, y_a, y_b, prefix)
    mv = lambda t: None if t is None else t.to(device)  # noqa: E731
    return mv(x), mv(r0), mv(lam), mv(y_a), mv(y_b)


def step(bb, head, batch, variant, readout):
    from tlalign_mm.align import expand_source_labels, mixed_target
    x, r0, lam, y_a, y_b = batch
    if variant == 'baseline':
        (feat,) = bb(x)
        target = mixed_target(lam, y_a, y_b)
    else:
        (feat,), lab = bb(x, r0)
        lab = lab[:, 0] if readout == 'cls' else lab.mean(1)
        target = lab if variant == 'reference' else expand_source_labels(lab, y_a, y_b)
    logits = head(feat)
    loss = torch.sum(-target * torch.log_softmax(logits.float(), -1), -1).mean()
    loss.backward()
    bb.zero_grad(set_to_none=True)
    head.zero_grad(set_to_none=True)
    return loss.detach()


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def time_variants(args, device):
    models, batches = {}, {}
    for v in VARIANTS:
        bb, head, prefix, readout = build(args.model, v, args.num_classes, args.drop_path)
        models[v] = (bb.to(device).train(), head.to(device), readout)
        batches[v] = make_batch(bb, prefix, args.batch, args.img, args.num_classes, v, device)
    times = {v: [] for v in VARIANTS}
    for it in range(args.warmup + args.iters):
        for v in VARIANTS:
            bb, head, readout = models[v]
            sync(device)
            t0 = time.perf_counter()
            step(bb, head, batches[v], v, readout)
            sync(device)
            if it >= args.warmup:
                times[v].append(time.perf_counter() - t0)
    return {v: statistics.median(t) for v, t in times.items()}


def _rss_bytes():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def memory_one(args, variant, device):
    bb, head, prefix, readout = build(args.model, variant, args.num_classes, args.drop_path)
    bb, head = bb.to(device).train(), head.to(device)
    batch = make_batch(bb, prefix, args.batch, args.img, args.num_classes, variant, device)
    if device.type == 'cuda':
        step(bb, head, batch, variant, readout)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(2):
            step(bb, head, batch, variant, readout)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    base = _rss_bytes()
    for _ in range(2):
        step(bb, head, batch, variant, readout)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base


def dense_compare(args, device):
    """Our DeiT-S / Swin-T vs mmseg ViT / mmdet Swin: forward+backward at --dense-size."""
    from mmdet.models.backbones import SwinTransformer as MMDetSwin
    from mmseg.models.backbones import VisionTransformer as MMSegViT

    import tlalign_mm  # noqa: F401  (registers into mmseg/mmdet)
    from tlalign_mm.models.backbones import TLASwinTransformer, TLAVisionTransformer
    s = args.dense_size
    pairs = {
        'deit-s': (TLAVisionTransformer('deit-small', img_size=s, out_indices=(2, 5, 8, 11), drop_path_rate=0.1),
                   MMSegViT(img_size=(s, s), embed_dims=384, num_layers=12, num_heads=6, out_indices=(2, 5, 8, 11),
                            final_norm=True, drop_path_rate=0.1, with_cls_token=True, interpolate_mode='bicubic')),
        'swin-t': (TLASwinTransformer('tiny', drop_path_rate=0.3),
                   MMDetSwin(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
                             drop_path_rate=0.3, out_indices=(0, 1, 2, 3))),
    }
    x = torch.randn(args.batch, 3, s, s, device=device)
    res = {}
    for name, (ours, theirs) in pairs.items():
        ours, theirs = ours.to(device), theirs.to(device)
        ours.train()
        theirs.train()   # (mmseg's VisionTransformer.train returns None: no chaining)
        t = {'ours': [], 'stock': []}
        for it in range(args.warmup + args.iters):
            for key, m in (('ours', ours), ('stock', theirs)):
                sync(device)
                t0 = time.perf_counter()
                outs = m(x)
                sum(o.float().mean() for o in outs).backward()
                m.zero_grad(set_to_none=True)
                sync(device)
                if it >= args.warmup:
                    t[key].append(time.perf_counter() - t0)
        res[name] = {k: statistics.median(v) for k, v in t.items()}
    return res


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
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--dense', action='store_true', help='also compare dense forward+backward with mmseg/mmdet')
    p.add_argument('--dense-only', action='store_true')
    p.add_argument('--dense-size', type=int, default=512)
    p.add_argument('--json', help='also write the figures to this JSON file')
    p.add_argument('--_memory', choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    if args._memory:
        print(json.dumps({'peak_bytes': memory_one(args, args._memory, device)}))
        return

    out = {'device': str(device), 'threads': torch.get_num_threads(), 'torch': torch.__version__}
    if not args.dense_only:
        print(f'# {args.model}, batch {args.batch}, {args.img}px, K={args.num_classes}, {device}, '
              f'{torch.get_num_threads()} threads, median of {args.iters} steps')
        times = time_variants(args, device)
        mem = {}
        for v in VARIANTS:
            cmd = [sys.executable, os.path.abspath(__file__), '--_memory', v] + [
                a for a in sys.argv[1:] if a not in ('--dense',)]
            r = subprocess.run(cmd, capture_output=True, text=True, check=True)
            mem[v] = json.loads(r.stdout.strip().splitlines()[-1])['peak_bytes']
        print(f'{"variant":<10} {"step s":>8} {"x base":>7} {"peak MiB":>9} {"x base":>7}')
        for v in VARIANTS:
            print(f'{v:<10} {times[v]:8.3f} {times[v] / times["baseline"]:7.3f} {mem[v] / 2**20:9.1f} '
                  f'{mem[v] / mem["baseline"]:7.3f}')
        out.update(model=args.model, batch=args.batch, img=args.img, step_s=times, peak_bytes=mem)
    if args.dense or args.dense_only:
        res = dense_compare(args, device)
        print(f'# dense forward+backward {args.dense_size}px batch {args.batch}: ours vs stock mm backbone')
        for name, r in res.items():
            print(f'{name:<7} ours {r["ours"]:.3f}s  stock {r["stock"]:.3f}s  ratio {r["ours"] / r["stock"]:.3f}')
        out['dense'] = res
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(out, f, indent=1)


if __name__ == '__main__':
    main()
