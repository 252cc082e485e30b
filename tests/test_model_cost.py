"""Model cost: the SDPA FLOP handle, parameters / FLOPs of the configs' models, the stock-backbone mapping.

References the counts are checked against, none of them produced by the code under test:

* the attention written as two explicit matmuls, counted by mmengine's own ``matmul`` handle, and
  the closed form ``B * heads * Nq * Nk * (D_qk + D_v)``;
* the stock OpenMMLab backbones built directly (mmdet ``SwinTransformer``, mmseg
  ``VisionTransformer``) with the same architecture: same parameters, same FLOPs (their attention
  is two matmuls that mmengine counts; both leave softmax / elementwise ops uncounted);
* the published complexities at 224 x 224: Swin-T 4.5 GFLOPs (Liu et al. 2021, Table 1), DeiT-S
  4.6 GFLOPs (Touvron et al. 2021, Table 1);
* ``sum(p.numel())`` for parameters, and the bare backbone traced alone for the backbone row.

Tests marked ``mm`` need mmseg / mmdet.  Timings are never asserted.
"""
from __future__ import annotations

import json
import math
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip('mmengine')

from mmengine.analysis import FlopAnalyzer  # noqa: E402
from mmengine.config import Config  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.join(REPO, 'tools', 'analysis')

from model_cost import (  # noqa: E402  (tools/analysis/model_cost.py; tests/conftest.py puts the folder on sys.path)
    DETECTION_DEFAULT_SHAPE,
    build_analysis_model,
    config_cost,
    default_input_shape,
    flop_analyzer,
    make_dummy_batch,
    stock_backbone_config,
    with_stock_backbone,
)

DEMO_SEG = 'configs/demo/upernet_swin-demo_fmnist-tla-pre_1xb4-400i_voc-seg-256x256.py'
DEMO_DET = 'configs/demo/cascade-mask-rcnn_swin-demo_fmnist-tla-pre_fpn_1xb2-10e_coco-voc.py'
SWIN_T_SEG = 'configs/upernet/upernet_swin-t_in1k-tla-pre_8xb2-160k_ade20k-512x512.py'
DEIT_S_SEG = 'configs/upernet/upernet_deit-s_in1k-tla-pre_mln_8xb2-160k_ade20k-512x512.py'
SWIN_T_DET = 'configs/cascade_mask_rcnn/cascade-mask-rcnn_swin-t_in1k-tla-pre_fpn_ms-crop-3x_8xb2_coco.py'
DEIT_S_PRE = 'configs/pretrain/deit-small_tla_8xb128-300e_in1k.py'
SUBPROCESS_TIMEOUT = 240


def _cfg(rel):
    return Config.fromfile(osp.join(REPO, rel))


def _flops(model, *inputs):
    if hasattr(model, 'eval'):
        model.eval()   # (mmseg's VisionTransformer.train returns None: no chaining)
    fa = flop_analyzer(model, inputs)
    with torch.no_grad():   # inference kernels, as measure_cost traces
        return fa.total(), fa


def _params(model):
    return sum(p.numel() for p in model.parameters())


