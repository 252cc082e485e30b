"""The analysis package and tools: token fluctuation, token-label maps, the A/B harness.

Exact checks on tiny hand-built networks (no data, milliseconds):

* an unmixed batch (mixer ``prob=0``: ``share_b`` all 0, ``lam = 1``) has target L2 0 and no drift;
* identity attention (every token attends only to itself: one head, orthogonal position codes as
  the only input, ``q = k = 10 x``, zero attention projection / MLP output so the features do not
  change across blocks): labels never move, so the class token keeps ``[lam, 1 - lam]`` and
  target L2 = 0 at every block;
* attention concentrated on one patch token from image B (constant query, a key that only that
  token answers): each block halves the class token's share of A (``(Y + Y_B) / 2``), so after
  L blocks ``lam_aligned = lam / 2^L`` and target L2 = ``|lam_aligned - lam| (1 - s) sqrt(2)`` > 0;
* the target L2 identity ``target_l2 = |lam_al - lam| (1 - s) sqrt(2)`` (0 for same-class pairs) on random
  DeiT and Swin models; the label maps' shapes / values / PNG; layer specs; the A/B harness'
  schedule override and reporting (on fabricated ``scalars.json`` files).

Subprocess checks: both CLIs on the demo config with a random init; the
A/B harness end to end (1 seed, 1 epoch, 64 images) is ``slow``.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import os.path as osp
import random
import subprocess
import sys

import pytest
import torch
from _common import quiet_init_weights  # tools/analysis/_common.py
from plotting import plot_label_maps, write_fluctuation_csv  # tools/analysis/plotting.py

import tlalign_mm  # noqa: F401
from tlalign_mm.align import smooth_one_hot
from tlalign_mm.analysis import (
    aligned_targets,
    compute_label_maps,
    iter_blocks,
    measure_batch,
    measure_data_batch,
    parse_layer_spec,
    record_block_labels,
    run_fluctuation,
)
from tlalign_mm.models import TLAImageClassifier
from tlalign_mm.structures import ClsDataSample

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_TLA = osp.join(REPO, 'configs', 'demo', 'deit-demo_tla_1xb64-10e_fashion-mnist.py')
DEMO_CUTMIX = osp.join(REPO, 'configs', 'demo', 'deit-demo_cutmix_1xb64-10e_fashion-mnist.py')
DEMO_DATA = osp.join(REPO, 'data', 'demo', 'fashion_mnist', 'train')
SMOOTH = 0.1


# ------------------------------------------------------------------------------- tiny models
def tiny_vit(num_heads: int = 2, num_layers: int = 2, prob: float = 1.0, attn_impl: str = 'fused'
             ) -> TLAImageClassifier:
    """DeiT-like: 32 px, patch 8 (4x4 = 16 patch tokens + class token), 32 dims, 4 classes."""
    torch.manual_seed(0)
    model = TLAImageClassifier(
        backbone=dict(type='TLAVisionTransformer', arch=dict(embed_dims=32, num_layers=num_layers,
                                                             num_heads=num_heads),
                      img_size=32, patch_size=8, out_type='cls_token', attn_impl=attn_impl),
        head=dict(type='TLALinearClsHead', num_classes=4), label_smoothing=SMOOTH,
        data_preprocessor=dict(type='TLAClsDataPreprocessor',
                               mixer=dict(cutmix_alpha=1.0, prob=prob, patch_size=8), seed=0))
    quiet_init_weights(model)
    return model.eval()


def tiny_swin() -> TLAImageClassifier:
    """Swin-like: 32 px, patch 4 (8x8 tokens), window 4, 2 stages of 2 blocks, 4 classes."""
    torch.manual_seed(0)
    model = TLAImageClassifier(
        backbone=dict(type='TLASwinTransformer', arch=dict(embed_dims=16, depths=(2, 2), num_heads=(1, 2)),
                      img_size=32, window_size=4, out_indices=(1,), out_type='avg_featmap',
                      drop_path_rate=0.0),
        head=dict(type='TLALinearClsHead', num_classes=4), label_smoothing=SMOOTH,
        data_preprocessor=dict(type='TLAClsDataPreprocessor',
                               mixer=dict(cutmix_alpha=1.0, patch_size=4, token_grid_size=8), seed=0))
    quiet_init_weights(model)
    return model.eval()


def data_batch(b: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (b, 3, 32, 32), generator=g, dtype=torch.uint8)
    return dict(inputs=images, data_samples=[ClsDataSample().set_gt_label(i % 4) for i in range(b)])


def mixed(model, b: int = 4, lam_range=(0.2, 0.8)):
    """Normalised images, labels 0..b-1 (mod 4) and a token-CutMix MixResult with lam in range."""
    data = model.data_preprocessor(data_batch(b), training=False)
    x = data['inputs']
    for seed in range(200):
        mix = model.data_preprocessor.mixer(x, rng=random.Random(seed))
        if mix.mixed and lam_range[0] <= float(mix.lam[0]) <= lam_range[1]:
            return x, torch.arange(b) % 4, mix
    raise AssertionError('no mix with lam in range')


def freeze_features(vit) -> None:
    """Zero the attention projection and MLP output: every block's features equal its input."""
    for blk in vit.blocks:
        for lin in (blk.attn.proj, blk.mlp.fc2):
            torch.nn.init.zeros_(lin.weight)
            torch.nn.init.zeros_(lin.bias)


