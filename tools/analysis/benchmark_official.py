"""Our DeiT-S TL-Align training step against the official TL-Align code's step and timm's plain ViT-S step.

Variants, one training step each (forward + backward of a soft-target cross-entropy; under a
low-precision ``--precisions`` entry the forward runs in ``torch.autocast``, as AMP training does),
all DeiT-S / ViT-S/16 with the same weights (timm's parameter names are ours plus the head):

* ``ours``      - ``TLAVisionTransformer('deit-small')`` + linear head, the K = 2 source embedding
                  (``tools/analysis/benchmark_label_path.py``'s ``tla`` variant), ``attn_impl`` from
                  ``--attn-impl`` (``auto``, the default: the kernel the backbone picks);
* ``official``  - the official TL-Align code's convention (Euphoria16/TL-Align,
                  ``timm/models/vision_transformer.py``, ``Attention`` / ``Block``), written here on
                  timm's ViT-S modules: per block the softmax attention ``A`` (B, H, N, N) is
                  materialised once; the features take ``A @ V``; the labels ``Y`` (B, N, K = 1000
                  class labels, the class token's row the mixed target) take
                  ``mean_h(A.detach()) @ Y`` in the autocast precision, cast to float32; then
                  ``Y <- (Y + A Y) / 2``; the target is the class token's final row.  (The official
                  code also copies ``A`` before the head mean; that copy is left out, which can only
                  make the official step faster.)
* ``timm``      - timm's ``vit_small_patch16_224`` plain step, no labels, the CutMix area target,
                  with timm's default attention (``fused_attn``: ``F.scaled_dot_product_attention``);
* ``timm-mat``  - the same with ``fused_attn=False`` (materialised), optional.

Timing as in ``benchmark_label_path.py``: the variants run interleaved step by step, the order
reversed every other round, and each round's ``ours`` step is divided by that round's step of the
other variant; the table gives the geometric mean of these ratios with its 95% interval
(``timing.paired_ratios``).  Goals: ours / official <= 1.0 and ours / timm <= 1.0 in every
precision.  ``goal`` says ``met`` when the whole interval is at most 1, ``missed`` when it is
above 1, and ``open`` when the interval straddles 1 (run more ``--iters``).

The header names the machine: CPU model, the ISA PyTorch uses, whether the CPU has bfloat16 /
float16 matrix units (which decide ``attn_impl='auto'`` under autocast on CPU), threads, and the
1-minute load average before and after (other jobs on a shared machine widen the intervals).

Example (about 6 minutes on 2 cores; fewer rounds leave intervals around 1 open):
    python tools/analysis/benchmark_official.py --iters 40 --warmup 3
"""
from __future__ import annotations

import argparse
import os
import statistics

import torch
import torch.nn as nn
from _common import device_arg  # tools/analysis/_common.py (warns when tlalign_mm is another checkout's)
from benchmark_label_path import build, make_batch, step, timed  # tools/analysis/benchmark_label_path.py
from results_file import add_results_arg, provenance, table, write_results  # tools/analysis/results_file.py
from timing import paired_ratios  # tools/analysis/timing.py

VARIANTS = ('ours', 'official', 'timm', 'timm-mat')
PRECISIONS = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


