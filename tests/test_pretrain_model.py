"""The pretraining model: configs, targets, loss, predict, preprocessor, hooks."""
import glob
import os
import re

import pytest
import timm
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import tlalign_mm  # noqa: F401
from tlalign_mm.align import expand_source_labels, smooth_one_hot
from tlalign_mm.analysis import aligned_targets
from tlalign_mm.registry import MODELS
from tlalign_mm.structures import ClsDataSample

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN_CONFIGS = sorted(glob.glob(os.path.join(REPO, 'configs', 'pretrain', '*.py')))
TIMM_NAME = {'deit-tiny': 'deit_tiny_patch16_224', 'deit-small': 'deit_small_patch16_224',
             'deit-base': 'deit_base_patch16_224', 'swin-tiny': 'swin_tiny_patch4_window7_224',
             'swin-small': 'swin_small_patch4_window7_224', 'swin-base': 'swin_base_patch4_window7_224'}


# Every pretraining / demo classification config and what its built model must be: the model
# family (timm's parameter count), the label rule, where the target is read, which blocks align,
# the residual rule, and the mixer.  A config that is added without a row here fails
# test_every_config_has_a_row.
_ALL = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
_TOKEN_CUTMIX = dict(mode='token', cutmix_alpha=1.0, mixup_alpha=0.0, tokenmix_alpha=0.0)
_TOKENMIX = dict(cutmix_alpha=0.0, tokenmix_alpha=1.0, tokenmix_mask='block', tokenmix_lam=0.5)


def _row(rule, readout, blocks=None, residual=True, mixer=_TOKEN_CUTMIX, classes=1000, epochs=300):
    return dict(rule=rule, readout=readout, blocks=blocks, residual=residual, mixer=mixer, classes=classes,
                epochs=epochs)


CONFIG_TABLE = {}
for _arch in ('deit-tiny', 'deit-small', 'deit-base', 'swin-tiny', 'swin-small', 'swin-base'):
    _ro = 'cls' if _arch.startswith('deit') else 'mean'
    _n = 12 if _arch in ('deit-tiny', 'deit-small', 'deit-base', 'swin-tiny') else 24
    CONFIG_TABLE[f'pretrain/{_arch}_tla_8xb128-300e_in1k.py'] = _row('TLAlignRule', _ro, list(range(_n)))
    CONFIG_TABLE[f'pretrain/{_arch}_cutmix_8xb128-300e_in1k.py'] = _row('AreaRule', _ro, list(range(_n)))
for _arch in ('deit-small', 'swin-tiny'):
    _ro = 'cls' if _arch.startswith('deit') else 'mean'
    CONFIG_TABLE.update({
        f'pretrain/{_arch}_transmix_8xb128-300e_in1k.py': _row('TransMixRule', _ro, [11], residual=False),
        f'pretrain/{_arch}_tla-dense_8xb128-300e_in1k.py': _row('DenseTLAlignRule', _ro, _ALL),
        f'pretrain/{_arch}_tla-last_8xb128-300e_in1k.py': _row('TLAlignRule', _ro, [11]),
        f'pretrain/{_arch}_tla-nores_8xb128-300e_in1k.py': _row('TLAlignRule', _ro, _ALL, residual=False),
        f'pretrain/{_arch}_tokenmix_8xb128-300e_in1k.py': _row('TokenMixRule', _ro, _ALL, mixer=_TOKENMIX),
    })
# each rule in its own released recipe: pixel Mixup / CutMix (TransMix), Mixup / TokenMix (TokenMix)
_PIXEL_MIX = dict(mode='pixel', cutmix_alpha=1.0, mixup_alpha=0.8, switch_prob=0.5, tokenmix_alpha=0.0,
                  correct_lam=True)