def position_codes(vit, scale: float = 10.0) -> None:
    """Tokens = orthogonal codes: token j is ``scale * e_j`` (patch embedding and class token 0)."""
    n, c = vit.pos_embed.shape[1:]
    assert n <= c
    with torch.no_grad():
        vit.patch_embed.proj.weight.zero_()
        vit.patch_embed.proj.bias.zero_()
        vit.cls_token.zero_()
        vit.pos_embed.zero_()
        vit.pos_embed[0, torch.arange(n), torch.arange(n)] = scale


def expected_target_l2(lam_al, lam, labels, partner_labels):
    diff = (labels != partner_labels).float()
    return (lam_al - lam).abs() * (1 - SMOOTH) * math.sqrt(2) * diff


# ------------------------------------------------------------------------------- fluctuation
def test_unmixed_batch_has_zero_target_l2():
    model = tiny_vit(prob=0.0)
    fl = measure_data_batch(model, data_batch())
    assert fl.mode == 'none'
    assert torch.equal(fl.lam, torch.ones(4))
    assert fl.target_l2.abs().max() < 1e-6
    assert (fl.lam_aligned - 1).abs().max() < 1e-6
    assert fl.layer_lam.shape == (2, 4) and (fl.layer_lam - 1).abs().max() < 1e-6


def test_unmixed_share_b_zero_on_swin():
    model = tiny_swin()
    x, labels, mix = mixed(model)
    mix.share_b.zero_()
    mix.lam.fill_(1.0)
    fl = measure_batch(model, mix.images, labels, mix)
    assert fl.target_l2.abs().max() < 1e-6
    assert fl.layer_lam.shape == (4, 4)  # 2 + 2 blocks
    assert (fl.layer_lam - 1).abs().max() < 1e-6


def test_identity_attention_keeps_lam_and_zero_target_l2():
    model = tiny_vit(num_heads=1, num_layers=3)
    vit = model.backbone
    position_codes(vit)
    freeze_features(vit)
    c = vit.embed_dims
    with torch.no_grad():
        for blk in vit.blocks:  # q = k = 10 x  ->  q_i . k_j  maximal (by ~600) at j = i
            blk.attn.qkv.weight.zero_()
            blk.attn.qkv.bias.zero_()
            blk.attn.qkv.weight[:c] = 10 * torch.eye(c)
            blk.attn.qkv.weight[c:2 * c] = 10 * torch.eye(c)
    x, labels, mix = mixed(model)
    fl = measure_batch(model, mix.images, labels, mix)
    assert 0.2 <= float(fl.lam[0]) <= 0.8
    assert (fl.lam_aligned - fl.lam).abs().max() < 1e-5
    assert (fl.layer_lam - fl.lam[None]).abs().max() < 1e-5
    assert fl.target_l2.max() < 1e-5