def official_block(blk: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One timm ``Block`` with the official TL-Align label step (materialised attention).

    Args:
        blk: a timm ViT ``Block`` (``norm1``, ``attn``, ``ls1``, ``drop_path1``, ``norm2``, ``mlp``, ...).
        x: (B, N, C) tokens; labels: (B, N, K) float32 label embedding.

    Returns:
        (x (B, N, C), labels (B, N, K) float32).
    """
    a = blk.attn
    b, n, c = x.shape
    q, k, v = a.qkv(blk.norm1(x)).reshape(b, n, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = a.q_norm(q), a.k_norm(k)
    attn = ((q * a.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    labels_att = (attn.detach().mean(dim=1) @ labels).float()
    h = (a.attn_drop(attn) @ v).transpose(1, 2).reshape(b, n, c)
    x = x + blk.drop_path1(blk.ls1(a.proj_drop(a.proj(a.norm(h)))))
    x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
    return x, (labels + labels_att) * 0.5


def official_forward(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm ViT forward with the official label path: (logits (B, num_classes), class-token label (B, K))."""
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    for blk in model.blocks:
        x, labels = official_block(blk, x, labels)
    return model.forward_head(model.norm(x)), labels[:, 0]


def timm_vit(ours: nn.Module, head: nn.Linear, fused_attn: bool, img: int = 224) -> nn.Module:
    """timm's ViT-S/16 with our backbone's and head's weights (strict: the same parameter names).

    ``img`` other than our ``img_size`` (224) makes timm resize the position embedding per input
    (``dynamic_img_size``; timm resizes with antialiasing, ours without, so the two models then
    differ slightly: for smoke runs only).
    """
    import timm
    dynamic = (img, img) != tuple(ours.img_size)
    m = timm.create_model('vit_small_patch16_224', num_classes=head.out_features, img_size=ours.img_size,
                          dynamic_img_size=dynamic)
    state = dict(ours.state_dict(), **{'head.weight': head.weight.detach(), 'head.bias': head.bias.detach()})
    m.load_state_dict(state, strict=True)
    for blk in m.blocks:
        blk.attn.fused_attn = fused_attn
    return m


def _soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft-target cross-entropy: logits (B, K) any float dtype, target (B, K) rows summing to 1; a 0-d float32."""
    return torch.sum(-target * torch.log_softmax(logits.float(), -1), -1).mean()


def prepare(args, device) -> dict:
    """variant -> a no-argument callable running one training step (forward, loss, backward).

    ``args`` as :func:`main` parses them, with ``precision`` set to one :data:`PRECISIONS` key;
    ``args.variants`` the comparison variants to build besides ``ours``.  Every variant gets the
    same image batch and the weights of our freshly initialised backbone and head.
    """
    from tlalign_mm.align import mixed_target
    bb, head, prefix, readout = build('deit-small', 'tla', args.num_classes, 0.0, args.attn_impl)
    bb, head = bb.to(device).train(), head.to(device)
    amp = PRECISIONS[args.precision]
    batch_ours = make_batch(bb, prefix, args.batch, args.img, args.num_classes, 'tla', device)
    x, class_labels, lam, y_a, y_b = make_batch(bb, prefix, args.batch, args.img, args.num_classes, 'reference',
                                                device)
    target_area = mixed_target(lam, y_a, y_b)
    autocast = dict(device_type=device.type, dtype=amp, enabled=amp != torch.float32)
    fns = {'ours': lambda: step(bb, head, batch_ours, 'tla', readout, amp)}
    for name in ('official', 'timm', 'timm-mat'):
        if name not in args.variants:
            continue
        m = timm_vit(bb, head, fused_attn=name == 'timm', img=args.img).to(device).train()

        def run(m=m, name=name):
            with torch.autocast(**autocast):
                if name == 'official':
                    logits, target = official_forward(m, x, class_labels)
                else:
                    logits, target = m(x), target_area
            loss = _soft_ce(logits, target)
            loss.backward()
            m.zero_grad(set_to_none=True)
            return loss.detach()
        fns[name] = run
    return fns


def time_precision(args, device) -> dict:
    """Interleaved rounds of every variant at ``args.precision``.

    Returns:
        dict(step_s (variant -> median seconds), step_s_rounds (variant -> seconds per round),
        ours_over (variant -> (geometric mean, 95% low, 95% high) of ours / variant per round)).
    """
    fns = prepare(args, device)
    names = list(fns)
    times = {v: [] for v in names}
    for it in range(args.warmup + args.iters):
        for v in (names if it % 2 == 0 else names[::-1]):
            t = timed(fns[v], device)
            if it >= args.warmup:
                times[v].append(t)
    ratios = {ref: paired_ratios(times, ref=ref)['ours'] for ref in names if ref != 'ours'}
    return dict(step_s={v: statistics.median(t) for v, t in times.items()}, step_s_rounds=times,
                ours_over=ratios)


def machine_note(device) -> dict:
    """What decides the timings: the device, the CPU model, the ISA PyTorch's CPU kernels use,
    whether the CPU has bfloat16 / float16 matrix units, threads and torch."""
    from tlalign_mm.align.propagate import _CPU_MATRIX_UNITS
    return dict(device=str(device), cpu=provenance(argv=[])['machine']['cpu'],
                isa=torch.backends.cpu.get_cpu_capability(), bf16_matrix_units=_CPU_MATRIX_UNITS[torch.bfloat16],
                fp16_matrix_units=_CPU_MATRIX_UNITS[torch.float16], threads=torch.get_num_threads(),
                torch=torch.__version__)


def _goal(lo: float, hi: float) -> str:
    """'met' (the 95% interval of ours / other at most 1), 'missed' (above 1) or 'open' (straddles 1)."""
    return 'met' if hi <= 1.0 else 'missed' if lo > 1.0 else 'open'


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--img', type=int, default=224)
    p.add_argument('--num-classes', type=int, default=1000, help='K of the official label embedding')
    p.add_argument('--iters', type=int, default=15, help='timed rounds per precision')
    p.add_argument('--warmup', type=int, default=2, help='untimed rounds per precision')
    p.add_argument('--precisions', default='float32,bfloat16',
                   help=f'comma-separated subset of {",".join(PRECISIONS)} (float32: no autocast)')
    p.add_argument('--attn-impl', default='auto', choices=('auto', 'fused', 'materialised'),
                   help="our backbone's attn_impl")
    p.add_argument('--variants', default='official,timm',
                   help=f'comma-separated comparison variants from {",".join(VARIANTS[1:])} (ours always runs)')
    p.add_argument('--threads', type=int, default=0, help='torch threads (0 = default)')
    p.add_argument('--device', type=device_arg, default='cuda' if torch.cuda.is_available() else 'cpu')
    add_results_arg(p)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = [s.strip() for s in args.precisions.split(',') if s.strip()]
    variants = [s.strip() for s in args.variants.split(',') if s.strip()]
    if not precisions or set(precisions) - set(PRECISIONS):
        p.error(f'--precisions: choose from {",".join(PRECISIONS)}, got {args.precisions!r}')
    if not variants or set(variants) - set(VARIANTS[1:]):
        p.error(f'--variants: choose from {",".join(VARIANTS[1:])}, got {args.variants!r}')
    args.variants = variants
    device = torch.device(args.device)

    from tlalign_mm.align import resolve_attn_impl
    note = machine_note(device)
    load0 = os.getloadavg()[0]
    print(f"# DeiT-S training step, batch {args.batch}, {args.img}px, {note['device']}: {note['cpu']}, "
          f"ISA {note['isa']}, bf16 / fp16 matrix units {note['bf16_matrix_units']} / {note['fp16_matrix_units']}, "
          f"{note['threads']} threads, torch {note['torch']}; {args.iters} rounds after {args.warmup} warm-up")
    print('# ratio = geometric mean over rounds of ours / that variant in the same round [95% CI]')
    columns = ['precision', 'ours attn', 'ours s', *(f'{v} s' for v in variants)]
    for v in variants:
        columns += [f'ours/{v} [95% CI]', f'goal vs {v}']
    widths = [-9, -12, 8, *(11 for _ in variants), *(w for _ in variants for w in (28, 10))]
    fmt = lambda cells: ' '.join(f'{c:<{-w}}' if w < 0 else f'{c:>{w}}' for c, w in zip(cells, widths))  # noqa: E731
    print(fmt(columns))
    results, rows = {}, []
    for prec in precisions:
        args.precision = prec
        amp = PRECISIONS[prec]
        probe = torch.zeros(1, device=device)
        with torch.autocast(device.type, dtype=amp, enabled=amp != torch.float32):
            impl = resolve_attn_impl(args.attn_impl, probe)
        res = time_precision(args, device)
        res['ours_attn_impl'] = impl
        results[prec] = res
        row = [prec, impl, f'{res["step_s"]["ours"]:.3f}', *(f'{res["step_s"][v]:.3f}' for v in variants)]
        for v in variants:
            mean, lo, hi = res['ours_over'][v]
            row += [f'{mean:.3f} [{lo:.3f}, {hi:.3f}]', _goal(lo, hi)]
        rows.append(row)
        print(fmt(row), flush=True)
    load1 = os.getloadavg()[0]
    print(f'# load average (1 min) before / after: {load0:.2f} / {load1:.2f} on {os.cpu_count()} CPUs')
    if args.results_json:
        write_results(args.results_json, {'ours_over': table(columns, rows)},
                      dict(machine=note, load_before=load0, load_after=load1, batch=args.batch, img=args.img,
                           iters=args.iters, warmup=args.warmup, attn_impl=args.attn_impl, results=results),
                      notes=f'1-minute load average {load0:.2f} before, {load1:.2f} after, {os.cpu_count()} CPUs')
        print(f'wrote {args.results_json}')


if __name__ == '__main__':
    main()