_MIXUP_TOKENMIX = dict(_TOKENMIX, mixup_alpha=0.8, switch_prob=0.5)
CONFIG_TABLE.update({
    'pretrain/deit-small_transmix-official_8xb32-300e_in1k.py': _row('TransMixRule', 'cls', [11], residual=False,
                                                                     mixer=_PIXEL_MIX),
    'pretrain/swin-tiny_transmix-official_8xb128-300e_in1k.py': _row('TransMixRule', 'mean', [11], residual=False,
                                                                     mixer=dict(_PIXEL_MIX, token_grid_size=None)),
    'pretrain/deit-small_tokenmix-official_8xb128-300e_in1k.py': _row('TokenMixRule', 'cls', _ALL,
                                                                      mixer=_MIXUP_TOKENMIX),
})
# PVT: v2 against timm's pvt_v2_b*, v1 against the release's published parameter counts (13.2M,
# 24.5M, 44.2M; v1 reads the release's stage-4 class token, v2 the token mean)
PVT_PARAMS_M = {'pvt-tiny': 13.2, 'pvt-small': 24.5, 'pvt-medium': 44.2}
for _arch, _depth in (('pvt-tiny', 8), ('pvt-small', 16), ('pvt-medium', 28), ('pvt-v2-b0', 8), ('pvt-v2-b1', 8),
                      ('pvt-v2-b2', 16)):
    _ro = 'mean' if _arch.startswith('pvt-v2') else 'cls'
    CONFIG_TABLE[f'pretrain/{_arch}_tla_8xb128-300e_in1k.py'] = _row('TLAlignRule', _ro, list(range(_depth)))
    CONFIG_TABLE[f'pretrain/{_arch}_cutmix_8xb128-300e_in1k.py'] = _row('AreaRule', _ro, list(range(_depth)))
# PVT's own recipe (whai362/PVT main.py): pixel Mixup / CutMix, area target
for _arch, _ro, _depth in (('pvt-small', 'cls', 16), ('pvt-v2-b2', 'mean', 16)):
    CONFIG_TABLE[f'pretrain/{_arch}_cutmix-official_8xb128-300e_in1k.py'] = _row(
        'AreaRule', _ro, list(range(_depth)), mixer=dict(_PIXEL_MIX, token_grid_size=None))
_DEMO = dict(classes=10, epochs=10)
CONFIG_TABLE.update({
    'demo/deit-demo_tla_1xb64-10e_fashion-mnist.py': _row('TLAlignRule', 'cls', [0, 1, 2, 3], **_DEMO),
    'demo/deit-demo_cutmix_1xb64-10e_fashion-mnist.py': _row('AreaRule', 'cls', [0, 1, 2, 3], **_DEMO),
    'demo/deit-demo_transmix_1xb64-10e_fashion-mnist.py': _row('TransMixRule', 'cls', [3], residual=False, **_DEMO),
    'demo/deit-demo_tla-dense_1xb64-10e_fashion-mnist.py': _row('DenseTLAlignRule', 'cls', [0, 1, 2, 3], **_DEMO),
    'demo/deit-demo_tla-last_1xb64-10e_fashion-mnist.py': _row('TLAlignRule', 'cls', [3], **_DEMO),
    'demo/deit-demo_tla-nores_1xb64-10e_fashion-mnist.py': _row('TLAlignRule', 'cls', [0, 1, 2, 3], residual=False,
                                                                **_DEMO),
    'demo/deit-demo_tokenmix_1xb64-10e_fashion-mnist.py': _row('TokenMixRule', 'cls', [0, 1, 2, 3], mixer=_TOKENMIX,
                                                               **_DEMO),
    'demo/deit-demo_transmix-official_1xb64-10e_fashion-mnist.py': _row('TransMixRule', 'cls', [3], residual=False,
                                                                        mixer=_PIXEL_MIX, **_DEMO),
    'demo/deit-demo_tokenmix-official_1xb64-10e_fashion-mnist.py': _row('TokenMixRule', 'cls', [0, 1, 2, 3],
                                                                        mixer=_MIXUP_TOKENMIX, **_DEMO),
    'demo/swin-demo_tla_1xb64-10e_fashion-mnist.py': _row('TLAlignRule', 'mean', list(range(8)), **_DEMO),
})


def test_every_config_has_a_row():
    on_disk = {os.path.relpath(p, os.path.join(REPO, 'configs')) for p in
               PRETRAIN_CONFIGS + glob.glob(os.path.join(REPO, 'configs', 'demo', '*_fashion-mnist.py'))}
    assert on_disk == set(CONFIG_TABLE)