@pytest.mark.parametrize('num_heads,attn_impl', [(1, 'fused'), (2, 'fused'), (2, 'materialised'), (2, 'split')])
def test_attention_on_one_b_token_pulls_lam_down(num_heads, attn_impl):
    layers = 2
    model = tiny_vit(num_heads=num_heads, num_layers=layers, attn_impl=attn_impl)
    vit = model.backbone
    x, labels, mix = mixed(model)
    j_b = 1 + int(torch.nonzero(mix.share_b[0] == 1)[0])  # a patch token wholly from image B
    assert float(mix.share_b[:, j_b - 1].min()) == 1.0
    position_codes(vit)
    freeze_features(vit)
    c, hd = vit.embed_dims, vit.embed_dims // num_heads
    with torch.no_grad():
        for blk in vit.blocks:  # constant query, key = 10 * x[:, j_b]: only token j_b answers
            blk.attn.qkv.weight.zero_()
            blk.attn.qkv.bias.zero_()
            for h in range(num_heads):
                blk.attn.qkv.bias[h * hd] = 10.0
                blk.attn.qkv.weight[c + h * hd, j_b] = 10.0
    fl = measure_batch(model, mix.images, labels, mix)
    lam = fl.lam
    for i in range(layers):
        assert torch.allclose(fl.layer_lam[i], lam / 2 ** (i + 1), atol=1e-5)
    assert torch.allclose(fl.lam_aligned, lam / 2 ** layers, atol=1e-5)
    assert (fl.lam_aligned < lam).all()
    assert (fl.target_l2 > 0.1).all()  # all partners have other classes here
    expected = expected_target_l2(fl.lam_aligned, lam, fl.labels, fl.partner_labels)
    assert torch.allclose(fl.target_l2, expected, atol=1e-5)


@pytest.mark.parametrize('build', [tiny_vit, tiny_swin], ids=['deit', 'swin'])
def test_target_l2_matches_lam_gap_on_random_models(build, tmp_path):
    model = build()
    batches = [data_batch(6, seed=s) for s in range(3)]
    for b in batches:  # a same-class pair: sample 0 and its partner 5 share class 0
        b['data_samples'][5] = ClsDataSample().set_gt_label(0)
    res = run_fluctuation(model, batches, num_batches=3)
    assert len(res.batches) == 3 and res.lam.shape == (18,)
    assert torch.allclose(res.target_l2, expected_target_l2(res.lam_aligned, res.lam, res._cat('labels'),
                                                  res._cat('partner_labels')), atol=1e-5)
    assert float(res.target_l2[0]) < 1e-6
    assert ((res.lam_aligned >= 0) & (res.lam_aligned <= 1)).all()
    n_blocks = len(iter_blocks(model.backbone))
    assert res.layer_lam.shape == (n_blocks, 18) and len(res.layer_names) == n_blocks
    s = res.summary()
    assert s['num_samples'] == 18 and len(s['layer_drift_mean']) == n_blocks
    samples, layers = write_fluctuation_csv(res, str(tmp_path), 'random-init')
    rows = list(csv.DictReader(open(samples)))
    assert len(rows) == 18 and rows[0]['weights'] == 'random-init'
    assert abs(float(rows[3]['target_l2']) - float(res.target_l2[3])) < 1e-5
    assert len(list(csv.DictReader(open(layers)))) == n_blocks


@pytest.mark.parametrize('build', [tiny_vit, tiny_swin], ids=['deit', 'swin'])
def test_autocast_drift(build):
    """float32 'autocast' moves nothing; CPU bfloat16 moves the aligned lam a little (bf16
    attention weights, label outputs and q / k), far less than the fluctuation itself (with
    trained-like attention, so that the fluctuation is not vanishingly small); the L2 figure is
    |dlam| sqrt(2) (1 - s) for pairs of different classes."""
    from structured_attention import structure_attention_  # tools/analysis/structured_attention.py

    from tlalign_mm.analysis import autocast_drift

    def structured():
        model = build()
        structure_attention_(model.backbone)
        return model
    batches = [data_batch(6, seed=s) for s in range(2)]
    same = autocast_drift(structured(), batches, 2, torch.float32)
    assert same['num_samples'] == 12 and same['lam_aligned_absdiff_max'] == 0.0 and same['target_l2_max'] == 0.0
    d = autocast_drift(structured(), batches, 2, torch.bfloat16)
    assert d['lam_gap_mean'] > 0.01
    assert d['dtype'] == 'bfloat16' and d['device'] == 'cpu'
    assert 0.0 < d['lam_aligned_absdiff_max'] < 0.02
    assert d['lam_aligned_absdiff_mean'] < 0.1 * d['lam_gap_mean']
    assert d['target_l2_max'] == pytest.approx(math.sqrt(2) * (1 - SMOOTH) * d['lam_aligned_absdiff_max'], rel=1e-5)
    with pytest.raises(ValueError, match='num_batches'):
        autocast_drift(build(), batches, 0, torch.bfloat16)


