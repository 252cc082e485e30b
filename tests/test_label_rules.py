"""Label rules (tlalign_mm/models/label_rules.py) against references written out here.

Every reference recomputes each block's attention from the block's own weights and the input
the block saw (captured with a forward hook), as the reference codes do
(``softmax(q k^T / sqrt(d))``, mean over heads), and applies the rule's formula by hand:

* TL-Align and its ablations (paper Table 8): ``Y <- (Y + A Y) / 2`` or ``A Y`` on the chosen
  blocks, identity elsewhere, read at the class token;
* TransMix (Beckschen/TransMix ``transmix.py``): class-token attention to the patch tokens,
  ``lam1 = sum(mask * attn) / sum(attn)``, ``lam = (lam0 + lam1) / 2``;
* dense TL-Align: each patch token's aligned label against the token head's logits.

The attention is made trained-like first (``structure_attention_``): near-uniform attention
at random init would make every rule return almost the area target and hide errors.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tlalign_mm.align import smooth_one_hot  # noqa: E402
from tlalign_mm.analysis.precision import structure_attention_  # noqa: E402
from tlalign_mm.datasets import ClsDataSample  # noqa: E402
from tlalign_mm.registry import MODELS  # noqa: E402

K = 5
SMOOTH = 0.1


def _model(rule, arch='vit', seed=0):
    torch.manual_seed(seed)
    if arch == 'vit':
        bb = dict(type='TLAVisionTransformer', arch=dict(embed_dims=32, num_layers=3, num_heads=4),
                  img_size=32, patch_size=8, out_type='cls_token')
        mixer = dict(cutmix_alpha=1.0, patch_size=8)
    else:
        bb = dict(type='TLASwinTransformer', arch=dict(embed_dims=16, depths=(2, 2), num_heads=(2, 4)),
                  window_size=4, out_indices=(1,), out_type='avg_featmap')
        mixer = dict(cutmix_alpha=1.0, patch_size=4, token_grid_size=8)
    m = MODELS.build(dict(type='TLAImageClassifier', backbone=bb, head=dict(type='TLALinearClsHead', num_classes=K),
                          label_rule=rule, label_smoothing=SMOOTH,
                          data_preprocessor=dict(type='TLAClsDataPreprocessor', seed=3, mixer=mixer)))
    m.init_weights()
    structure_attention_(m.backbone, seed=seed)
    return m.eval()


def _batch(b=6, size=32):
    g = torch.Generator().manual_seed(11)
    imgs = torch.randint(0, 256, (b, 3, size, size), generator=g, dtype=torch.uint8)
    return dict(inputs=imgs, data_samples=[ClsDataSample().set_gt_label(i % K) for i in range(b)])


def _mixed(m):
    data = m.data_preprocessor(_batch(), training=True)
    assert data['mix'].mixed and 0.05 < float(data['mix'].lam.mean()) < 0.95
    return data


def _vit_attention(m, inputs):
    """Per block: (B, N, N) head-mean attention, recomputed from the captured block inputs."""
    seen = []
    hooks = [blk.attn.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach()))
             for blk in m.backbone.blocks]
    with torch.no_grad():
        m.backbone(inputs)
    for h in hooks:
        h.remove()
    maps = []
    for blk, x in zip(m.backbone.blocks, seen):
        a = blk.attn
        b, n, c = x.shape
        q, k, _ = a.qkv(x).reshape(b, n, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        maps.append(((q @ k.transpose(-2, -1)) * a.head_dim ** -0.5).softmax(-1).mean(1))
    return maps


def _targets(m, data):
    labels = torch.tensor([ds.gt_label.item() for ds in data['data_samples']])
    y_a = smooth_one_hot(labels, K, SMOOTH)
    return y_a, y_a[data['mix'].partner]


def _loss_with_target(m, data):
    with torch.no_grad():
        out = m(**data, mode='loss')
    return out, torch.stack([ds.gt_score for ds in data['data_samples']])


@pytest.mark.parametrize('blocks,residual', [('all', True), ('last', False), ('last', True), ([0, 2], False),
                                             ([-2], True)])
def test_tl_align_ablations_match_the_written_out_propagation(blocks, residual):
    m = _model(dict(type='TLAlign', blocks=blocks, residual=residual))
    data = _mixed(m)
    mix = data['mix']
    maps = _vit_attention(m, data['inputs'])
    chosen = {'all': [0, 1, 2], 'last': [2]}[blocks] if isinstance(blocks, str) else [i % 3 for i in blocks]
    y = mix.source_labels(1)
    for i, a in enumerate(maps):
        if i in chosen:
            y = (y + a @ y) / 2 if residual else a @ y
    y_a, y_b = _targets(m, data)
    want = y[:, 0, :1] * y_a + y[:, 0, 1:] * y_b
    out, got = _loss_with_target(m, data)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=0)
    # the rule changes the target: it is not the area target, nor the other ablations'
    area = mix.lam[:, None] * y_a + (1 - mix.lam[:, None]) * y_b
    assert (got - area).abs().max() > 1e-2
    assert torch.allclose(out['align/lam_aligned'], y[:, 0, 0].mean(), atol=2e-6)


def test_tl_align_ablations_differ_from_each_other():
    targets = {}
    for name, rule in {'all': dict(type='TLAlign'), 'last': dict(type='TLAlign', blocks='last'),
                       'nores': dict(type='TLAlign', residual=False),
                       'mean': dict(type='TLAlign', readout='mean')}.items():
        m = _model(rule)
        targets[name] = _loss_with_target(m, _mixed(m))[1]
    names = list(targets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert (targets[a] - targets[b]).abs().max() > 1e-3, (a, b)


def test_tl_align_mean_readout_is_the_patch_token_mean():
    m = _model(dict(type='TLAlign', readout='mean'))
    data = _mixed(m)
    y = data['mix'].source_labels(1)
    for a in _vit_attention(m, data['inputs']):
        y = (y + a @ y) / 2
    share = y[:, 1:].mean(1)
    y_a, y_b = _targets(m, data)
    torch.testing.assert_close(_loss_with_target(m, data)[1], share[:, :1] * y_a + share[:, 1:] * y_b,
                               atol=2e-6, rtol=0)


@pytest.mark.parametrize('area_weight', [0.5, 0.0])
def test_transmix_matches_the_reference_formula(area_weight):
    m = _model(dict(type='TransMix', area_weight=area_weight))
    data = _mixed(m)
    mix = data['mix']
    attn = _vit_attention(m, data['inputs'])[-1][:, 0, 1:]           # class token -> patches, head mean
    mask = mix.share_b                                               # the pasted tokens (partner's)
    lam0 = 1 - mix.lam                                               # the pasted area
    w1, w2 = ((1 - mask) * attn).sum(1), (mask * attn).sum(1)
    lam = area_weight * lam0 + (1 - area_weight) * w2 / (w1 + w2)
    y_a, y_b = _targets(m, data)
    want = y_a * (1 - lam)[:, None] + y_b * lam[:, None]
    out, got = _loss_with_target(m, data)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=0)
    area = mix.lam[:, None] * y_a + (1 - mix.lam[:, None]) * y_b
    assert (got - area).abs().max() > 1e-2 * (1 - area_weight)
    assert torch.allclose(out['align/lam_aligned'], (1 - lam).mean(), atol=2e-6)


def test_transmix_on_swin_reads_the_token_mean_of_the_last_window_attention():
    """Swin has no class token: lam1 is the mean over tokens of the partner's attention share in
    the last block, with the share pooled 2x2 by patch merging before the last stage."""
    m = _model(dict(type='TransMix'), arch='swin')
    data = m.data_preprocessor(_batch(), training=True)
    mix = data['mix']
    # a Mixup-like uniform share gives lam1 = lam0 exactly: check the reading on a real mask instead
    blk = m.backbone.layers[1].blocks[-1]
    seen = []
    hook = blk.attn.register_forward_hook(lambda mod, args, out: seen.append((args[0].detach(), args[1], args[2])))
    with torch.no_grad():
        m.backbone(data['inputs'])
    hook.remove()
    xw, window, mask_add = seen[0]                                    # (B*nW, n, C) windows, shift mask
    a = blk.attn
    bw, n, c = xw.shape
    q, k, _ = a.qkv(xw).reshape(bw, n, 3, a.num_heads, c // a.num_heads).permute(2, 0, 3, 1, 4)
    logits = (q @ k.transpose(-2, -1)) * a.scale + a.position_bias(window)
    if mask_add is not None:
        logits = logits.view(-1, mask_add.shape[0], a.num_heads, n, n) + mask_add[None, :, None]
        logits = logits.view(bw, a.num_heads, n, n)
    attn = logits.softmax(-1).mean(1)                                 # (B*nW, n, n)
    # the partner's share on the stage-1 grid (4 x 4): 2x2 mean of the 8 x 8 token shares
    s = mix.share_b.view(-1, 8, 8)
    s1 = torch.nn.functional.avg_pool2d(s[:, None], 2)[:, 0]         # (B, 4, 4)
    # stage 1 is one 4 x 4 window (window 4) and is not shifted (the map equals the window)
    s_win = s1.reshape(-1, 16)
    lam1 = (attn @ s_win[..., None])[..., 0].mean(-1)
    lam = 0.5 * (1 - mix.lam) + 0.5 * lam1
    y_a, y_b = _targets(m, data)
    _, got = _loss_with_target(m, data)
    torch.testing.assert_close(got, y_a * (1 - lam)[:, None] + y_b * lam[:, None], atol=2e-6, rtol=0)


def test_dense_tl_align_adds_the_token_loss_and_keeps_the_pooled_target():
    m = _model(dict(type='DenseTLAlign', dense_weight=0.7))
    ref = _model(dict(type='TLAlign'))
    m.backbone.load_state_dict(ref.backbone.state_dict())
    m.head.load_state_dict(ref.head.state_dict())
    data = _mixed(m)
    out, got = _loss_with_target(m, data)
    _, want_target = _loss_with_target(ref, data)
    torch.testing.assert_close(got, want_target, atol=1e-6, rtol=0)
    # reference: token labels by the written-out propagation, token features of the backbone
    y = data['mix'].source_labels(1)
    for a in _vit_attention(m, data['inputs']):
        y = (y + a @ y) / 2
    y_a, y_b = _targets(m, data)
    tok = y[:, 1:, :1] * y_a[:, None] + y[:, 1:, 1:] * y_b[:, None]          # (B, N, K)
    with torch.no_grad():
        feats = m.backbone(data['inputs'])[-1][:, 1:]                         # raw tokens, final norm
        logits = m.label_rule.token_head(feats)
    want = 0.7 * -(tok * logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(out['loss_dense'], want, atol=1e-6, rtol=1e-5)
    assert float(out['loss_dense']) > 0
    # inference is the plain TL-Align classifier's: the token head is not used
    with torch.no_grad():
        torch.testing.assert_close(m(data['inputs'], mode='tensor'), ref(data['inputs'], mode='tensor'))
        samples = m.predict(data['inputs'])
    assert samples[0].pred_score.shape == (K,)


def test_rules_that_need_labels_fail_at_build_on_a_plain_backbone(plain_backbone):
    for rule in ('TLAlign', 'TransMix', 'DenseTLAlign'):
        with pytest.raises(ValueError, match=f'label rule {rule}Rule needs a backbone that carries token labels'):
            MODELS.build(dict(type='TLAImageClassifier', backbone=dict(type=plain_backbone),
                              head=dict(type='TLALinearClsHead', num_classes=K), label_rule=dict(type=rule)))
    m = MODELS.build(dict(type='TLAImageClassifier', backbone=dict(type=plain_backbone),
                          head=dict(type='TLALinearClsHead', num_classes=K), label_rule=dict(type='Area')))
    assert not m.tl_align


def test_bad_rule_options_name_the_option():
    with pytest.raises(ValueError, match="readout 'cls' needs a backbone with a class token"):
        _model(dict(type='TLAlign', readout='cls'), arch='swin')
    with pytest.raises(ValueError, match='out of range for the 3 blocks'):
        _model(dict(type='TLAlign', blocks=[3]))
    with pytest.raises(ValueError, match="align blocks must be 'all', 'last'"):
        _model(dict(type='TLAlign', blocks='first'))
    with pytest.raises(ValueError, match='area_weight'):
        _model(dict(type='TransMix', area_weight=1.5))
    with pytest.raises(ValueError, match='dense_weight'):
        _model(dict(type='DenseTLAlign', dense_weight=-1))


def _teacher_files(tmp_path):
    """A tiny DeiT classifier config + checkpoint with non-uniform per-token class maps."""
    cfg = tmp_path / 'teacher.py'
    cfg.write_text(
        "model = dict(type='TLAImageClassifier', head=dict(type='TLALinearClsHead', num_classes=5),\n"
        "             backbone=dict(type='TLAVisionTransformer', arch=dict(embed_dims=24, num_layers=2, num_heads=2),\n"
        "                           img_size=32, patch_size=8, out_type='cls_token'))\n")
    torch.manual_seed(5)
    t = MODELS.build(dict(type='TLAImageClassifier', head=dict(type='TLALinearClsHead', num_classes=K),
                          backbone=dict(type='TLAVisionTransformer',
                                        arch=dict(embed_dims=24, num_layers=2, num_heads=2),
                                        img_size=32, patch_size=8, out_type='cls_token')))
    t.init_weights()
    torch.nn.init.normal_(t.head.fc.weight, std=1.0)
    ckpt = tmp_path / 'teacher.pth'
    torch.save({'state_dict': t.state_dict(), 'meta': {}}, ckpt)
    return str(cfg), str(ckpt), t


def _tokenmix_student(teacher, mask='block'):
    torch.manual_seed(0)
    m = MODELS.build(dict(
        type='TLAImageClassifier', head=dict(type='TLALinearClsHead', num_classes=K), label_smoothing=SMOOTH,
        backbone=dict(type='TLAVisionTransformer', arch=dict(embed_dims=32, num_layers=2, num_heads=2),
                      img_size=32, patch_size=8, out_type='cls_token'),
        label_rule=dict(type='TokenMix', teacher=teacher),
        data_preprocessor=dict(type='TLAClsDataPreprocessor', seed=1,
                               mixer=dict(cutmix_alpha=0.0, tokenmix_alpha=1.0, tokenmix_mask=mask,
                                          tokenmix_lam=0.5, tokenmix_min_tokens=2, patch_size=8))))
    m.init_weights()
    return m.eval()


def test_tokenmix_target_is_the_kept_share_of_the_teacher_cam(tmp_path):
    cfg, ckpt, t = _teacher_files(tmp_path)
    m = _tokenmix_student(dict(config=cfg, checkpoint=ckpt))
    assert 'teacher' not in dict(m.named_children()) and not any('teacher' in k for k in m.state_dict())
    data = m.data_preprocessor(_batch(), training=True)
    mix = data['mix']
    assert mix.mode == 'tokenmix' and abs(float(mix.lam[0]) - (1 - 10 / 16)) < 1e-6   # 8 + 2 of 16 cells
    # reference: the teacher's head on each final patch token, the class of each image, ReLU, sum 1
    t.eval()
    with torch.no_grad():
        t.backbone.out_type = 'raw'
        tok = t.backbone(mix.source_images)[-1][:, 1:]                      # (B, 16, C)
        logits = t.head.fc(tok)
    labels = torch.tensor([ds.gt_label.item() for ds in data['data_samples']])
    cam = logits[torch.arange(len(labels)), :, labels].clamp_min(0)
    cam = cam / cam.sum(1, keepdim=True)
    s = mix.share_b
    w_a = ((1 - s) * cam).sum(1)
    w_b = (s * cam[mix.partner]).sum(1)
    y_a, y_b = _targets(m, data)
    out, got = _loss_with_target(m, data)
    torch.testing.assert_close(got, w_a[:, None] * y_a + w_b[:, None] * y_b, atol=1e-6, rtol=0)
    area = mix.lam[:, None] * y_a + (1 - mix.lam[:, None]) * y_b
    assert (got - area).abs().max() > 1e-2
    assert torch.allclose(out['align/lam_aligned'], w_a.mean())


def test_tokenmix_with_a_timm_teacher(tmp_path):
    import timm
    torch.manual_seed(2)
    t = timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=K, img_size=32, patch_size=8)
    torch.nn.init.normal_(t.head.weight, std=1.0)
    torch.save(t.state_dict(), tmp_path / 'timm.pth')
    m = _tokenmix_student(dict(timm='vit_tiny_patch16_224', checkpoint=str(tmp_path / 'timm.pth'),
                               img_size=32, patch_size=8), mask='random')
    data = m.data_preprocessor(_batch(), training=True)
    mix = data['mix']
    t.eval()
    with torch.no_grad():
        logits = t.head(t.forward_features(mix.source_images)[:, 1:])
    labels = torch.tensor([ds.gt_label.item() for ds in data['data_samples']])
    cam = logits[torch.arange(len(labels)), :, labels].clamp_min(0)
    cam = cam / cam.sum(1, keepdim=True)
    w_a = ((1 - mix.share_b) * cam).sum(1)
    w_b = (mix.share_b * cam[mix.partner]).sum(1)
    y_a, y_b = _targets(m, data)
    torch.testing.assert_close(_loss_with_target(m, data)[1], w_a[:, None] * y_a + w_b[:, None] * y_b,
                               atol=1e-6, rtol=0)


def test_tokenmix_without_a_teacher_fails_at_build(tmp_path):
    with pytest.raises(ValueError, match='label rule TokenMix needs a teacher'):
        _tokenmix_student(None)
    with pytest.raises(ValueError, match='label rule TokenMix needs a teacher'):
        _tokenmix_student(dict(config='x.py'))
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        cfg, _, _ = _teacher_files(tmp_path)
        _tokenmix_student(dict(config=cfg, checkpoint=str(tmp_path / 'nope.pth')))


def test_block_mask_cells_cover_rectangles_of_the_count():
    import random as pyrandom

    from tlalign_mm.mixing import BatchMixer
    from tlalign_mm.mixing.mixers import block_mask_cells
    rng = pyrandom.Random(0)
    for count in (1, 20, 98 + 14, 196):
        grid = torch.tensor(block_mask_cells(14, 14, count, rng))
        assert set(grid.unique().tolist()) <= {0, 1} and 0 < grid.sum() <= count
        assert grid.sum() >= 0.8 * count                    # BEiT-style blocks reach (nearly) the count
    # blocks are contiguous: far fewer 0/1 edges than a scattered mask with as many cells
    grid = torch.tensor(block_mask_cells(14, 14, 98, pyrandom.Random(1))).float()
    edges = (grid[1:] != grid[:-1]).sum() + (grid[:, 1:] != grid[:, :-1]).sum()
    assert edges < 0.5 * 2 * 13 * 14 * 0.5
    mixer = BatchMixer(cutmix_alpha=0.0, tokenmix_alpha=1.0, tokenmix_mask='block', tokenmix_lam=0.5,
                       patch_size=4)
    res = mixer(torch.rand(4, 3, 56, 56), generator=pyrandom.Random(3))
    assert res.mode == 'tokenmix'
    torch.testing.assert_close(res.lam, 1 - res.share_b.mean(1))
    assert torch.equal(res.mask[0].view(14, 4, 14, 4).mean((1, 3)).flatten(), res.share_b[0])
    with pytest.raises(ValueError, match='tokenmix_mask'):
        BatchMixer(tokenmix_alpha=1.0, tokenmix_mask='grid')


# ---------------------------------------------------------------- every rule through tools/train.py
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = os.path.join(REPO, 'data', 'demo', 'fashion_mnist')
SHORT = ['train_cfg.max_epochs=1', 'train_dataloader.dataset.indices=96', 'val_dataloader.dataset.indices=64',
         'train_dataloader.batch_size=16', 'train_dataloader.num_workers=0', 'val_dataloader.num_workers=0',
         'train_dataloader.persistent_workers=False', 'val_dataloader.persistent_workers=False',
         'default_hooks.logger.interval=2']


def _train(config, work_dir, *options):
    import subprocess
    cmd = [sys.executable, os.path.join(REPO, 'tools', 'train.py'), config, '--work-dir', str(work_dir),
           '--cfg-options', *SHORT, *options]
    env = dict(os.environ, OMP_NUM_THREADS='2', PYTHONPATH=REPO)
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


@pytest.fixture(scope='module')
def demo_teacher(tmp_path_factory):
    """The demo TL-Align model trained 1 short epoch: TokenMix's teacher."""
    work = tmp_path_factory.mktemp('teacher')
    _train('configs/demo/deit-demo_tla_1xb64-10e_fashion-mnist.py', work)
    return str(work / 'epoch_1.pth')


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(FMNIST), reason='demo data missing: run tools/prepare_demo_data.py')
@pytest.mark.parametrize('rule', ['cutmix', 'tla', 'transmix', 'tla-dense', 'tla-last', 'tla-nores', 'tokenmix'])
def test_each_rule_trains_through_train_py(rule, tmp_path, request):
    """Each rule's demo config trains through tools/train.py on the real demo images: the rule's
    loss terms and statistics are logged, the checkpoint holds no teacher."""
    options = []
    if rule == 'tokenmix':
        options.append(f'model.label_rule.teacher.checkpoint={request.getfixturevalue("demo_teacher")}')
    log = _train(f'configs/demo/deit-demo_{rule}_1xb64-10e_fashion-mnist.py', tmp_path, *options)
    assert 'Epoch(train) [1][6/6]' in log and 'accuracy/top1' in log
    assert ('loss_dense' in log) == (rule == 'tla-dense')
    assert 'align/lam_aligned' in log
    from tlalign_mm.checkpoint import load_checkpoint_file
    sd = load_checkpoint_file(tmp_path / 'epoch_1.pth')['state_dict']
    assert not any('teacher' in k for k in sd)
    assert any(k.startswith('label_rule.token_head') for k in sd) == (rule == 'tla-dense')


def test_dense_tl_align_on_swin_reads_the_last_stage_tokens():
    """Swin has no class token: the dense loss covers the last stage's tokens, the pooled feature
    is their mean after the stage norm, as the avg_featmap output was."""
    m = _model(dict(type='DenseTLAlign'), arch='swin')
    ref = _model(dict(type='TLAlign'), arch='swin')
    m.backbone.load_state_dict(ref.backbone.state_dict())
    m.head.load_state_dict(ref.head.state_dict())
    data = m.data_preprocessor(_batch(), training=True)
    out, got = _loss_with_target(m, data)
    torch.testing.assert_close(got, _loss_with_target(ref, data)[1], atol=1e-6, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(m(data['inputs'], mode='tensor'), ref(data['inputs'], mode='tensor'))
    assert out['loss_dense'] > 0 and m.backbone.out_type == 'featmap'
