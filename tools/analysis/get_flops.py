"""Parameters and FLOPs of the model a config builds, optionally beside the stock mm backbone.

Builds ``cfg.model`` with random weights (no checkpoint is read; SyncBN -> BN), feeds it one
random batch of the given size through its data preprocessor and counts, with mmengine's
``FlopAnalyzer`` on the model's ``'tensor'``-mode forward (``tools/analysis/model_cost.py``):

* parameters (M), total and per top-level part (backbone, neck, decode / auxiliary heads, RPN /
  RoI heads, classifier head);
* FLOPs (G), total and per part, one multiply-add counted as one FLOP (the fvcore / mmengine
  convention, the one Swin / DeiT / mmdet / mmseg report), for the whole batch.  Fused attention
  (``aten::scaled_dot_product_attention``, what our backbones call) has no handle in mmengine and
  would be left out silently; tlalign_mm registers one: ``B * heads * Nq * Nk * (D_qk + D_v)``.

Tensor mode is the network without post-processing: mmseg ``backbone -> neck -> decode_head``
(the auxiliary head is training-only and shows '-'); mmdet backbone, neck, RPN and every cascade
RoI-head stage on the proposals the RPN keeps with random weights (at most
``test_cfg.rpn.max_per_img``), as mmdet's ``get_flops``; a classifier's logits.

``--compare-stock`` adds the same numbers for the config with our backbone replaced by the stock
OpenMMLab one of the same architecture (mmseg / mmdet ``SwinTransformer``, mmseg
``VisionTransformer``).  They should agree: a difference in the backbone row means the two
compute different things (e.g. on feature maps smaller than the window our Swin shrinks the
window as the official Swin does, while mmseg / mmdet pad it).

Default input size: mmseg ``model.data_preprocessor.size`` (the training crop); mmdet 1280 x 800
(H x W, mmdet's ``get_flops`` default); pretraining the backbone's ``img_size``.

Examples:
    python tools/analysis/get_flops.py \\
        configs/upernet/upernet_swin-t_in1k-tla-pre_8xb2-160k_ade20k-512x512.py --compare-stock
    python tools/analysis/get_flops.py configs/pretrain/deit-small_tla_8xb128-300e_in1k.py
    python tools/analysis/get_flops.py \\
        configs/cascade_mask_rcnn/cascade-mask-rcnn_swin-t_in1k-tla-pre_fpn_ms-crop-3x_8xb2_coco.py --shape 800 1333 \\
        --out work_dirs/flops_cmrcnn.json
"""
from __future__ import annotations

import argparse
import json
import os
import time

FLOPS_NOTE = ('FLOPs: one multiply-add counted as one FLOP (fvcore / mmengine convention), one tensor-mode '
              'forward of the whole batch; fused attention (aten::scaled_dot_product_attention) counted by '
              "tlalign_mm's handle B*heads*Nq*Nk*(D_qk+D_v), which mmengine lacks.")
PART_NOTES = {'auxiliary_head': 'training only: not run in tensor mode',
              'other': 'ops outside any top-level part'}


def parse_args(argv=None):
    import _common  # noqa: F401  (tools/analysis/_common.py puts tools/ on sys.path)
    from config_checks import CfgOptions, config_file, writable_file  # tools/config_checks.py
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', type=config_file,
                   help='config file (configs/pretrain, configs/upernet, configs/cascade_mask_rcnn, ...)')
    p.add_argument('--shape', type=int, nargs='+', metavar='H [W]',
                   help='input height and width in pixels (one value: square); default: see above')
    p.add_argument('--batch', type=int, default=1, help='images per traced batch (FLOPs are for the batch)')
    p.add_argument('--compare-stock', action='store_true',
                   help='also count the config with the stock mmseg / mmdet backbone swapped in')
    p.add_argument('--device', type=_common.device_arg, default='cpu', help='where to trace (cpu, cuda)')
    p.add_argument('--out', type=writable_file, help='write the numbers to this JSON file')
    from results_file import add_results_arg  # tools/analysis/results_file.py
    add_results_arg(p)
    p.add_argument('--cfg-options', nargs='+', action=CfgOptions,
                   help='override config settings, key=value pairs merged into the config')
    args = p.parse_args(argv)
    if args.shape is not None:
        if len(args.shape) not in (1, 2):
            p.error(f'--shape takes H or H W, got {len(args.shape)} values')
        if min(args.shape) < 1:
            p.error(f'--shape must be positive, got {args.shape}')
        args.shape = tuple(args.shape) * (3 - len(args.shape)) if len(args.shape) == 1 else tuple(args.shape)
    if args.batch < 1:
        p.error(f'--batch must be >= 1, got {args.batch}')
    return args


def _m(n):
    return f'{n / 1e6:.3f}'


def _g(n):
    return '-' if n is None else f'{n / 1e9:.3f}'