@pytest.mark.parametrize('name', sorted(CONFIG_TABLE))
def test_config_builds_the_model_of_its_row(name, tmp_path):
    want = CONFIG_TABLE[name]
    init_default_scope('tlalign_mm')
    cfg = Config.fromfile(os.path.join(REPO, 'configs', name))
    teacher = cfg.model.label_rule.get('teacher')
    if teacher is not None:   # TokenMix: a checkpoint of the teacher config, written here
        tcfg = Config.fromfile(os.path.join(REPO, teacher.config)).model
        torch.save({'state_dict': MODELS.build(tcfg).state_dict()}, tmp_path / 'teacher.pth')
        teacher.checkpoint = str(tmp_path / 'teacher.pth')
    model = MODELS.build(cfg.model)
    arch = os.path.basename(name).split('_')[0]
    params = {n: p.numel() for n, p in model.named_parameters() if not n.startswith('label_rule.')}
    if arch in TIMM_NAME or arch.startswith('pvt-v2'):
        ref = timm.create_model(TIMM_NAME.get(arch, arch.replace('-', '_')), pretrained=False, num_classes=1000)
        assert sum(params.values()) == sum(p.numel() for p in ref.parameters())
    elif arch in PVT_PARAMS_M:
        assert abs(sum(params.values()) / 1e6 - PVT_PARAMS_M[arch]) < 0.05
    assert type(model.label_rule).__name__ == want['rule']
    assert model.num_classes == want['classes'] and cfg.train_cfg.max_epochs == want['epochs']
    assert model.label_rule.readout == want['readout']
    blocks = model.backbone.label_blocks()
    assert [i for i, b in enumerate(blocks) if b.align_labels] == (want['blocks'] if want['blocks'] != _ALL
                                                                   else list(range(len(blocks))))
    assert all(b.label_residual == want['residual'] for b in blocks)
    mixer = model.data_preprocessor.mixer
    assert mixer.patch_size == model.backbone.patch_size
    for key, value in want['mixer'].items():
        assert getattr(mixer, 'cutmix_mode' if key == 'mode' else key) == value, key
    assert cfg.model.label_smoothing == 0.1
    if name.startswith('pretrain/'):
        assert cfg.optim_wrapper.type == 'AmpOptimWrapper'   # fp32 fallback without CUDA in tools/train.py
        assert cfg.model.backbone.label_dtype == 'auto'
    if 'pvt-medium' in name:     # configs/pvt/pvt_medium.py: clip_grad=1.0
        assert cfg.optim_wrapper.clip_grad.max_norm == 1.0
    if '-official' in name and 'pvt' not in name:      # the release's loss, sampler, erasing, EMA, rule options
        _check_official_recipe(name, cfg, model)
    if want['rule'] == 'DenseTLAlignRule':
        assert model.label_rule.token_head.out_features == want['classes']


def _check_official_recipe(name, cfg, model):
    """The values each official-recipe config takes from its release (Beckschen/TransMix
    configs/deit_s_transmix.yaml + train.py defaults; Sense-X/TokenMix exp/deit_small/run.sh +
    main.py defaults; Swin's config.py for the Swin-T TransMix counterpart)."""
    assert cfg.train_dataloader.sampler.type == 'DefaultSampler'        # no repeated augmentation
    rule = model.label_rule
    hooks = {h['type']: h for h in cfg.custom_hooks}
    on_imagenet = name.startswith('pretrain/')
    if 'transmix' in name:
        assert rule.token_mask == 'nearest' and rule.area_weight == 0.5
        assert type(model.head.loss_module).__name__ == 'SoftTargetCrossEntropy'
    if 'deit-small_transmix' in name or 'deit-demo_transmix' in name:
        assert cfg.model.data_preprocessor.random_erasing is None      # reprob default 0.
        assert cfg.train_dataloader.dataset.pipeline[0].interpolation == 'random'
        assert cfg.optim_wrapper.optimizer.weight_decay == 0.03
    if name == 'pretrain/deit-small_transmix-official_8xb32-300e_in1k.py':
        assert cfg.train_dataloader.batch_size * 8 == 256 and cfg.optim_wrapper.optimizer.lr == 1e-3
        assert cfg.param_scheduler[0].end == 20 and cfg.param_scheduler[1].eta_min == 1e-5
    if name.startswith('pretrain/swin'):
        assert cfg.model.data_preprocessor.random_erasing.re_prob == 0.25
    if 'tokenmix' in name:
        assert (rule.smoothing, rule.cam_topk, rule.cam_activation, rule.resize) == ('tokenmix', 5, None, 'roi_align')
        assert type(model.head.loss_module).__name__ == 'BinaryCrossEntropy'
        assert cfg.model.data_preprocessor.random_erasing.re_prob == 0.25
    if on_imagenet and not name.startswith('pretrain/swin'):
        assert hooks['EMAHook']['momentum'] == pytest.approx(1 - 0.99996)
    else:
        assert 'EMAHook' not in hooks


