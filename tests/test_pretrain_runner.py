"""Pretraining through mmengine's Runner on real images (Fashion-MNIST, Debian package).

The same path users take: a config dict -> ``Runner.from_cfg`` -> ``train()``, with our
dataset, transforms, data preprocessor (erasing + token CutMix), classifier, hooks and
metric; then the exported backbone goes through the checkpoint loader.
"""
import os
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

import tlalign_mm  # noqa: F401
from tlalign_mm.checkpoint import load_backbone_checkpoint
from tlalign_mm.registry import MODELS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = '/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz'

pytestmark = pytest.mark.skipif(not os.path.exists(FMNIST),
                                reason='needs the Debian package dataset-fashion-mnist (apt-get install '
                                       'dataset-fashion-mnist); .ci/run installs it')


@pytest.fixture(scope='module')
def fmnist_root(tmp_path_factory):
    out = tmp_path_factory.mktemp('demo')
    subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'prepare_demo_data.py'), '--only', 'cls',
                    '--out', str(out), '--cls-train-per-class', '2', '--cls-val-per-class', '2'],
                   check=True, capture_output=True, text=True)
    return str(out / 'fashion_mnist')


def _cfg(root, work_dir, tl_align, max_iters=30):
    """A tiny ViT on a repeated batch of 8 real images (the first 8 of 20 training images)."""
    pipeline = [dict(type='TimmClassificationTransform', input_size=32, is_training=False, crop_pct=1.0),
                dict(type='PackClsInputs')]
    return Config(dict(
        default_scope='tlalign_mm',
        work_dir=work_dir,
        model=dict(
            type='TLAImageClassifier', head=dict(type='TLALinearClsHead', num_classes=10),
            label_rule=dict(type='TLAlign' if tl_align else 'Area'), align_stats_interval=5,
            backbone=dict(type='TLAVisionTransformer', arch=dict(embed_dims=64, num_layers=2, num_heads=2),
                          img_size=32, patch_size=8, out_type='cls_token'),
            data_preprocessor=dict(type='TLAClsDataPreprocessor', seed=0,
                                   mixer=dict(cutmix_alpha=1.0, patch_size=8),
                                   random_erasing=dict(re_prob=0.25))),
        train_dataloader=dict(
            batch_size=8, num_workers=0,
            sampler=dict(type='InfiniteSampler', shuffle=False),
            collate_fn=dict(type='default_collate'),
            dataset=dict(type='ImageFolderDataset', data_root=root, split='train', pipeline=pipeline,
                         indices=8)),
        val_dataloader=dict(
            batch_size=8, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='default_collate'),
            dataset=dict(type='ImageFolderDataset', data_root=root, split='val', pipeline=pipeline)),
        val_evaluator=dict(type='Accuracy', topk=(1, 5)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters, val_interval=max_iters),
        val_cfg=dict(),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.0)),
        default_hooks=dict(logger=dict(type='LoggerHook', interval=1),
                           checkpoint=dict(type='CheckpointHook', interval=max_iters)),
        custom_hooks=[dict(type='BackboneExportHook', filename='backbone.pth')],
        log_processor=dict(by_epoch=False, window_size=1),
        randomness=dict(seed=0, deterministic=True),
        env_cfg=dict(dist_cfg=dict(backend='gloo')),
    ))


def _losses(runner):
    hist = runner.message_hub.get_scalar('train/loss')
    return [float(v) for v in hist.data[0]]


@pytest.mark.slow
@pytest.mark.parametrize('tl_align', [True, False], ids=['tl-align', 'cutmix-baseline'])
def test_runner_trains_on_real_images_and_exports_backbone(fmnist_root, tmp_path, tl_align):
    runner = Runner.from_cfg(_cfg(fmnist_root, str(tmp_path), tl_align))
    runner.train()
    losses = _losses(runner)
    assert len(losses) == 30 and all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.1, (first, last)
    # the token fluctuation was logged: every step with TL-Align, every 5th step for the
    # baseline (labels carried on those steps only)
    l2 = runner.message_hub.get_scalar('train/align/target_l2')
    # (0 on a step whose pairs share their classes: y_A = y_B)
    assert len(l2.data[0]) == (30 if tl_align else 6) and (l2.data[0] > 0).mean() > 0.5
    gap = runner.message_hub.get_scalar('train/align/lam_gap')
    assert len(gap.data[0]) == len(l2.data[0]) and (gap.data[0] > 0).mean() > 0.5
    acc = runner.message_hub.get_scalar('val/accuracy/top1').current()
    assert 0 <= acc <= 100
    # the exported backbone loads, fully matched, into a fresh backbone and equals the trained one
    export = tmp_path / 'backbone.pth'
    assert export.exists()
    fresh = MODELS.build(dict(type='TLAVisionTransformer', arch=dict(embed_dims=64, num_layers=2, num_heads=2),
                              img_size=32, patch_size=8, out_type='cls_token'))
    report = load_backbone_checkpoint(fresh, str(export))
    assert not report.missing
    trained = runner.model.backbone.state_dict()
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, trained[k]), k


@pytest.mark.slow
def test_backbone_export_beside_every_checkpoint(fmnist_root, tmp_path):
    """at_checkpoint=True: a backbone export follows each checkpoint the CheckpointHook writes."""
    cfg = _cfg(fmnist_root, str(tmp_path), True, max_iters=4)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=2, by_epoch=False)
    cfg.custom_hooks = [dict(type='BackboneExportHook', filename='backbone.pth', at_checkpoint=True)]
    runner = Runner.from_cfg(cfg)
    runner.train()
    for it in (2, 4):
        assert (tmp_path / f'iter_{it}.pth').exists()
        export = torch.load(tmp_path / f'iter_{it}_backbone.pth', weights_only=True)
        assert export['meta']['iter'] == it
        # the backbone's declared contract: a 2-block ViT, 64 channels, patch 8, one class token
        assert export['meta']['backbone_type'] == 'TLAVisionTransformer'
        assert (export['meta']['patch_size'], export['meta']['num_prefix_tokens']) == (8, 1)
        assert export['meta']['feature_info'] == [{'num_chs': 64, 'reduction': 8, 'module': 'blocks.1'}]
        ckpt = torch.load(tmp_path / f'iter_{it}.pth', weights_only=False)
        for k, v in export['state_dict'].items():
            assert torch.equal(v, ckpt['state_dict']['backbone.' + k]), k
    assert not (tmp_path / 'iter_1_backbone.pth').exists() and (tmp_path / 'backbone.pth').exists()
