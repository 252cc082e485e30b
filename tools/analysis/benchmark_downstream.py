"""Training-step time of a downstream config's model: our backbone vs the stock mm backbone.

Both models are built from the same config (:func:`model_cost.build_analysis_model`, in
``tools/analysis/model_cost.py``: random init through ``init_weights`` with the checkpoint dropped,
SyncBN -> BN), the second with
``model.backbone`` replaced by the stock OpenMMLab backbone of the same architecture
(:func:`~model_cost.with_stock_backbone`: mmseg / mmdet ``SwinTransformer``,
mmseg ``VisionTransformer``).  Everything else -- neck, heads, losses, data preprocessor -- is
the config's, with the same weights in both (copied from ours), so that RPN proposals and RoI
sampling differ only through the backbone's features.

One step = what the runner's ``train_step`` does minus the optimizer: ``data_preprocessor(batch,
training=True)``, ``model(**data, mode='loss')``, ``parse_losses``, ``backward``, ``zero_grad``.
The batch is one random batch of ``--batch`` images of ``--shape`` with random annotations
(:func:`~model_cost.make_dummy_batch`: a semantic map for mmseg, a few boxes
with masks for mmdet), copied before each step (outside the timed part).  For mmseg configs the
data preprocessor's ``size`` is set to ``--shape`` (it would pad the batch to the config's crop).
The two models alternate step by step (who goes first alternates too), with the same RNG seed
per step (dropout, drop-path, RoI sampling), so that machine noise and sampling hit both alike.
Reported: the median step time over ``--iters`` steps after ``--warmup``, the ratio of the
medians ours / stock, the paired ratio (geometric mean of the per-round ratios with its 95%
interval, :func:`timing.paired_ratios`, ``tools/analysis/timing.py``) and, on CUDA, the peak
memory of a step (``torch.cuda.max_memory_allocated``, both models resident; also the growth
over the memory allocated before the step).  For mmseg configs at ``--batch 1`` the BatchNorm layers of the
heads run in eval mode (the configs' SyncBN normalises over all GPUs' images; one image alone gives UperNet's
1x1 pooling branch no batch statistics); the cost of a BN layer hardly depends on its mode.

``--amp`` runs the forward under ``torch.autocast`` (float16 on CUDA as mmengine's
``AmpOptimWrapper``, bfloat16 on CPU), without a loss scaler.

Commands for the figures (the ones this tool was first run with; CPU, 2 threads, busy machine):
    python tools/analysis/benchmark_downstream.py \\
        configs/upernet/upernet_swin-t_in1k-tla-pre_8xb2-160k_ade20k-512x512.py --batch 1 --shape 256 256 --iters 3
Full-size runs (GPU):
    python tools/analysis/benchmark_downstream.py \\
        configs/upernet/upernet_swin-t_in1k-tla-pre_8xb2-160k_ade20k-512x512.py --batch 2
    python tools/analysis/benchmark_downstream.py \\
        configs/upernet/upernet_deit-s_in1k-tla-pre_mln_8xb2-160k_ade20k-512x512.py --batch 2
    python tools/analysis/benchmark_downstream.py \\
        configs/cascade_mask_rcnn/cascade-mask-rcnn_swin-t_in1k-tla-pre_fpn_ms-crop-3x_8xb2_coco.py --batch 2 --amp
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import statistics
import time

VARIANTS = ('ours', 'stock')


def parse_args(argv=None):
    import _common  # noqa: F401  (tools/analysis/_common.py puts tools/ on sys.path)
    import torch
    from config_checks import CfgOptions, config_file, writable_file  # tools/config_checks.py
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', type=config_file,
                   help='an mmseg / mmdet config of ours (configs/upernet, configs/cascade_mask_rcnn, configs/demo)')
    p.add_argument('--batch', type=int, default=2, help='images per step')
    p.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                   help='input size in pixels; default: the config\'s crop (mmseg) / 1280 x 800 (mmdet)')
    p.add_argument('--iters', type=int, default=5, help='timed steps per model')
    p.add_argument('--warmup', type=int, default=2, help='untimed steps per model first')
    p.add_argument('--amp', action='store_true', help='autocast the forward (fp16 on CUDA, bf16 on CPU)')
    p.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    p.add_argument('--device', type=_common.device_arg, default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', type=writable_file, help='also write the figures to this JSON file')
    p.add_argument('--cfg-options', nargs='+', action=CfgOptions,
                   help='override config settings, key=value pairs merged into the config')
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error(f'--batch must be >= 1, got {args.batch}')
    if args.iters < 1 or args.warmup < 0:
        p.error(f'--iters must be >= 1 and --warmup >= 0, got {args.iters} / {args.warmup}')
    if args.shape is not None and min(args.shape) < 1:
        p.error(f'--shape must be positive, got {args.shape}')
    return args


def _sync(device):
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def train_step(model, batch: dict, amp_dtype=None):
    """One training step without the optimizer; returns the total loss (a detached scalar tensor)."""
    import torch
    data = model.data_preprocessor(batch, True)
    ctx = torch.autocast(device_type=data['inputs'].device.type, dtype=amp_dtype) if amp_dtype is not None \
        else contextlib.nullcontext()
    with ctx:
        losses = model(**data, mode='loss')
    loss, _ = model.parse_losses(losses)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return loss.detach()


def run(args) -> dict:
    import torch
    from mmengine.config import Config
    from model_cost import (  # tools/analysis/model_cost.py
        apply_input_shape,
        build_analysis_model,
        default_input_shape,
        make_dummy_batch,
        task_kind,
        with_stock_backbone,
    )
    from timing import paired_ratios  # tools/analysis/timing.py
    from torch.nn.modules.batchnorm import _BatchNorm

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    shape = tuple(args.shape) if args.shape else default_input_shape(cfg)[0]
    cfgs = {'ours': cfg, 'stock': with_stock_backbone(cfg)}   # raises for configs without a stock backbone
    for c in cfgs.values():
        apply_input_shape(c, shape)
    models = {}
    for v, c in cfgs.items():
        models[v] = build_analysis_model(c, device=device, init_weights=True, seed=args.seed).train()
    # the same weights outside the backbone, so that proposals / sampling differ only through the backbone
    rest = {k: t for k, t in models['ours'].state_dict().items() if not k.startswith('backbone.')}
    missing, unexpected = models['stock'].load_state_dict(rest, strict=False)
    if unexpected or any(not k.startswith('backbone.') for k in missing):
        raise RuntimeError(f'the two models differ outside the backbone: {unexpected or missing}')
    bn_eval = args.batch == 1 and task_kind(cfg) == 'seg'
    if bn_eval:  # one image: UperNet's 1x1 pooling branch has no batch statistics to train on
        for m in models.values():
            for mod in m.modules():
                if isinstance(mod, _BatchNorm):
                    mod.eval()
    batch = make_dummy_batch(cfg, shape, args.batch, seed=args.seed)
    amp_dtype = None
    if args.amp:
        amp_dtype = torch.float16 if device.type == 'cuda' else torch.bfloat16

    times = {v: [] for v in VARIANTS}
    peak = {v: 0 for v in VARIANTS}
    growth = {v: 0 for v in VARIANTS}
    first_loss = {}
    for it in range(args.warmup + args.iters):
        for v in (VARIANTS if it % 2 == 0 else VARIANTS[::-1]):   # alternate who goes first
            b = copy.deepcopy(batch)
            torch.manual_seed(args.seed + it)
            if device.type == 'cuda':
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            _sync(device)
            t0 = time.perf_counter()
            loss = train_step(models[v], b, amp_dtype)
            _sync(device)
            dt = time.perf_counter() - t0
            if it == 0:
                first_loss[v] = float(loss)
                if not math.isfinite(first_loss[v]):
                    raise RuntimeError(f'{v}: the first step gave a non-finite loss ({first_loss[v]})')
            if device.type == 'cuda':
                p = torch.cuda.max_memory_allocated(device)
                peak[v] = max(peak[v], p)
                growth[v] = max(growth[v], p - base)
            if it >= args.warmup:
                times[v].append(dt)
    med = {v: statistics.median(t) for v, t in times.items()}
    res = dict(config=args.config, model=type(models['ours']).__name__,
               backbones={v: type(m.backbone).__name__ for v, m in models.items()},
               scope=cfg.get('default_scope', None), batch=args.batch, shape=list(shape),
               device=str(device), threads=torch.get_num_threads(), torch=torch.__version__,
               amp=str(amp_dtype).replace('torch.', '') if amp_dtype is not None else 'fp32',
               iters=args.iters, warmup=args.warmup, step_s=med, steps_s=times, first_loss=first_loss,
               ratio=med['ours'] / med['stock'], paired=paired_ratios(times, ref='stock')['ours'],
               bn_eval=bn_eval)
    if device.type == 'cuda':
        res.update(peak_bytes=peak, peak_growth_bytes=growth, gpu=torch.cuda.get_device_name(device))
    return res


def main(argv=None):
    args = parse_args(argv)
    res = run(args)
    h, w = res['shape']
    print(f'# {res["config"]}: {res["model"]}, batch {res["batch"]}, {h}x{w}, {res["device"]}'
          + (f' ({res["gpu"]})' if 'gpu' in res else f' ({res["threads"]} threads)')
          + f', {res["amp"]}, median of {res["iters"]} steps after {res["warmup"]} warm-up, interleaved')
    cuda = 'peak_bytes' in res
    head = f'{"variant":<8} {"backbone":<28} {"step s":>8} {"x stock":>8} {"first loss":>11}'
    if cuda:
        head += f' {"peak MiB":>9} {"step +MiB":>10}'
    print(head)
    for v in VARIANTS:
        bb = res['backbones'][v] if v == 'ours' else f'{res["scope"]} {res["backbones"][v]}'
        row = (f'{v:<8} {bb:<28} {res["step_s"][v]:8.3f} {res["step_s"][v] / res["step_s"]["stock"]:8.3f} '
               f'{res["first_loss"][v]:11.4f}')
        if cuda:
            row += f' {res["peak_bytes"][v] / 2**20:9.1f} {res["peak_growth_bytes"][v] / 2**20:10.1f}'
        print(row)
    mean, lo, hi = res['paired']
    print(f'ratio ours / stock: {res["ratio"]:.3f} (medians); paired per round {mean:.3f} [95% CI {lo:.3f}, {hi:.3f}]')
    if res['bn_eval']:
        print('batch 1: the BatchNorm layers ran in eval mode (running statistics): the 1x1 pooled map of one '
              'image has no batch statistics (the configs\' SyncBN normalises over all GPUs\' images)')
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(res, f, indent=1)
        print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