def _tiny_cfg(tl_align=True, label_channels='source', arch='vit'):
    if arch == 'vit':
        bb = dict(type='TLAVisionTransformer', arch=dict(embed_dims=32, num_layers=2, num_heads=2),
                  img_size=32, patch_size=8, out_type='cls_token')
        patch = 8
    else:
        bb = dict(type='TLASwinTransformer', arch=dict(embed_dims=16, depths=(2, 2), num_heads=(1, 2)),
                  window_size=4, out_indices=(1,), out_type='avg_featmap')
        patch = 4
    return dict(type='TLAImageClassifier', backbone=bb, head=dict(type='TLALinearClsHead', num_classes=5),
                label_rule=dict(type='TLAlign', label_channels=label_channels) if tl_align else dict(type='Area'),
                data_preprocessor=dict(type='TLAClsDataPreprocessor', seed=0,
                                       mixer=dict(cutmix_alpha=1.0, patch_size=patch)))


def _tiny(tl_align=True, label_channels='source', arch='vit', seed=0):
    torch.manual_seed(seed)
    m = MODELS.build(_tiny_cfg(tl_align, label_channels, arch))
    m.init_weights()
    return m


def _batch(b=4, size=32):
    g = torch.Generator().manual_seed(3)
    imgs = torch.randint(0, 256, (b, 3, size, size), generator=g, dtype=torch.uint8)
    samples = [ClsDataSample().set_gt_label(i % 5) for i in range(b)]
    return dict(inputs=imgs, data_samples=samples)


@pytest.mark.parametrize('arch', ['vit', 'swin'])
def test_aligned_target_k2_equals_k_classes_and_differs_from_area(arch):
    a = _tiny(label_channels='source', arch=arch)
    b = _tiny(label_channels='classes', arch=arch)
    b.load_state_dict(a.state_dict())
    a.eval()
    b.eval()
    data = a.data_preprocessor(_batch(), training=True)
    labels = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        fa, area_a, al_a, _ = aligned_targets(a, data['inputs'], labels, data['mix'])
        fb, area_b, al_b, _ = aligned_targets(b, data['inputs'], labels, data['mix'])
    assert (al_a - al_b).abs().max() <= 1e-5
    assert torch.allclose(area_a, area_b)
    # the area target written out: smoothing 0.1 over K = 5 puts 0.9 + 0.02 on the class and 0.02 elsewhere
    lam, partner = data['mix'].lam[:, None], data['mix'].partner
    one_hot = torch.eye(5)[labels]
    y = 0.9 * one_hot + 0.02
    torch.testing.assert_close(area_a, lam * y + (1 - lam) * y[partner], atol=1e-6, rtol=0)
    assert (al_a - area_a).abs().max() > 1e-4
    assert torch.allclose(al_a.sum(-1), torch.ones(4), atol=1e-5)