def test_measure_data_batch_needs_a_mixer():
    model = tiny_vit()
    model.data_preprocessor.mixer = None
    with pytest.raises(ValueError, match='no mixer'):
        measure_data_batch(model, data_batch())


# ------------------------------------------------------------------------------- label maps
def test_layer_specs():
    swin = iter_blocks(tiny_swin().backbone)
    assert [b.index for b in parse_layer_spec(['0', '1.0', '1:1', -1], swin)] == [0, 2, 3]
    assert [(b.stage, b.block) for b in parse_layer_spec(['1.-1'], swin)] == [(1, 1)]
    vit = iter_blocks(tiny_vit().backbone)
    assert [b.index for b in parse_layer_spec([1, '-2'], vit)] == [1, 0]
    for bad in ('2', '2.0', '0.5', 'x'):
        with pytest.raises(ValueError, match='does not exist'):
            parse_layer_spec([bad], swin if '.' in bad else vit)


def test_tracing_walks_pvt():
    """PVT's blocks (stages.S.blocks.J) are walked in forward order with their stages, and each
    block's labels are recorded on its stage's grid."""
    from tlalign_mm.models import TLAPyramidVisionTransformer
    torch.manual_seed(0)
    arch = dict(embed_dims=(8, 16, 24, 32), depths=(1, 2, 1, 1), num_heads=(1, 2, 3, 4), mlp_ratios=(2, 2, 2, 2),
                sr_ratios=(4, 2, 1, 1), version=2)
    pvt = TLAPyramidVisionTransformer(arch, img_size=64, out_indices=(3,), drop_path_rate=0.0).eval()
    blocks = iter_blocks(pvt)
    assert [(b.stage, b.block) for b in blocks] == [(0, 0), (1, 0), (1, 1), (2, 0), (3, 0)]
    assert [b.module for b in blocks] == pvt.label_blocks()
    assert [b.index for b in parse_layer_spec(['1.1', '-1'], blocks)] == [2, 4]
    share = torch.rand(2, 16 * 16)
    labels = torch.stack([1 - share, share], -1)
    with torch.no_grad(), record_block_labels(pvt, (64, 64)) as trace:
        pvt(torch.randn(2, 3, 64, 64), labels)
    assert [trace.grids[i] for i in range(5)] == [(16, 16), (8, 8), (8, 8), (4, 4), (2, 2)]
    for i, (h, w) in trace.grids.items():
        assert trace.labels[i].shape == (2, h * w, 2)
        torch.testing.assert_close(trace.labels[i].sum(-1), torch.ones(2, h * w))