def format_table(costs: dict, scope: str) -> str:
    """Rows of parts x (params M, FLOPs G) for each column of ``costs`` (label -> ModelCost)."""
    labels = list(costs)
    parts = []
    for c in costs.values():
        parts += [p for p in c.parts if p not in parts]
    heads = []
    for label, c in costs.items():
        where = f'{scope} ' if label == 'stock' and scope in ('mmseg', 'mmdet') else ''
        heads.append(f'{label}: {where}{c.backbone_type}')
    lines = [f'{"":<16}' + ''.join(f'{h:>32}' for h in heads),
             f'{"part":<16}' + ''.join(f'{"params (M)":>16}{"FLOPs (G)":>16}' for _ in labels)]
    for part in parts:
        row = f'{part:<16}'
        for c in costs.values():
            p = c.parts.get(part)
            row += f'{"":>32}' if p is None else f'{_m(p["params"]):>16}{_g(p["flops"]):>16}'
        note = PART_NOTES.get(part)
        shown = note and (part == 'other' or any((c.parts.get(part) or {}).get('flops', 0) is None
                                                 for c in costs.values()))
        lines.append(row + (f'   ({note})' if shown else ''))
    lines.append(f'{"total":<16}' + ''.join(f'{_m(c.params):>16}{_g(c.flops):>16}' for c in costs.values()))
    lines.append(f'{"  of it SDPA":<16}' + ''.join(f'{"":>16}{_g(c.sdpa_flops):>16}' for c in costs.values()))
    return '\n'.join(lines)


def results_tables(costs: dict, scope: str) -> dict:
    """``--results-json``'s table ``cost``: params (M) and FLOPs (G) per part and in total, per column."""
    from results_file import table  # tools/analysis/results_file.py
    parts = list(dict.fromkeys(p for c in costs.values() for p in c.parts))
    cols = ['part']
    for label, c in costs.items():
        where = f'{scope} ' if label == 'stock' and scope in ('mmseg', 'mmdet') else ''
        cols += [f'{label} ({where}{c.backbone_type}) params (M)', f'{label} FLOPs (G)']
    def cells(c, part):
        p = c.parts.get(part)
        return ('', '') if p is None else (_m(p['params']), _g(p['flops']))
    rows = [[part] + [x for c in costs.values() for x in cells(c, part)] for part in parts]
    rows.append(['total'] + [x for c in costs.values() for x in (_m(c.params), _g(c.flops))])
    return {'cost': table(cols, rows)}


def main(argv=None):
    args = parse_args(argv)
    import torch
    from mmengine.config import Config
    from model_cost import config_cost, default_input_shape, task_kind, with_stock_backbone  # tools/analysis/

    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.shape is None:
        shape, source = default_input_shape(cfg)
    else:
        shape, source = args.shape, '--shape'
    scope = cfg.get('default_scope', None) or 'tlalign_mm'
    stock_cfg = with_stock_backbone(cfg) if args.compare_stock else None  # raises before the slow part

    t0 = time.perf_counter()
    costs = {'ours': config_cost(cfg, shape, args.batch, device=args.device)}
    if stock_cfg is not None:
        costs['stock'] = config_cost(stock_cfg, shape, args.batch, device=args.device)
    elapsed = time.perf_counter() - t0

    ours = costs['ours']
    b, c, h, w = ours.input_shape
    print(f'config  {args.config}')
    print(f'model   {ours.model_type} ({task_kind(cfg)}, scope {scope})')
    print(f'input   {b} x {c} x {h} x {w} (B x C x H x W; requested {shape[0]} x {shape[1]} from {source}'
          + (', padded by the data preprocessor' if (h, w) != tuple(shape) else '') + ')')
    print()
    print(format_table(costs, scope))
    print()
    print(FLOPS_NOTE)
    top = ', '.join(k.split('::')[-1] for k in list(ours.unsupported_ops)[:8])
    more = ', ...' if len(ours.unsupported_ops) > 8 else ''
    print(f'Not counted (ops without a FLOP handle, mostly elementwise): {top or "nothing"}{more}')
    if ours.kind == 'det':
        print('RoI-head FLOPs follow the number of RPN proposals kept with random weights '
              '(at most model.test_cfg.rpn.max_per_img).')
    if 'stock' in costs:
        st = costs['stock']
        dp = ours.backbone_params - st.backbone_params
        df = (ours.backbone_flops - st.backbone_flops) / max(st.backbone_flops, 1)
        print(f'backbone ours - stock: {dp:+d} params, FLOPs {100 * df:+.2f}%')
        if abs(df) > 0.005 and 'Swin' in ours.backbone_type:
            print('  (a stage map smaller than window_size: our Swin shrinks the window to the map, as the '
                  'official Swin does; mmseg / mmdet pad the map to a full window)')
    print(f'({elapsed:.1f} s)')

    if args.results_json:
        from results_file import write_results
        write_results(args.results_json, results_tables(costs, scope),
                      dict(config=args.config, shape=list(shape), batch=args.batch,
                           **{k: v.as_dict() for k, v in costs.items()}))
        print(f'wrote {args.results_json}')
    if args.out:
        out = dict(config=args.config, scope=scope, requested_shape=list(shape), shape_source=source,
                   batch=args.batch, note=FLOPS_NOTE, torch=torch.__version__,
                   **{k: v.as_dict() for k, v in costs.items()})
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(out, f, indent=1)
        print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