def test_loss_uses_aligned_target_only_with_tl_align():
    tla = _tiny(tl_align=True)
    base = _tiny(tl_align=False)
    torch.nn.init.normal_(tla.head.fc.weight, std=1.0)   # non-uniform logits, so targets matter
    base.load_state_dict(tla.state_dict())
    for m in (tla, base):
        m.eval()
    data = tla.data_preprocessor(_batch(), training=True)
    labels = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        feat, area, aligned, _ = aligned_targets(tla, data['inputs'], labels, data['mix'])
        logits = tla.head(feat)
        want_tla = torch.sum(-aligned * torch.log_softmax(logits, -1), -1).mean()
        want_base = torch.sum(-area * torch.log_softmax(logits, -1), -1).mean()
        out_tla = tla(**data, mode='loss')
        out_base = base(**data, mode='loss')
        out_base2 = base(**data, mode='loss')
    got_tla, got_base = out_tla['loss'], out_base['loss']
    assert torch.allclose(got_tla, want_tla, atol=1e-6)
    assert torch.allclose(got_base, want_base, atol=1e-6)
    assert torch.allclose(out_base2['loss'], want_base, atol=1e-6)
    assert not torch.allclose(got_tla, got_base)
    # statistics: tensors from the batch, written out here from the targets
    lam = data['mix'].lam
    want_l2 = (aligned - area).square().sum(-1).sqrt().mean()
    for out in (out_tla, out_base):   # the baseline carries labels on its first (monitored) step
        assert torch.allclose(out['align/target_l2'], want_l2, atol=1e-6) and float(want_l2) > 0
        assert torch.allclose(out['align/lam'], lam.mean())
        # labels 0..3 against partners 3..0 all differ: y_al[label] = lam_al * 0.92 + (1 - lam_al) * 0.02
        lam_al = (aligned[torch.arange(4), labels] - 0.02) / 0.9
        assert torch.allclose(out['align/lam_aligned'], lam_al.mean(), atol=1e-5)
        assert torch.allclose(out['align/lam_gap'], (lam_al - lam).abs().mean(), atol=1e-5)
        assert not any(v.requires_grad for v in out.values() if v is not out['loss'])
    assert set(out_base2) == {'loss'}     # ... and not on the next one (align_stats_interval=100)


def test_preprocessor_normalises_and_mixes_on_training_only():
    m = _tiny()
    batch = _batch()
    out = m.data_preprocessor(batch, training=False)
    want = (batch['inputs'].float() - m.data_preprocessor.mean) / m.data_preprocessor.std
    assert torch.allclose(out['inputs'], want) and out['mix'] is None
    out = m.data_preprocessor(batch, training=True)
    assert out['mix'] is not None and out['mix'].share_b.shape == (4, 16)


def test_predict_and_tensor_modes():
    m = _tiny().eval()
    data = m.data_preprocessor(_batch(), training=False)
    with torch.no_grad():
        logits = m(data['inputs'], mode='tensor')
        preds = m(**data, mode='predict')
    assert logits.shape == (4, 5)
    assert torch.allclose(preds[0].pred_score, logits[0].softmax(-1))
    assert int(preds[1].pred_label) == int(logits[1].argmax())


def test_mixer_patch_size_comes_from_the_backbone():
    """The mixer cuts on the backbone's token grid: left out, its patch_size is the backbone's; a
    different one fails when the model is built, naming both."""
    torch.manual_seed(0)
    cfg = dict(
        type='TLAImageClassifier', head=dict(type='TLALinearClsHead', num_classes=5),
        backbone=dict(type='TLAVisionTransformer', arch=dict(embed_dims=32, num_layers=1, num_heads=2),
                      img_size=32, patch_size=8, out_type='cls_token'),
        data_preprocessor=dict(type='TLAClsDataPreprocessor', mixer=dict(cutmix_alpha=1.0)))
    m = MODELS.build(cfg)
    assert m.data_preprocessor.mixer.patch_size == 8
    data = m.data_preprocessor(_batch(), training=True)
    assert data['mix'].share_b.shape == (4, 16) and torch.isfinite(m(**data, mode='loss')['loss'])
    cfg['data_preprocessor']['mixer']['patch_size'] = 16
    with pytest.raises(ValueError, match=r"mixer.patch_size=16 but the backbone's patch_size is 8"):
        MODELS.build(cfg)
    with pytest.raises(ValueError, match='label_channels'):
        MODELS.build(dict(type='TLAImageClassifier', backbone=dict(type='TLAVisionTransformer', arch='deit-tiny',
                                                                   out_type='cls_token'),
                          label_rule=dict(type='TLAlign', label_channels='k')))