def _run_tool(script, *args):
    env = dict(os.environ, OMP_NUM_THREADS='2', PYTHONWARNINGS='ignore')
    r = subprocess.run([sys.executable, osp.join(TOOLS, script), *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert r.returncode == 0, f'{script} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}'
    return r.stdout


# ----------------------------------------------------------------------------- the SDPA handle
class _FusedAttention(nn.Module):
    def forward(self, q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)


class _ExplicitAttention(nn.Module):
    def forward(self, q, k, v, mask):
        attn = torch.matmul(q, k.transpose(-2, -1)) * 0.3 + mask
        return torch.matmul(attn.softmax(-1), v)


def test_sdpa_handle_counts_b_heads_nq_nk_dqk_plus_dv():
    b, h, nq, nk, dqk, dv = 2, 3, 5, 7, 8, 4
    q, k, v = torch.randn(b, h, nq, dqk), torch.randn(b, h, nk, dqk), torch.randn(b, h, nk, dv)
    mask = torch.randn(b, h, nq, nk)
    ours, fa = _flops(_FusedAttention(), q, k, v, mask)
    assert ours == b * h * nq * nk * (dqk + dv)
    assert 'aten::scaled_dot_product_attention' not in fa.unsupported_ops()
    # the same attention as two matmuls, counted by mmengine's own handle
    ref = FlopAnalyzer(_ExplicitAttention(), (q, k, v, mask))
    ref.unsupported_ops_warnings(False)
    assert ours == ref.total()
    # without the handle mmengine counts nothing for the fused call (why the handle exists)
    plain = FlopAnalyzer(_FusedAttention(), (q, k, v, mask))
    plain.unsupported_ops_warnings(False)
    assert plain.total() == 0
    assert plain.unsupported_ops()['aten::scaled_dot_product_attention'] == 1


def test_sdpa_handle_grouped_query_heads():
    """enable_gqa: 4 query heads share 2 key/value heads; the count follows the 4 query heads."""
    class M(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    q, k, v = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 9, 8), torch.randn(1, 2, 9, 16)
    total, _ = _flops(M(), q, k, v)
    assert total == 1 * 4 * 6 * 9 * (8 + 16)


def test_sdpa_flops_of_our_vit_blocks_follow_the_closed_form():
    from tlalign_mm.models.backbones import TLAVisionTransformer
    bb = TLAVisionTransformer(dict(embed_dims=32, num_layers=2, num_heads=2), img_size=32, patch_size=8,
                              out_type='cls_token')
    b, n, heads, d = 3, 16 + 1, 2, 16
    _, fa = _flops(bb, torch.randn(b, 3, 32, 32))
    assert fa.by_operator()['scaled_dot_product_attention'] == 2 * b * heads * n * n * (d + d)


# ------------------------------------------------------------------- ours vs stock backbones
@pytest.mark.mm
def test_swin_tiny_matches_mmdet_swin_params_and_flops():
    from mmdet.models.backbones import SwinTransformer

    from tlalign_mm.models.backbones import TLASwinTransformer
    ours = TLASwinTransformer('tiny', out_indices=(0, 1, 2, 3))
    stock = SwinTransformer(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
                            out_indices=(0, 1, 2, 3))
    assert _params(ours) == _params(stock) == 27_520_698
    x = torch.randn(1, 3, 224, 224)
    f_ours, fa = _flops(ours, x)
    f_stock, _ = _flops(stock, x)
    assert abs(f_ours - f_stock) <= 0.01 * f_stock
    assert fa.by_operator()['scaled_dot_product_attention'] > 0   # the attention is in the count
    assert abs(f_ours / 1e9 - 4.5) < 0.1                           # Swin-T: 4.5 GFLOPs (paper)


@pytest.mark.mm
def test_deit_small_matches_mmseg_vit_params_and_flops():
    from mmseg.models.backbones import VisionTransformer

    from tlalign_mm.models.backbones import TLAVisionTransformer
    ours = TLAVisionTransformer('deit-small', img_size=224, out_indices=(2, 5, 8, 11))
    stock = VisionTransformer(img_size=224, embed_dims=384, num_layers=12, num_heads=6, out_indices=(2, 5, 8, 11),
                              final_norm=True, patch_bias=True, with_cls_token=True)
    assert _params(ours) == _params(stock)
    x = torch.randn(1, 3, 224, 224)
    f_ours, _ = _flops(ours, x)
    f_stock, _ = _flops(stock, x)
    assert abs(f_ours - f_stock) <= 0.01 * f_stock
    assert abs(f_ours / 1e9 - 4.6) < 0.1                           # DeiT-S: 4.6 GFLOPs (paper)


# ---------------------------------------------------------------------------- stock mapping
@pytest.mark.mm
@pytest.mark.parametrize('rel,scope', [(DEMO_SEG, 'mmseg'), (DEMO_DET, 'mmdet'), (DEIT_S_SEG, 'mmseg')])
def test_stock_mapping_builds_the_same_architecture(rel, scope):
    from mmengine.registry import init_default_scope

    import tlalign_mm  # noqa: F401
    cfg = _cfg(rel)
    stock_cfg = stock_backbone_config(cfg.model.backbone, scope)
    if scope == 'mmseg':
        from mmseg.registry import MODELS
    else:
        from mmdet.registry import MODELS
    init_default_scope(scope)
    ours_cfg = dict(cfg.model.backbone)
    ours_cfg.pop('init_cfg', None)
    ours = MODELS.build(ours_cfg)
    stock = MODELS.build(stock_cfg)
    assert type(stock).__module__.startswith(scope)
    assert _params(ours) == _params(stock)
    if 'Swin' in ours_cfg['type']:
        assert stock_cfg['embed_dims'] == ours.embed_dims and len(stock_cfg['depths']) == ours.num_stages
        assert stock_cfg['window_size'] == ours.window_size
        # the demo Swin (window 4) at 128: stage maps 32/16/8/4 tile into whole windows, identical work
        x = torch.randn(1, 3, 128, 128)
        assert _flops(ours, x)[0] == _flops(stock, x)[0]


@pytest.mark.mm
@pytest.mark.parametrize('arch,stock', [('tiny', 'PyramidVisionTransformer'), ('v2-b0', 'PyramidVisionTransformerV2')])
def test_stock_mapping_knows_pvt(arch, stock):
    """Our PVT maps onto mmdet's: same parameters (v1: ours adds only the final norm that mmdet's
    dense model leaves out), same FLOPs."""
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    import tlalign_mm  # noqa: F401
    ours_cfg = dict(type='TLAPyramidVisionTransformer', arch=arch, img_size=224, out_indices=(0, 1, 2, 3))
    stock_cfg = stock_backbone_config(ours_cfg, 'mmdet')
    assert stock_cfg['type'] == stock
    init_default_scope('mmdet')
    ours, ref = MODELS.build(dict(ours_cfg, type='tlalign_mm.TLAPyramidVisionTransformer')), MODELS.build(stock_cfg)
    final_norm = 2 * 512 if arch == 'tiny' else 0
    assert _params(ours) == _params(ref) + final_norm
    x = torch.randn(1, 3, 224, 224)
    assert abs(_flops(ours, x)[0] - _flops(ref, x)[0]) <= 0.01 * _flops(ref, x)[0]
    with pytest.raises(ValueError, match='mmseg has no PyramidVisionTransformer'):
        stock_backbone_config(ours_cfg, 'mmseg')


def test_stock_mapping_errors_name_the_problem():
    vit = dict(type='TLAVisionTransformer', arch='deit-small', img_size=512, out_indices=(2, 5, 8, 11))
    with pytest.raises(ValueError, match='mmdet has no VisionTransformer backbone'):
        stock_backbone_config(vit, 'mmdet')
    with pytest.raises(ValueError, match="no stock counterpart for backbone type 'ResNet'"):
        stock_backbone_config(dict(type='ResNet', depth=50), 'mmseg')
    with pytest.raises(ValueError, match="default_scope is 'tlalign_mm'"):
        stock_backbone_config(dict(type='TLASwinTransformer', arch='tiny'), 'tlalign_mm')
    with pytest.raises(ValueError, match='avg_featmap'):
        stock_backbone_config(dict(type='TLASwinTransformer', arch='tiny', out_type='avg_featmap'), 'mmseg')
    with pytest.raises(ValueError, match=r"\['bogus'\]"):
        stock_backbone_config(dict(type='TLASwinTransformer', arch='tiny', bogus=1), 'mmdet')
    with pytest.raises(ValueError, match='pretraining configs have no stock comparison'):
        with_stock_backbone(_cfg(DEIT_S_PRE))
    # the scope prefix of a registry name is accepted
    assert stock_backbone_config(dict(type='mmdet.TLASwinTransformer', arch='tiny'), 'mmdet')['type'] \
        == 'SwinTransformer'


def test_default_shapes_and_dummy_batch_validation():
    assert default_input_shape(_cfg(SWIN_T_SEG)) == ((512, 512), 'model.data_preprocessor.size')
    assert default_input_shape(_cfg(DEMO_SEG))[0] == (256, 256)
    assert default_input_shape(_cfg(SWIN_T_DET))[0] == DETECTION_DEFAULT_SHAPE == (1280, 800)
    assert default_input_shape(_cfg(DEIT_S_PRE)) == ((224, 224), 'model.backbone.img_size')
    cfg = _cfg(SWIN_T_SEG)
    assert cfg.crop_size == (512, 512)
    cfg.model.data_preprocessor.pop('size')
    assert default_input_shape(cfg) == ((512, 512), 'crop_size')
    cfg.pop('crop_size')
    with pytest.raises(ValueError, match='--shape'):
        default_input_shape(cfg)
    pre = _cfg(DEIT_S_PRE)
    batch = make_dummy_batch(pre, (32, 48), batch_size=3)
    assert [tuple(t.shape) for t in batch['inputs']] == [(3, 32, 48)] * 3
    assert all(t.dtype == torch.uint8 for t in batch['inputs'])
    labels = torch.cat([s.gt_label for s in batch['data_samples']])
    assert labels.dtype == torch.long and ((0 <= labels) & (labels < 1000)).all()
    with pytest.raises(ValueError, match='batch_size'):
        make_dummy_batch(pre, 32, batch_size=0)
    with pytest.raises(ValueError, match='shape'):
        make_dummy_batch(pre, (0, 32))


# ---------------------------------------------------------------------- whole configs, in-process
@pytest.mark.mm
def test_swin_t_upernet_cost_breakdown_and_stock_swap():
    """Real Swin-T UperNet at 224 x 224 (stage maps 56/28/14/7: whole windows, as at 512)."""
    from tlalign_mm.models.backbones import TLASwinTransformer
    cfg = _cfg(SWIN_T_SEG)
    cost = config_cost(cfg, (224, 224))
    assert cost.kind == 'seg' and cost.backbone_type == 'TLASwinTransformer'
    assert cost.input_shape == (1, 3, 224, 224)
    model = build_analysis_model(cfg)
    assert cost.params == _params(model)
    assert cost.backbone_params == _params(model.backbone) == 27_520_698
    assert cost.parts['auxiliary_head']['flops'] is None          # training-only head
    assert cost.parts['auxiliary_head']['params'] == _params(model.auxiliary_head) > 0
    assert sum(p['flops'] or 0 for p in cost.parts.values()) == cost.flops
    assert cost.parts['decode_head']['flops'] > cost.backbone_flops > 0
    bare, _ = _flops(TLASwinTransformer('tiny'), torch.randn(1, 3, 224, 224))
    assert cost.backbone_flops == bare
    assert 0 < cost.sdpa_flops < cost.backbone_flops
    stock = config_cost(with_stock_backbone(cfg), (224, 224))
    assert stock.backbone_type == 'SwinTransformer' and stock.sdpa_flops == 0
    assert stock.backbone_params == cost.backbone_params
    assert abs(stock.backbone_flops - cost.backbone_flops) <= 0.01 * stock.backbone_flops
    assert stock.parts['decode_head'] == cost.parts['decode_head']


@pytest.mark.mm
def test_dummy_batches_train_through_the_models():
    """The dummy batches pass each data preprocessor in training mode and give finite losses."""
    for rel, shape, keys in ((DEMO_SEG, (64, 64), {'decode.loss_ce', 'aux.loss_ce'}),
                             (DEMO_DET, (96, 128), {'loss_rpn_cls', 's0.loss_mask', 's2.loss_bbox'})):
        cfg = _cfg(rel)
        model = build_analysis_model(cfg, init_weights=True).train()
        batch = make_dummy_batch(cfg, shape, batch_size=2)
        s = batch['data_samples'][0]
        assert tuple(s.img_shape) == tuple(s.ori_shape) == tuple(s.pad_shape) == shape
        if rel == DEMO_DET:
            assert len(s.gt_instances) == 3 and s.gt_instances.masks.masks.shape == (3, *shape)
            boxes = s.gt_instances.bboxes.tensor
            assert (boxes[:, 2] <= shape[1]).all() and (boxes[:, 3] <= shape[0]).all()
            assert s.gt_instances.masks.masks.sum() > 0
        else:
            assert tuple(s.gt_sem_seg.data.shape) == (1, *shape)
        data = model.data_preprocessor(batch, True)
        losses = model(**data, mode='loss')
        loss, log_vars = model.parse_losses(losses)
        assert keys <= set(log_vars)
        assert torch.isfinite(loss)
        loss.backward()


# --------------------------------------------------------------------------------- the tools
@pytest.mark.slow
@pytest.mark.mm
def test_get_flops_tool_on_demo_upernet_with_stock(tmp_path):
    out = tmp_path / 'flops.json'
    stdout = _run_tool('get_flops.py', DEMO_SEG, '--shape', '128', '--compare-stock', '--out', str(out))
    assert 'params (M)' in stdout and 'FLOPs (G)' in stdout and 'multiply-add' in stdout
    assert 'scaled_dot_product_attention' in stdout and '1 x 3 x 128 x 128' in stdout
    res = json.loads(out.read_text())
    ours, stock = res['ours'], res['stock']
    assert ours['flops'] > 0 and ours['params'] > 0 and ours['sdpa_flops'] > 0
    assert ours['input_shape'] == [1, 3, 128, 128]
    assert ours['backbone_type'] == 'TLASwinTransformer' and stock['backbone_type'] == 'SwinTransformer'
    assert ours['backbone_params'] == stock['backbone_params'] > 0
    # demo window 4, stage maps 32/16/8/4: the same work in both
    assert ours['backbone_flops'] == stock['backbone_flops']


@pytest.mark.slow
@pytest.mark.mm
def test_get_flops_compare_stock_accepts_label_options(tmp_path):
    """A valid config that sets our label options (``label_dtype``, ``attn_impl``: ours only, no stock
    counterpart) compares with the stock backbone as the same config without them does."""
    cfg = tmp_path / 'label_dtype.py'
    cfg.write_text(f"_base_ = ['{osp.join(REPO, DEMO_SEG)}']\n"
                   "model = dict(backbone=dict(label_dtype='float32', attn_impl='split'))\n")
    out = tmp_path / 'flops.json'
    _run_tool('get_flops.py', str(cfg), '--shape', '128', '--compare-stock', '--out', str(out))
    res = json.loads(out.read_text())
    assert res['stock']['backbone_type'] == 'SwinTransformer'
    assert res['ours']['backbone_params'] == res['stock']['backbone_params'] > 0


def test_stock_mapping_to_mmpretrain_passes_what_its_vit_takes():
    """mmpretrain's VisionTransformer (mmpretrain/models/backbones/vision_transformer.py, 1.2.0) takes
    ``frozen_stages``, ``drop_rate``, ``drop_path_rate`` and ``out_indices`` itself, the attention dropout through
    ``layer_cfgs``, and has no ``norm_eval`` / ``with_cp``."""
    cfg = dict(type='TLAVisionTransformer', arch='deit-small', img_size=384, out_indices=(3, 11), drop_rate=0.1,
               attn_drop_rate=0.2, drop_path_rate=0.3, frozen_stages=2, norm_eval=True, with_cp=True)
    stock = stock_backbone_config(cfg, 'mmpretrain')
    assert stock == dict(type='VisionTransformer', arch=dict(embed_dims=384, num_layers=12, num_heads=6,
                                                              feedforward_channels=1536),
                         patch_size=16, qkv_bias=True, final_norm=True, out_type='featmap', out_indices=[3, 11],
                         layer_cfgs=dict(attn_drop_rate=0.2), in_channels=3, drop_rate=0.1, drop_path_rate=0.3,
                         interpolate_mode='bicubic', frozen_stages=2, img_size=384)
    assert 'layer_cfgs' not in stock_backbone_config(dict(cfg, attn_drop_rate=0.0), 'mmpretrain')
    with pytest.raises(ValueError, match='frozen_exclude'):
        stock_backbone_config(cfg, 'mmseg')


def test_stock_mapping_knows_every_backbone_argument():
    """Each of our backbones, with every constructor argument given (its default), maps onto the stock model:
    an argument added to a backbone without a place in its family's table (tlalign_mm/checkpoint/{vit,swin,
    pvt}.py ``stock``) fails here, not in a user's --compare-stock."""
    import inspect

    from tlalign_mm.models import TLAPyramidVisionTransformer, TLASwinTransformer, TLAVisionTransformer
    for cls, scope, stock, arch in (
            (TLAVisionTransformer, 'mmseg', 'VisionTransformer', None),
            (TLASwinTransformer, 'mmseg', 'SwinTransformer', None),
            (TLASwinTransformer, 'mmdet', 'SwinTransformer', None),
            (TLAPyramidVisionTransformer, 'mmdet', 'PyramidVisionTransformer', None),      # the default, PVT-Small v1
            (TLAPyramidVisionTransformer, 'mmdet', 'PyramidVisionTransformerV2', 'v2-b2')):
        args = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
        args['label_dtype'] = 'float32'
        if arch:
            args['arch'] = arch
        assert stock_backbone_config(dict(args, type=cls.__name__), scope)['type'] == stock, (cls, scope, arch)


@pytest.mark.slow
@pytest.mark.mm
def test_get_flops_tool_on_a_pretraining_config(tmp_path):
    out = tmp_path / 'flops.json'
    stdout = _run_tool('get_flops.py', DEIT_S_PRE, '--shape', '112', '--out', str(out))
    assert 'TLAImageClassifier' in stdout and 'params (M)' in stdout
    res = json.loads(out.read_text())['ours']
    assert res['kind'] == 'cls' and res['input_shape'] == [1, 3, 112, 112]
    assert res['params'] == res['backbone_params'] + res['parts']['head']['params']
    assert 21e6 < res['backbone_params'] < 23e6 and res['flops'] > 0
    assert res['backbone_flops'] < 4.6e9 / 3      # 49 + 1 tokens instead of 196 + 1


@pytest.mark.slow
@pytest.mark.mm
def test_get_flops_tool_on_demo_cascade(tmp_path):
    out = tmp_path / 'flops.json'
    stdout = _run_tool('get_flops.py', DEMO_DET, '--shape', '96', '128', '--out', str(out))
    assert 'CascadeRCNN' in stdout and 'RPN proposals' in stdout
    res = json.loads(out.read_text())['ours']
    assert res['input_shape'] == [1, 3, 96, 128]
    assert {'backbone', 'neck', 'rpn_head', 'roi_head'} <= set(res['parts'])
    assert all(res['parts'][p]['flops'] > 0 for p in ('backbone', 'neck', 'rpn_head', 'roi_head'))


@pytest.mark.slow
@pytest.mark.mm
def test_benchmark_downstream_tool_runs(tmp_path):
    out = tmp_path / 'bench.json'
    stdout = _run_tool('benchmark_downstream.py', DEMO_SEG, '--batch', '1', '--shape', '64', '64',
                       '--iters', '1', '--warmup', '0', '--threads', '2', '--out', str(out))
    assert 'ratio ours / stock' in stdout and 'paired per round' in stdout
    res = json.loads(out.read_text())
    assert res['backbones'] == {'ours': 'TLASwinTransformer', 'stock': 'SwinTransformer'}
    assert all(t > 0 for t in res['step_s'].values()) and res['ratio'] > 0
    mean, lo, hi = res['paired']
    assert 0 < lo <= mean <= hi
    assert all(abs(v) < 1e4 for v in res['first_loss'].values())


def test_tools_reject_bad_arguments():
    env = dict(os.environ, OMP_NUM_THREADS='1')
    r = subprocess.run([sys.executable, osp.join(TOOLS, 'get_flops.py'), DEMO_SEG, '--shape', '1', '2', '3'],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert r.returncode == 2 and '--shape takes H or H W' in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize('model,img,amp,variants', [
    ('deit-tiny', '32', 'bfloat16', ('baseline', 'tla', 'tla32', 'split', 'reference')),
    ('swin-tiny', '56', 'float32', ('baseline', 'tla')),     # Swin: stage maps 14/7/4/2 tile into windows
])
def test_benchmark_label_path_tool_runs(tmp_path, model, img, amp, variants):
    out = tmp_path / 'label_path.json'
    stdout = _run_tool('benchmark_label_path.py', '--model', model, '--batch', '2', '--img', img,
                       '--num-classes', '10', '--iters', '3', '--warmup', '0', '--json', str(out),
                       '--amp-dtype', amp, '--variants', ','.join(variants[1:]),
                       '--results-json', str(tmp_path / 'results.json'))
    assert 'paired [95% CI]' in stdout and f'autocast {amp}' in stdout
    from benchmark_label_path import LABEL_PATH_COLUMNS  # tools/analysis/benchmark_label_path.py
    from results_file import load_results  # tools/analysis/results_file.py
    doc = load_results(str(tmp_path / 'results.json'))
    tab = doc['tables']['label_path']
    assert tab['columns'] == LABEL_PATH_COLUMNS and [r[0] for r in tab['rows']] == list(variants)
    assert 'benchmark_label_path.py' in doc['command'] and doc['values']['amp_dtype'] == amp
    res = json.loads(out.read_text())
    assert res['amp_dtype'] == amp
    assert set(res['step_s']) == set(res['peak_bytes']) == set(res['paired_ratio']) == set(variants)
    assert all(len(res['step_s_rounds'][v]) == 3 for v in variants)
    assert res['paired_ratio']['baseline'] == [1.0, 1.0, 1.0]
    for v in variants:
        mean, lo, hi = res['paired_ratio'][v]
        assert 0 < lo <= mean <= hi
        assert res['step_s'][v] > 0 and res['peak_bytes'][v] > 0


def test_benchmark_official_compares_the_same_algorithm():
    """The official TL-Align step of benchmark_official.py, written on timm's ViT-S, against our DeiT-S
    with the K-class embedding and the materialised softmax (float32): the same logits and the same
    class-token label, i.e. the benchmark times the same algorithm two ways."""
    from benchmark_label_path import build, make_batch  # tools/analysis/benchmark_label_path.py
    from benchmark_official import official_forward, timm_vit  # tools/analysis/benchmark_official.py
    bb, head, prefix, _ = build('deit-small', 'reference', 10, 0.0)
    bb.eval()
    x, labels, *_ = make_batch(bb, prefix, 2, 224, 10, 'reference', 'cpu')   # 224: no position-embedding resize
    with torch.no_grad():
        (feat,), lab = bb(x, labels)
        logits_o, target_o = official_forward(timm_vit(bb, head, fused_attn=False).eval(), x, labels)
        logits = head(feat)
    assert (logits - logits_o).abs().max() <= 1e-4 * (1 + logits.abs().max())
    assert (lab[:, 0] - target_o).abs().max() <= 1e-6
    assert (target_o - labels[:, 0]).abs().max() > 1e-5     # the labels moved (random init: little)


@pytest.mark.slow
def test_benchmark_official_tool_runs(tmp_path):
    out = str(tmp_path / 'official.json')
    stdout = _run_tool('benchmark_official.py', '--batch', '2', '--img', '32', '--num-classes', '10', '--iters', '2',
                       '--warmup', '0', '--results-json', out)
    assert 'ours/official [95% CI]' in stdout and 'ours/timm [95% CI]' in stdout
    from results_file import load_results  # tools/analysis/results_file.py
    doc = load_results(out)
    rows = doc['tables']['ours_over']['rows']
    assert [r[0] for r in rows] == ['float32', 'bfloat16']
    assert all(r[-1] in ('met', 'missed', 'open') for r in rows)
    res = doc['values']['results']
    for prec in ('float32', 'bfloat16'):
        assert set(res[prec]['step_s_rounds']) == {'ours', 'official', 'timm'}
        assert all(len(t) == 2 for t in res[prec]['step_s_rounds'].values())


def test_paired_ratios_against_hand_computed_values():
    from timing import paired_ratios  # tools/analysis/timing.py

    # rounds where the machine slows down 2x: the paired ratio ignores the drift
    base = [1.0, 2.0, 1.0, 2.0]
    ours = [1.02, 2.04, 1.03, 2.02]
    res = paired_ratios({'base': base, 'ours': ours}, ref='base')
    assert res['base'] == (1.0, 1.0, 1.0)
    logs = [math.log(1.02), math.log(1.02), math.log(1.03), math.log(1.01)]
    m = sum(logs) / 4
    s = math.sqrt(sum((x - m) ** 2 for x in logs) / 3)
    mean, lo, hi = res['ours']
    assert mean == pytest.approx(math.exp(m), rel=1e-12)                 # 1.01998...
    assert lo == pytest.approx(math.exp(m - 1.96 * s / 2), rel=1e-12)
    assert hi == pytest.approx(math.exp(m + 1.96 * s / 2), rel=1e-12)
    assert paired_ratios({'a': [2.0], 'b': [3.0]}, ref='a')['b'] == pytest.approx((1.5, 1.5, 1.5))
    with pytest.raises(ValueError, match='rounds'):
        paired_ratios({'a': [1.0, 2.0], 'b': [1.0]}, ref='a')
    with pytest.raises(ValueError, match='positive'):
        paired_ratios({'a': [1.0], 'b': [0.0]}, ref='a')
    with pytest.raises(KeyError):
        paired_ratios({'a': [1.0]}, ref='base')