def test_label_maps_deit_identity_and_png(tmp_path):
    model = tiny_vit(num_heads=1, num_layers=3)
    vit = model.backbone
    position_codes(vit)
    freeze_features(vit)
    c = vit.embed_dims
    with torch.no_grad():
        for blk in vit.blocks:
            blk.attn.qkv.weight.zero_()
            blk.attn.qkv.bias.zero_()
            blk.attn.qkv.weight[:2 * c] = 10 * torch.eye(c).repeat(2, 1)
    x, labels, mix = mixed(model)
    maps = compute_label_maps(model, x, labels, mix, [0, -1], num_images=2)
    assert maps.images_a.shape == (2, 3, 32, 32) and maps.mixed.shape == (2, 3, 32, 32)
    assert float(maps.images_a.min()) >= 0 and float(maps.images_a.max()) <= 1
    assert torch.equal(maps.initial, (1 - mix.share_b[:2]).reshape(2, 4, 4))
    assert sorted(maps.maps) == [0, 2]
    for k in (0, 2):  # identity attention: nothing moves
        assert torch.allclose(maps.maps[k], maps.initial, atol=1e-5)
        assert torch.allclose(maps.readout[k], mix.lam[:2], atol=1e-5)
    assert torch.allclose(maps.readout[-1], mix.lam[:2])
    assert torch.equal(maps.partner_labels, labels[mix.partner][:2])
    path = plot_label_maps(maps, str(tmp_path / 'maps.png'), 'test', class_names=['a', 'b', 'c', 'd'])
    with open(path, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_label_maps_swin_stage_grids(tmp_path):
    model = tiny_swin()
    x, labels, mix = mixed(model)
    maps = compute_label_maps(model, x, labels, mix, ['0.1', '1.0'], num_images=3)
    assert maps.initial.shape == (3, 8, 8)
    assert maps.maps[1].shape == (3, 8, 8) and maps.maps[2].shape == (3, 4, 4)
    for m in maps.maps.values():
        assert float(m.min()) >= -1e-6 and float(m.max()) <= 1 + 1e-6
    assert maps.names == {1: '0.1', 2: '1.0'}
    assert torch.allclose(maps.readout[-1], maps.initial.mean((1, 2)))
    assert osp.getsize(plot_label_maps(maps, str(tmp_path / 'swin.png'))) > 1000


# ------------------------------------------------------------------------------- A/B harness
def _load_ab():
    spec = importlib.util.spec_from_file_location('ab_experiment', osp.join(REPO, 'tools', 'analysis',
                                                                             'ab_experiment.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ab_override_epochs_and_names():
    from mmengine.config import Config
    ab = _load_ab()

    def cfg():
        return Config(dict(max_epochs=8, train_cfg=dict(by_epoch=True, max_epochs=8, val_interval=2), param_scheduler=[
            dict(type='LinearLR', by_epoch=True, begin=0, end=1),
            dict(type='CosineAnnealingLR', T_max=7, by_epoch=True, begin=1, end=8)]))

    c = cfg()
    notes = ab.override_epochs(c, 4)
    assert c.train_cfg.max_epochs == 4 and c.max_epochs == 4 and c.train_cfg.val_interval == 2
    assert c.param_scheduler[1].end == 4 and c.param_scheduler[1].T_max == 3
    assert c.param_scheduler[0].end == 1 and notes
    c = cfg()
    ab.override_epochs(c, 1)
    assert len(c.param_scheduler) == 1 and c.train_cfg.val_interval == 1
    assert ab.variant_names([DEMO_TLA, DEMO_CUTMIX]) == ['tla', 'cutmix']
    assert ab.variant_names(['a/x.py', 'b/x.py']) == ['x-0', 'x-1']


def test_ab_reports_from_scalars(tmp_path):
    ab = _load_ab()
    top1 = {('tla', 0): [50, 60], ('tla', 1): [52, 64], ('cutmix', 0): [48, 58], ('cutmix', 1): [50, 60]}
    for (name, seed), vals in top1.items():
        d = tmp_path / name / f'seed{seed}' / '20260101_000000' / 'vis_data'
        d.mkdir(parents=True)
        with open(d / 'scalars.json', 'w') as f:
            f.write(json.dumps({'loss': 1.0, 'step': 1}) + '\n')
            for e, v in enumerate(vals, 1):
                f.write(json.dumps({'accuracy/top1': v, 'accuracy/top5': 99.0, 'step': 2 * e}) + '\n')
    runs = {n: {s: ab.read_val_scalars(str(tmp_path / n / f'seed{s}')) for s in (0, 1)} for n in ('tla', 'cutmix')}
    assert [r['epoch'] for r in runs['tla'][0]] == [2, 4]
    summary = ab.summarise(runs)
    assert summary['tla']['final_mean'] == 62 and abs(summary['tla']['final_std'] - math.sqrt(8)) < 1e-9
    assert summary['cutmix']['best_mean'] == 59
    assert [c[0] for c in summary['tla']['curve']] == [2, 4]
    paths = ab.write_reports(str(tmp_path), ['tla', 'cutmix'], ['A.py', 'B.py'], runs, summary, {}, [0, 1], {},
                             baseline='cutmix')
    rows = list(csv.DictReader(open(paths[0])))
    assert len(rows) == 8 and rows[0]['variant'] == 'tla'
    md = open(paths[1]).read()
    assert '62.00 ± 2.83' in md and 'tla − cutmix: +3.00 ± 1.41' in md
    assert osp.getsize(paths[2]) > 1000


# ------------------------------------------------------------------------------- CLIs
def _run(args, timeout=300):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable] + args, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


needs_demo = pytest.mark.skipif(not osp.isdir(DEMO_DATA), reason='demo data missing: run '
                                'tools/prepare_demo_data.py --only cls')


@pytest.mark.slow
@needs_demo
def test_token_fluctuation_cli(tmp_path):
    out = _run([osp.join('tools', 'analysis', 'token_fluctuation.py'), DEMO_TLA, '--num-batches', '1',
                '--batch-size', '8', '--out-dir', str(tmp_path), '--device', 'cpu', '--amp-dtype', 'bfloat16'])
    assert 'RANDOMLY INITIALISED' in out
    assert 'autocast bfloat16 on cpu vs float32 (8 samples)' in out
    drift = json.load(open(tmp_path / 'amp_drift.json'))
    assert drift['num_samples'] == 8 and 0.0 <= drift['lam_aligned_absdiff_max'] < 0.05
    rows = list(csv.DictReader(open(tmp_path / 'fluctuation.csv')))
    assert len(rows) == 8 and {r['weights'] for r in rows} == {'random-init'}
    for r in rows:
        assert 0 <= float(r['lam_aligned']) <= 1 and float(r['target_l2']) >= 0
    layers = list(csv.DictReader(open(tmp_path / 'fluctuation_layers.csv')))
    assert len(layers) == 4  # the demo ViT has 4 blocks
    # --seed fixes the sampler, the augmentations and the mixes: a second run measures the same
    again = tmp_path / 'again'
    _run([osp.join('tools', 'analysis', 'token_fluctuation.py'), DEMO_TLA, '--num-batches', '1',
          '--batch-size', '8', '--out-dir', str(again), '--device', 'cpu'])
    assert list(csv.DictReader(open(again / 'fluctuation.csv'))) == rows
    summary = json.load(open(tmp_path / 'fluctuation_summary.json'))
    assert summary['weights'] == 'random-init' and summary['num_samples'] == 8
    with open(tmp_path / 'fluctuation.png', 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


@pytest.mark.slow
@needs_demo
def test_visualize_aligned_labels_cli(tmp_path):
    out = _run([osp.join('tools', 'analysis', 'visualize_aligned_labels.py'), DEMO_TLA, '--layers', '0', '3',
                '--num-images', '2', '--out-dir', str(tmp_path), '--device', 'cpu'])
    assert 'after block 3' in out
    with open(tmp_path / 'label_maps.png', 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


@pytest.mark.slow
@needs_demo
def test_ab_experiment_end_to_end(tmp_path):
    out = _run([osp.join('tools', 'analysis', 'ab_experiment.py'), '--seeds', '0', '--epochs', '1',
                '--work-dir', str(tmp_path), '--threads', '1', '--cfg-options',
                'train_dataloader.dataset.indices=64', 'val_dataloader.dataset.indices=64'], timeout=900)
    rows = list(csv.DictReader(open(tmp_path / 'ab_results.csv')))
    assert sorted(r['variant'] for r in rows) == ['cutmix', 'tla']
    assert all(r['epoch'] == '1' and 0 <= float(r['top1']) <= 100 for r in rows)
    assert 'final top-1' in out and osp.getsize(tmp_path / 'ab_results.png') > 1000
    assert (tmp_path / 'ab_results.md').exists()


def test_ab_paired_differences_against_the_chosen_baseline(tmp_path):
    ab = _load_ab()
    runs = {n: {s: [dict(epoch=1, top1=v + s, top5=99.0)] for s in (0, 1)}
            for n, v in (('tla', 80.0), ('area', 78.5), ('transmix', 79.0))}
    summary = ab.summarise(runs)
    md = ab.write_reports(str(tmp_path), list(runs), ['a.py', 'b.py', 'c.py'], runs, summary, {}, [0, 1], {},
                          baseline='area')[1]
    text = open(md).read()
    assert 'Paired differences (other − area, same seed)' in text
    assert '- tla − area: +1.50 ± 0.00 points over 2 seed(s)' in text
    assert '- transmix − area: +0.50 ± 0.00 points over 2 seed(s)' in text
    assert '- area − area' not in text


def test_rule_lambdas_agree_with_the_rules_at_the_last_block(tmp_path):
    """Fig. 4 curves: at the last block TL-Align's curve is the TL-Align target's share of A and
    TransMix's the TransMix rule's; the area curve is flat; the backbone's settings come back."""
    from plotting import plot_rule_lambdas, write_rule_lambdas  # tools/analysis/plotting.py
    from structured_attention import structure_attention_  # tools/analysis/structured_attention.py

    from tlalign_mm.analysis.rule_lambdas import most_fluctuating, rule_lambdas
    from tlalign_mm.registry import MODELS
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='TLAImageClassifier', head=dict(type='TLALinearClsHead', num_classes=4),
        backbone=dict(type='TLAVisionTransformer', arch=dict(embed_dims=32, num_layers=3, num_heads=4),
                      img_size=32, patch_size=8, out_type='cls_token'),
        label_rule=dict(type='TransMix'),
        data_preprocessor=dict(type='TLAClsDataPreprocessor', seed=0, mixer=dict(cutmix_alpha=1.0, patch_size=8))))
    model.init_weights()
    structure_attention_(model.backbone)
    model.eval()
    g = torch.Generator().manual_seed(1)
    batch = dict(inputs=torch.randint(0, 256, (6, 3, 32, 32), generator=g, dtype=torch.uint8),
                 data_samples=[ClsDataSample().set_gt_label(i % 4) for i in range(6)])
    data = model.data_preprocessor(batch, training=True)
    mix, labels = data['mix'], torch.tensor([i % 4 for i in range(6)])
    curves = rule_lambdas(model, data['inputs'], labels, mix)
    assert [b.align_labels for b in model.backbone.label_blocks()] == [False, False, True]   # TransMix's, restored
    assert set(curves) == {'area', 'tl_align', 'transmix'} and curves['tl_align'].shape == (3, 6)
    assert torch.equal(curves['area'], mix.lam.expand(3, -1))
    with model.backbone.alignment('all', True):
        _, _, aligned, _ = aligned_targets(model, data['inputs'], labels, mix, carry_labels=True)
    y_a = smooth_one_hot(labels, 4, 0.1)
    y_b = y_a[mix.partner]
    share = ((aligned - y_b) * (y_a - y_b)).sum(-1) / ((y_a - y_b) ** 2).sum(-1).clamp_min(1e-12)
    differ = labels != labels[mix.partner]
    torch.testing.assert_close(curves['tl_align'][-1][differ], share[differ], atol=1e-5, rtol=0)
    with torch.no_grad():
        model(**data, mode='loss')
    target = torch.stack([ds.gt_score for ds in data['data_samples']])
    share_tm = ((target - y_b) * (y_a - y_b)).sum(-1) / ((y_a - y_b) ** 2).sum(-1).clamp_min(1e-12)
    torch.testing.assert_close(curves['transmix'][-1][differ], share_tm[differ], atol=1e-5, rtol=0)
    assert (curves['tl_align'] - curves['area']).abs().max() > 1e-2
    top = most_fluctuating(curves, 3)
    gaps = (curves['tl_align'] - curves['area']).abs().max(0).values
    assert gaps[top[0]] == gaps.max() and len(top) == 3
    names = ['0', '1', '2']
    rows = list(csv.DictReader(open(write_rule_lambdas(curves, top, names, str(tmp_path / 'r.csv')))))
    assert len(rows) == 3 * 3 * 3 and {r['rule'] for r in rows} == {'area', 'tl_align', 'transmix'}
    assert osp.getsize(plot_rule_lambdas(curves, top, names, str(tmp_path / 'r.png'))) > 1000


@pytest.mark.slow
@needs_demo
def test_rule_lambdas_cli(tmp_path):
    out = _run([osp.join('tools', 'analysis', 'rule_lambdas.py'), DEMO_TLA, '--num-batches', '1', '--top-k', '3',
                '--batch-size', '16', '--out-dir', str(tmp_path)], timeout=600)
    assert 'weights: random-init' in out
    rows = list(csv.DictReader(open(tmp_path / 'rule_lambdas.csv')))
    assert len(rows) == 3 * 3 * 4                       # 3 samples x 3 rules x 4 blocks of the demo DeiT
    assert osp.getsize(tmp_path / 'rule_lambdas.png') > 1000