def test_expand_matches_manual_two_source_formula():
    src = torch.tensor([[0.7, 0.3], [0.2, 0.8]])
    y_a = smooth_one_hot(torch.tensor([0, 1]), 3, 0.0)
    y_b = smooth_one_hot(torch.tensor([2, 0]), 3, 0.0)
    assert torch.allclose(expand_source_labels(src, y_a, y_b),
                          torch.tensor([[0.7, 0.0, 0.3], [0.8, 0.2, 0.0]]))


def test_seeded_mixing_continues_after_resume():
    """The mixer's step counter is model state: a resumed preprocessor continues the sequence."""
    m = _tiny()
    batch = _batch()
    run = [m.data_preprocessor(batch, training=True)['mix'] for _ in range(3)]
    assert not torch.equal(run[0].share_b, run[1].share_b)
    resumed = _tiny()
    state = {k: v for k, v in m.state_dict().items()}
    state['data_preprocessor.mix_step'] = torch.tensor(2)
    resumed.load_state_dict(state)
    again = resumed.data_preprocessor(batch, training=True)['mix']
    assert torch.equal(again.share_b, run[2].share_b) and torch.equal(again.lam, run[2].lam)


def test_tl_align_on_a_backbone_that_cannot_carry_labels_fails_at_build(plain_backbone):
    with pytest.raises(ValueError, match='carries token labels'):
        MODELS.build(dict(type='TLAImageClassifier', backbone=dict(type=plain_backbone),
                          head=dict(type='TLALinearClsHead', num_classes=5)))
    m = MODELS.build(dict(type='TLAImageClassifier', backbone=dict(type=plain_backbone),
                          head=dict(type='TLALinearClsHead', num_classes=5),
                          label_rule=dict(type='Area')))
    assert m.head.fc.in_features == 8
    imgs = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    data = m.data_preprocessor(dict(inputs=imgs, data_samples=[ClsDataSample().set_gt_label(i) for i in range(4)]),
                               training=True)
    out = m(**data, mode='loss')     # a monitored step: a plain backbone just reports no statistics
    assert torch.isfinite(out['loss']) and set(out) == {'loss'}


def test_nonfinite_loss_hook_names_iteration_terms_and_checkpoint(tmp_path):
    from types import SimpleNamespace

    from mmengine.logging import MessageHub

    from tlalign_mm.engine import NonFiniteLossHook
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_3.pth'))
    hub = MessageHub(f'nonfinite_{tmp_path.name}')
    runner = SimpleNamespace(work_dir=str(tmp_path), iter=41, epoch=3, message_hub=hub)
    hook = NonFiniteLossHook()
    hook.after_train_iter(runner, 0, outputs=dict(loss=torch.tensor(2.5)))   # finite: nothing
    with pytest.raises(FloatingPointError, match=r'iteration 42 \(epoch 4\).*loss=nan.*epoch_3\.pth'):
        hook.after_train_iter(runner, 0, outputs=dict(loss=torch.tensor(float('nan'))))
    # with the loss logged (mmengine's RuntimeInfoHook runs first), the logged host number is what it reads
    hub.update_scalar('train/loss', 2.5)
    hook.after_train_iter(runner, 0, outputs=dict(loss=torch.tensor(float('nan'))))
    hub.update_scalar('train/loss', float('inf'))
    with pytest.raises(FloatingPointError, match='non-finite loss at iteration 42'):
        hook.after_train_iter(runner, 0, outputs=dict(loss=torch.tensor(1.0)))


def test_swin_classifier_reads_the_last_returned_stage():
    """out_indices=(1,) of a 3-stage Swin: the head takes stage 1's width, the aligned target is
    the mean of stage 1's token labels, and stage 2 is not run."""
    torch.manual_seed(0)
    m = MODELS.build(dict(
        type='TLAImageClassifier', head=dict(type='TLALinearClsHead', num_classes=5),
        backbone=dict(type='TLASwinTransformer', arch=dict(embed_dims=16, depths=(2, 2, 2), num_heads=(1, 2, 4)),
                      window_size=4, out_indices=(1,), out_type='avg_featmap'),
        data_preprocessor=dict(type='TLAClsDataPreprocessor', seed=0, mixer=dict(patch_size=4, token_grid_size=8))))
    m.init_weights()
    assert m.head.fc.in_features == m.backbone.num_features == m.backbone.stage_channels[1] == 32
    data = m.data_preprocessor(_batch(), training=True)
    (feat,), lab = m.backbone(data['inputs'], data['mix'].source_labels(0))
    assert feat.shape == (4, 32) and lab.shape == (4, 4 * 4, 2)    # 32 px / 4 / 2: stage 1 is 4 x 4
    out = m(**data, mode='loss')
    assert torch.isfinite(out['loss'])
    out['loss'].backward()
    assert all(p.grad is None for p in m.backbone.layers[2].parameters())


@pytest.mark.parametrize('name', ['deit-small', 'swin-tiny'])
def test_pretrain_weight_decay_groups(name):
    """The recipes' no-decay parameters (mmengine reads them from paramwise_cfg, not from the
    model): norms, biases, position embedding, class token, relative position bias tables."""
    from mmengine.optim import build_optim_wrapper
    init_default_scope('tlalign_mm')
    cfg = Config.fromfile(os.path.join(REPO, 'configs', 'pretrain', f'{name}_tla_8xb128-300e_in1k.py'))
    cfg.optim_wrapper.type = 'OptimWrapper'
    cfg.optim_wrapper.pop('loss_scale')
    model = MODELS.build(cfg.model)
    ow = build_optim_wrapper(model, cfg.optim_wrapper)
    name_of = {id(p): n for n, p in model.named_parameters()}
    decay = {name_of[id(p)]: g['weight_decay'] for g in ow.optimizer.param_groups for p in g['params']}
    assert len(decay) == len(name_of)
    zero = ('norm', 'bias', 'pos_embed', 'cls_token', 'relative_position_bias_table')
    for n, wd in decay.items():
        assert wd == (0.0 if any(z in n for z in zero) else 0.05), (n, wd)


def test_classifier_pretrained_is_strict(tmp_path):
    """init_cfg=Pretrained on the classifier: a checkpoint of the same model loads whole; one of
    another shape, or with foreign keys, raises and names them (never a silent partial load);
    an official-layout DeiT checkpoint loads the backbone and, when it fits, the head."""
    src = _tiny()
    torch.nn.init.normal_(src.head.fc.weight)
    path = tmp_path / 'cls.pth'
    torch.save({'state_dict': src.state_dict(), 'meta': {}}, path)
    m = MODELS.build(dict(_tiny_cfg(), init_cfg=dict(type='Pretrained', checkpoint=str(path))))
    m.init_weights()
    for k, v in src.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    sd = dict(src.state_dict())
    sd['backbone.extra.weight'] = torch.zeros(1)
    del sd['head.fc.bias']
    torch.save({'state_dict': sd}, tmp_path / 'bad.pth')
    bad = MODELS.build(dict(_tiny_cfg(), init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'bad.pth'))))
    with pytest.raises(ValueError, match=r"missing \['head.fc.bias'\].*unexpected \['backbone.extra.weight'\]"):
        bad.init_weights()
    # official layout ({'model': timm keys}): backbone by its loader, the head when its shape fits
    official = {'model': {**{k: v for k, v in src.backbone.state_dict().items()},
                          'head.weight': src.head.fc.weight.detach().clone(),
                          'head.bias': src.head.fc.bias.detach().clone()}}
    torch.save(official, tmp_path / 'official.pth')
    m2 = MODELS.build(dict(_tiny_cfg(), init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'official.pth'))))
    m2.init_weights()
    assert torch.equal(m2.head.fc.weight, src.head.fc.weight) and torch.equal(
        m2.backbone.cls_token, src.backbone.cls_token)
    # an official-layout file that holds little of the backbone: the backbone loader's refusal names the file
    little = {'model': {k: v for k, v in official['model'].items() if not re.match(r'blocks\.[1-9]', k)}}
    torch.save(little, tmp_path / 'little.pth')
    m3 = MODELS.build(dict(_tiny_cfg(), init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'little.pth'))))
    with pytest.raises(RuntimeError, match=re.escape(f"{tmp_path / 'little.pth'}: checkpoint layout 'timm-vit'")):
        m3.init_weights()


def test_head_owns_logits_loss_and_predict_with_gt_score():
    """The classifier stores each sample's target as gt_score; the head's loss is the soft-target
    cross-entropy of its logits against them, written out here; predict is the softmax/argmax."""
    from tlalign_mm.models.heads import stack_gt_scores
    tla = _tiny(tl_align=True)
    torch.nn.init.normal_(tla.head.fc.weight, std=1.0)
    data = tla.data_preprocessor(_batch(), training=True)
    with torch.no_grad():
        out = tla(**data, mode='loss')
        feat, _, aligned, _ = aligned_targets(tla, data['inputs'], torch.tensor([0, 1, 2, 3]), data['mix'])
    scores = torch.stack([ds.gt_score for ds in data['data_samples']])
    torch.testing.assert_close(scores, aligned)
    logits = feat @ tla.head.fc.weight.T + tla.head.fc.bias
    want = -(aligned * torch.log_softmax(logits, -1)).sum(-1).mean()
    torch.testing.assert_close(out['loss'], want)
    # predictions
    samples = tla(data['inputs'], [ClsDataSample().set_gt_label(0) for _ in range(4)], mode='predict')
    torch.testing.assert_close(torch.stack([s.pred_score for s in samples]), logits.softmax(-1))
    assert [int(s.pred_label) for s in samples] == logits.argmax(-1).tolist()
    # without gt_score the head falls back to the one-hot label; a mixed batch is refused
    plain = [ClsDataSample().set_gt_label(i) for i in (3, 1)]
    torch.testing.assert_close(stack_gt_scores(plain, 5), torch.eye(5)[[3, 1]])
    plain[0].set_field(torch.ones(5) / 5, 'gt_score')
    with pytest.raises(ValueError, match='every data sample carries gt_score or none'):
        stack_gt_scores(plain, 5)
    with pytest.raises(ValueError, match='in_channels=7 but the backbone'):
        MODELS.build(dict(_tiny_cfg(), head=dict(type='TLALinearClsHead', num_classes=5, in_channels=7)))


def test_head_width_is_the_pooled_features():
    """The head's in_channels is the pooled feature's width, the backbone's declared num_features:
    embed_dims for a ViT, the last returned stage's channels for Swin (16 -> 32 after one patch
    merging) and PVT; a head given another width is refused with both numbers named."""
    from tlalign_mm.models.heads import fit_head_to
    vit = _tiny(arch='vit')
    swin = _tiny(arch='swin')
    assert vit.head.fc.in_features == 32 and swin.head.fc.in_features == 32
    assert fit_head_to(dict(type='TLALinearClsHead', num_classes=5), swin.backbone)['in_channels'] == 32
    swin.backbone.out_indices = (0,)                                      # the first stage: 16 channels
    assert fit_head_to(dict(num_classes=5), swin.backbone)['in_channels'] == 16
    pvt = MODELS.build(dict(type='TLAPyramidVisionTransformer', arch='v2-b0', out_indices=(2,)))
    assert fit_head_to(dict(num_classes=5, in_channels=None), pvt)['in_channels'] == 160
    given = dict(num_classes=5, in_channels=32)
    assert fit_head_to(given, vit.backbone) == given and fit_head_to(given, vit.backbone) is not given
    cfg = _tiny_cfg(arch='vit')
    cfg['head'] = dict(type='TLALinearClsHead', num_classes=5, in_channels=48)
    with pytest.raises(ValueError, match=r"head.in_channels=48 but the backbone's pooled feature has 32 channels"):
        MODELS.build(cfg)
