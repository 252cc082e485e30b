"""Downstream configs (UperNet / ADE20K, Cascade Mask R-CNN / COCO) and their backbone loading.

Fast, no mmseg / mmdet needed:

* every config under ``configs/upernet`` and ``configs/cascade_mask_rcnn`` parses
  (``Config.fromfile``) and carries the recipe of ``docs/advanced_guides/recipes.md`` (160k AdamW 6e-5 with warm-up +
  poly; 3x AdamW 1e-4 with AMP, steps 27/33; heads; drop path; sibling configs differing only in
  the checkpoint);
* :func:`check_downstream_config` (``tools/config_checks.py``) accepts them and names the
  field of a crop not divisible by the backbone stride, or of a ``num_classes`` that does not
  match the dataset; the CPU fallbacks (SyncBN -> BN, AMP -> fp32).

``mm`` (skipped cleanly when mmseg / mmdet / mmcv ops do not import): each family is built once
per module (UperNet + DeiT-S/MLN, UperNet + Swin-T, Cascade Mask R-CNN + Swin-T) under its own
default scope, with no pretrained weights, SyncBN reverted to BN, and runs one forward + backward
on two real demo images (``data/demo``; ``tools/prepare_demo_data.py --only seg,coco``) through the
config's own data pipeline at a reduced size (256 px) and the data preprocessor; parameter counts
match the published ones; pretrained loading through ``init_cfg`` is exact for our exported
backbone (from a pretraining-stage checkpoint), an official-layout DeiT and an official-layout Swin
checkpoint; a missing file and a detector checkpoint of the wrong backbone fail clearly.
"""
from __future__ import annotations

import copy
import glob
import importlib
import os.path as osp
import random
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip('mmengine')
from mmengine.config import Config  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

from config_checks import (  # noqa: E402
    DownstreamConfigError,
    amp_to_fp32_without_cuda,
    backbone_stride,
    check_downstream_config,
    sync_bn_to_bn,
)

SEG_DIR = osp.join(REPO, 'configs', 'upernet')
DET_DIR = osp.join(REPO, 'configs', 'cascade_mask_rcnn')
SEG_CONFIGS = sorted(glob.glob(osp.join(SEG_DIR, '*.py')))
DET_CONFIGS = sorted(glob.glob(osp.join(DET_DIR, '*.py')))

SWIN_T_SEG = osp.join(SEG_DIR, 'upernet_swin-t_in1k-tla-pre_8xb2-160k_ade20k-512x512.py')
DEIT_S_SEG = osp.join(SEG_DIR, 'upernet_deit-s_in1k-tla-pre_mln_8xb2-160k_ade20k-512x512.py')
SWIN_T_DET = osp.join(DET_DIR, 'cascade-mask-rcnn_swin-t_in1k-tla-pre_fpn_ms-crop-3x_8xb2_coco.py')

VOC_SEG = osp.join(REPO, 'data', 'demo', 'voc_seg')
COCO_VOC = osp.join(REPO, 'data', 'demo', 'coco_voc')

# Published parameter counts (millions): Swin paper / official Swin detection and segmentation
# repos (UperNet Swin-T/S/B 60/81/121; Cascade Mask R-CNN Swin-T/S/B 86/107/145). The paper's
# "DeiT-S + UperNet 52M" is DeiT-S with deconvolution layers, not the MultiLevelNeck model here;
# that one is compared with mmseg's own config instead (test_parameter_counts_equal_mm_models).
PUBLISHED_PARAMS_M = {
    'upernet_swin-t_in1k-tla-pre_8xb2-160k_ade20k-512x512.py': 60,
    'upernet_swin-s_in1k-tla-pre_8xb2-160k_ade20k-512x512.py': 81,
    'upernet_swin-b_in1k-tla-pre_8xb2-160k_ade20k-512x512.py': 121,
    'cascade-mask-rcnn_swin-t_in1k-tla-pre_fpn_ms-crop-3x_8xb2_coco.py': 86,
    'cascade-mask-rcnn_swin-s_in1k-tla-pre_fpn_ms-crop-3x_8xb2_coco.py': 107,
    'cascade-mask-rcnn_swin-b_in1k-tla-pre_fpn_ms-crop-3x_8xb2_coco.py': 145,
}
PARAM_TOLERANCE = 0.03
# Input sizes of the forward + backward runs: small, because UPerHead's 512-channel 3x3 convs and
# the 4conv1fc cascade heads dominate the cost on CPU.
SEG_SIZE = 128
DET_SHORT = 192


def _leaf_name(path):
    return osp.basename(path)


# ============================================================================ config files (fast)
# Every downstream config: its name says how the backbone was pretrained (``in1k-tla-pre``,
# ``in1k-cutmix-pre``, ``in1k-official-pre``), and the row says which checkpoint it must load.
_OFFICIAL = {'deit-s': 'checkpoints/deit_small_patch16_224-cd65a155.pth',
             'swin-t': 'checkpoints/swin_tiny_patch4_window7_224.pth',
             'swin-s': 'checkpoints/swin_small_patch4_window7_224.pth',
             'swin-b': 'checkpoints/swin_base_patch4_window7_224.pth'}
DOWNSTREAM_TABLE = {}
for _arch, _full in (('deit-s', 'deit-small'), ('swin-t', 'swin-tiny'), ('swin-s', 'swin-small'),
                     ('swin-b', 'swin-base')):
    for _kind in ('tla', 'cutmix', 'official'):
        _ckpt = _OFFICIAL[_arch] if _kind == 'official' else f'work_dirs/{_full}_{_kind}_8xb128-300e_in1k/backbone.pth'
        _seg = (f'upernet_{_arch}_in1k-{_kind}-pre_' + ('mln_' if _arch == 'deit-s' else '')
                + '8xb2-160k_ade20k-512x512.py')
        DOWNSTREAM_TABLE[_seg] = _ckpt
        if _arch != 'deit-s':
            DOWNSTREAM_TABLE[f'cascade-mask-rcnn_{_arch}_in1k-{_kind}-pre_fpn_ms-crop-3x_8xb2_coco.py'] = _ckpt


def test_every_downstream_config_has_a_row():
    assert {_leaf_name(p) for p in SEG_CONFIGS + DET_CONFIGS} == set(DOWNSTREAM_TABLE)


@pytest.mark.parametrize('path', SEG_CONFIGS + DET_CONFIGS, ids=_leaf_name)
def test_every_config_parses_and_passes_checks(path):
    cfg = Config.fromfile(path)
    assert cfg.custom_imports.imports == ['tlalign_mm.models']
    bb = cfg.model.backbone
    assert bb.type in ('tlalign_mm.TLASwinTransformer', 'tlalign_mm.TLAVisionTransformer')
    assert bb.init_cfg.type == 'Pretrained'
    ckpt = bb.init_cfg.checkpoint
    assert ckpt == DOWNSTREAM_TABLE[_leaf_name(path)]
    if ckpt.startswith('work_dirs/'):   # written by a pretraining config of this repository
        assert osp.isfile(osp.join(REPO, 'configs', 'pretrain', ckpt.split('/')[1] + '.py')), ckpt
    check_downstream_config(cfg)


DEMO_PARENTS = {
    'upernet_swin-demo_fmnist-tla-pre_1xb4-400i_voc-seg-256x256.py':
        ('upernet', 'upernet_swin-t_in1k-tla-pre_8xb2-160k_ade20k-512x512.py'),
    'cascade-mask-rcnn_swin-demo_fmnist-tla-pre_fpn_1xb2-10e_coco-voc.py': (
        'cascade_mask_rcnn', 'cascade-mask-rcnn_swin-t_in1k-tla-pre_fpn_ms-crop-3x_8xb2_coco.py'),
}


@pytest.mark.parametrize('name', sorted(DEMO_PARENTS))
def test_demo_downstream_configs_match_the_demo_backbone(name):
    """The demo UperNet / Cascade Mask R-CNN build the backbone the demo pretraining exports
    (same arch, patch and window, so that every exported tensor loads), from the path
    tools/run_demo.sh writes, and differ from their real parent only in size and schedule."""
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'demo', name))
    pre = Config.fromfile(osp.join(REPO, 'configs', 'demo', 'swin-demo_tla_1xb64-10e_fashion-mnist.py'))
    bb, pre_bb = cfg.model.backbone, pre.model.backbone
    assert bb.type == 'tlalign_mm.TLASwinTransformer' and pre_bb.type == 'TLASwinTransformer'
    for key in ('arch', 'patch_size', 'window_size'):
        assert bb[key] == pre_bb[key], key
    assert bb.init_cfg == dict(type='Pretrained', checkpoint='work_dirs/demo/pretrain/backbone.pth')
    assert bb.out_indices == (0, 1, 2, 3)
    check_downstream_config(cfg)
    parent = Config.fromfile(osp.join(REPO, 'configs', *DEMO_PARENTS[name]))
    assert cfg.model.type == parent.model.type and cfg.default_scope == parent.default_scope
    assert cfg.optim_wrapper.optimizer.type == parent.optim_wrapper.optimizer.type == 'AdamW'


def _flat(cfg):
    d = cfg.to_dict()
    d.pop('model')
    return d


@pytest.mark.parametrize('path', [p for p in SEG_CONFIGS + DET_CONFIGS
                                  if '-cutmix-pre' in p or '-official-pre' in p], ids=_leaf_name)
def test_sibling_differs_only_in_checkpoint(path):
    parent = path.replace('-cutmix-pre', '-tla-pre').replace('-official-pre', '-tla-pre')
    a, b = Config.fromfile(path), Config.fromfile(parent)
    ma, mb = a.model.to_dict(), b.model.to_dict()
    assert ma['backbone']['init_cfg'].pop('checkpoint') != mb['backbone']['init_cfg'].pop('checkpoint')
    assert ma == mb
    da, db = _flat(a), _flat(b)
    da.pop('checkpoint'), db.pop('checkpoint')
    assert da == db


def test_upernet_recipe():
    for path in SEG_CONFIGS:
        cfg = Config.fromfile(path)
        assert cfg.default_scope == 'mmseg'
        assert cfg.train_dataloader.batch_size == 2
        assert cfg.train_cfg.type == 'tlalign_mm.ResumableIterBasedTrainLoop' and cfg.train_cfg.max_iters == 160000
        opt = cfg.optim_wrapper.optimizer
        assert (opt.type, opt.lr, tuple(opt.betas), opt.weight_decay) == ('AdamW', 6e-5, (0.9, 0.999), 0.01)
        keys = cfg.optim_wrapper.paramwise_cfg.custom_keys
        for k in ('absolute_pos_embed', 'relative_position_bias_table', 'norm', 'pos_embed', 'cls_token'):
            assert keys[k].decay_mult == 0.0
        warm, poly = cfg.param_scheduler
        assert (warm.type, warm.start_factor, warm.end, warm.by_epoch) == ('LinearLR', 1e-6, 1500, False)
        assert (poly.type, poly.power, poly.eta_min, poly.begin, poly.end) == ('PolyLR', 1.0, 0.0, 1500, 160000)
        dh, ah = cfg.model.decode_head, cfg.model.auxiliary_head
        assert (dh.type, dh.channels, tuple(dh.pool_scales), dh.num_classes) == ('UPerHead', 512, (1, 2, 3, 6), 150)
        assert ah.type == 'FCNHead' and ah.loss_decode.loss_weight == 0.4
        assert dh.norm_cfg.type == ah.norm_cfg.type == 'SyncBN'
        crop = [t for t in cfg.train_dataloader.dataset.pipeline if t.type == 'RandomCrop'][0]
        assert tuple(crop.crop_size) == (512, 512) and crop.cat_max_ratio == 0.75
        assert cfg.tta_model.type == 'SegTTAModel' and cfg.tta_pipeline[-1].type == 'TestTimeAug'
        bb = cfg.model.backbone
        if bb.type == 'tlalign_mm.TLASwinTransformer':
            assert bb.drop_path_rate == 0.3 and bb.window_size == 7 and tuple(bb.out_indices) == (0, 1, 2, 3)
            c = {'tiny': 96, 'small': 96, 'base': 128}[bb.arch]
            assert list(dh.in_channels) == [c, 2 * c, 4 * c, 8 * c] and ah.in_channels == 4 * c
        else:
            assert bb.arch == 'deit-small' and tuple(bb.out_indices) == (2, 5, 8, 11)
            assert bb.final_norm and bb.drop_path_rate == 0.1 and bb.interpolate_mode == 'bicubic'
            assert bb.img_size == 512 and bb.patch_size == 16
            assert cfg.model.neck.type == 'MultiLevelNeck' and list(cfg.model.neck.scales) == [4, 2, 1, 0.5]


def test_cascade_recipe():
    for path in DET_CONFIGS:
        cfg = Config.fromfile(path)
        assert cfg.default_scope == 'mmdet'
        assert cfg.train_dataloader.batch_size == 2
        assert cfg.train_cfg.max_epochs == 36
        assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
        opt = cfg.optim_wrapper.optimizer
        assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 1e-4, 0.05)
        keys = cfg.optim_wrapper.paramwise_cfg.custom_keys
        assert {k for k, v in keys.items() if v.decay_mult == 0} == {
            'absolute_pos_embed', 'relative_position_bias_table', 'norm'}
        step = cfg.param_scheduler[1]
        assert step.type == 'MultiStepLR' and list(step.milestones) == [27, 33]
        heads = cfg.model.roi_head.bbox_head
        stds = [list(h.bbox_coder.target_stds) for h in heads]
        assert stds == [[0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067]]
        for h in heads:
            assert (h.type, h.num_shared_convs, h.num_shared_fcs) == ('ConvFCBBoxHead', 4, 1)
            assert h.reg_decoded_bbox and h.loss_bbox.type == 'GIoULoss' and h.loss_bbox.loss_weight == 10.0
            assert h.norm_cfg.type == 'SyncBN'
        choice = [t for t in cfg.train_dataloader.dataset.pipeline if t.type == 'RandomChoice'][0]
        ms, crop = choice.transforms
        assert [s[0] for s in ms[0].scales] == list(range(480, 801, 32))
        assert [t.type for t in crop] == ['RandomChoiceResize', 'RandomCrop', 'RandomChoiceResize']
        assert crop[1].crop_type == 'absolute_range' and tuple(crop[1].crop_size) == (384, 600)
        bb = cfg.model.backbone
        assert bb.drop_path_rate == {'tiny': 0.2, 'small': 0.2, 'base': 0.3}[bb.arch]
        c = {'tiny': 96, 'small': 96, 'base': 128}[bb.arch]
        assert list(cfg.model.neck.in_channels) == [c, 2 * c, 4 * c, 8 * c]


# ============================================================================ config checks (fast)
def test_backbone_stride():
    """Ours: what the backbone declares (feature_info, built on the meta device); mm's: its strides."""
    assert backbone_stride(dict(type='tlalign_mm.TLAPyramidVisionTransformer', arch='v2-b0')) == 32
    assert backbone_stride(dict(type='PyramidVisionTransformerV2', strides=(4, 2, 2, 2))) == 32
    assert backbone_stride(dict(type='TLASwinTransformer', arch='tiny')) == 32
    assert backbone_stride(dict(type='TLASwinTransformer', arch='tiny', out_indices=(0, 1))) == 8
    assert backbone_stride(dict(type='TLAVisionTransformer', arch='deit-small', patch_size=16)) == 16
    assert backbone_stride(dict(type='TLAVisionTransformer', arch='deit-small', patch_size=8)) == 8
    assert backbone_stride(dict(type='TLASwinTransformer', out_indices=(0, 1, 2),
                                arch=dict(embed_dims=96, depths=(2, 2, 6), num_heads=(3, 6, 12)))) == 16
    assert backbone_stride(dict(type='TLASwinTransformer', arch='no-such-arch')) is None   # the build says why
    assert backbone_stride(dict(type='ResNet', depth=50)) is None


def test_crop_not_divisible_by_stride_names_the_field():
    cfg = Config.fromfile(SWIN_T_SEG)
    i = [t.type for t in cfg.train_dataloader.dataset.pipeline].index('RandomCrop')
    cfg.train_dataloader.dataset.pipeline[i].crop_size = (500, 500)
    with pytest.raises(DownstreamConfigError) as e:
        check_downstream_config(cfg)
    msg = str(e.value)
    assert f'train_dataloader.dataset.pipeline[{i}].crop_size=(500, 500)' in msg
    assert 'output stride' in msg and '32' in msg and 'TLASwinTransformer' in msg
    assert 'model.data_preprocessor.size' in msg  # and it no longer agrees with the crop

    cfg = Config.fromfile(DEIT_S_SEG)
    cfg.model.data_preprocessor.size = (520, 520)
    with pytest.raises(DownstreamConfigError, match=r'model\.data_preprocessor\.size=\(520, 520\).*16'):
        check_downstream_config(cfg)
    cfg.model.data_preprocessor.size = (512, 512)
    check_downstream_config(cfg)  # 512 = 32 x 16

    cfg = Config.fromfile(SWIN_T_DET)
    cfg.model.data_preprocessor.pad_size_divisor = 16
    with pytest.raises(DownstreamConfigError, match=r'pad_size_divisor=16'):
        check_downstream_config(cfg)


@pytest.fixture(scope='module')
def mm_datasets():
    """Skip unless mmseg's and mmdet's dataset classes import: their ``METAINFO`` gives the number of
    classes of a dataset config without ``metainfo.classes`` (else that check is skipped)."""
    try:
        importlib.import_module('mmseg.datasets')
        importlib.import_module('mmdet.datasets')
    except Exception as e:  # not installed, or a broken mmcv
        pytest.skip(f'mmseg / mmdet datasets do not import: {e}')


def test_num_classes_mismatch_names_the_field(mm_datasets):
    cfg = Config.fromfile(SWIN_T_SEG)
    cfg.model.decode_head.num_classes = 19
    with pytest.raises(DownstreamConfigError) as e:
        check_downstream_config(cfg)
    msg = str(e.value)
    assert 'model.decode_head.num_classes=19' in msg and 'ADE20KDataset' in msg and '150' in msg
    assert 'auxiliary_head' not in msg

    cfg = Config.fromfile(SWIN_T_DET)
    cfg.model.roi_head.bbox_head[1].num_classes = 81
    with pytest.raises(DownstreamConfigError, match=r'model\.roi_head\.bbox_head\[1\]\.num_classes=81.*80'):
        check_downstream_config(cfg)

    # a dataset with its own classes: every head must follow
    cfg = Config.fromfile(SWIN_T_DET)
    classes = tuple(f'c{i}' for i in range(20))
    for dl in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        dl.dataset.metainfo = dict(classes=classes)
    with pytest.raises(DownstreamConfigError) as e:
        check_downstream_config(cfg)
    msg = str(e.value)
    for field in ('bbox_head[0]', 'bbox_head[1]', 'bbox_head[2]', 'mask_head'):
        assert f'model.roi_head.{field}.num_classes=80' in msg
    assert 'metainfo.classes' in msg
    _set_det_num_classes(cfg, 20)
    check_downstream_config(cfg)


def test_wrapped_dataset_is_checked(mm_datasets):
    cfg = Config.fromfile(SWIN_T_SEG)
    inner = cfg.train_dataloader.dataset
    cfg.train_dataloader.dataset = dict(type='RepeatDataset', times=2, dataset=inner)
    cfg.model.auxiliary_head.num_classes = 151
    with pytest.raises(DownstreamConfigError,
                       match=r'auxiliary_head\.num_classes=151.*train_dataloader\.dataset\.dataset'):
        check_downstream_config(cfg)


@pytest.mark.parametrize('path', sorted(glob.glob(osp.join(REPO, 'configs', 'pretrain', '*.py'))
                                         + glob.glob(osp.join(REPO, 'configs', 'demo', '*.py'))), ids=_leaf_name)
def test_other_configs_pass_the_check_unchanged(path):
    """tools/train.py may call the check for every config: pretraining / demo configs pass it."""
    cfg = Config.fromfile(path)
    before = cfg.to_dict()
    check_downstream_config(cfg)
    assert cfg.to_dict() == before
    check_downstream_config(Config(dict(a=1)))


def test_sync_bn_to_bn_and_amp_fallback():
    cfg = Config.fromfile(SWIN_T_DET)
    changed = sync_bn_to_bn(cfg)
    assert changed == [f'model.roi_head.bbox_head[{i}].norm_cfg' for i in range(3)]
    assert all(h.norm_cfg.type == 'BN' for h in cfg.model.roi_head.bbox_head)
    cfg = Config.fromfile(SWIN_T_SEG)
    assert sorted(sync_bn_to_bn(cfg)) == ['model.auxiliary_head.norm_cfg', 'model.decode_head.norm_cfg']
    assert sync_bn_to_bn(cfg) == []

    cfg = Config.fromfile(SWIN_T_DET)
    assert not amp_to_fp32_without_cuda(cfg, cuda_available=True)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert amp_to_fp32_without_cuda(cfg, cuda_available=False)
    assert cfg.optim_wrapper.type == 'OptimWrapper' and 'loss_scale' not in cfg.optim_wrapper
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'  # the rest untouched
    assert not amp_to_fp32_without_cuda(Config.fromfile(SWIN_T_SEG), cuda_available=False)


def test_config_checks_import_without_mmseg_mmdet():
    """The module (and a check) works with mmseg / mmdet unimportable: the stride is still checked;
    the classes of a dataset whose class cannot be imported are not known, and that check is skipped
    (mmseg / mmdet would report a mismatch when they build the dataset)."""
    code = textwrap.dedent(f"""
        import importlib.util, sys
        sys.modules.update({{'mmseg': None, 'mmdet': None}})  # importing them now fails
        spec = importlib.util.spec_from_file_location(
            'cc', {osp.join(REPO, 'tools', 'config_checks.py')!r})
        m = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m)
        ade = {{'type': 'ADE20KDataset'}}
        cfg = {{'default_scope': 'mmseg',
               'model': {{'backbone': {{'type': 'TLASwinTransformer'}}, 'decode_head': {{'num_classes': 19}}}},
               'train_dataloader': {{'dataset': ade}}}}
        print(m.dataset_num_classes(ade, 'mmseg'))
        m.check_downstream_config(cfg)  # classes unknown: skipped
        cfg['crop_size'] = (500, 500)
        try:
            m.check_downstream_config(cfg)
        except m.DownstreamConfigError as e:
            print('crop_size=(500, 500) is not divisible' in str(e) and 'num_classes' not in str(e))
    """)
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0 and out.stdout.split() == ['None', 'True'], out.stdout + out.stderr


def test_dataset_classes_come_from_config_or_registered_class():
    """``metainfo.classes`` first, then the registered class's ``METAINFO`` (by ``'scope.Name'``, or
    ``'Name'`` under the config's scope); an unknown type / scope gives None."""
    from config_checks import dataset_num_classes

    from tlalign_mm.datasets import ImageFolderDataset
    assert dataset_num_classes(dict(type='ADE20KDataset', metainfo=dict(classes=('a', 'b'))), 'mmseg') == 2
    assert dataset_num_classes(dict(type='NoSuchDataset'), 'mmseg') is None
    assert dataset_num_classes(dict(type='ADE20KDataset'), None) is None            # no scope to look in
    assert dataset_num_classes(dict(type='ADE20KDataset'), 'no_such_scope') is None
    assert dataset_num_classes(dict(type='ImageFolderDataset'), 'tlalign_mm') is None  # classes from folders
    assert dataset_num_classes(dict(type=ImageFolderDataset, metainfo=dict(classes='classes.txt'))) is None


def test_dataset_classes_of_mm_datasets(mm_datasets):
    """mmseg's / mmdet's registered dataset classes: a scope prefix wins over the config's scope."""
    from config_checks import dataset_num_classes
    assert dataset_num_classes(dict(type='ADE20KDataset'), 'mmseg') == 150
    assert dataset_num_classes(dict(type='mmseg.ADE20KDataset'), 'mmdet') == 150
    assert dataset_num_classes(dict(type='CityscapesDataset'), 'mmseg') == 19
    assert dataset_num_classes(dict(type='CityscapesDataset'), 'mmdet') == 8
    assert dataset_num_classes(dict(type='CocoDataset'), 'mmdet') == 80


def _set_det_num_classes(cfg, n):
    for h in cfg.model.roi_head.bbox_head:
        h.num_classes = n
    cfg.model.roi_head.mask_head.num_classes = n


# ============================================================================ mm: building models
@pytest.fixture(scope='module')
def mm():
    from conftest import mm_unavailable_reason
    reason = mm_unavailable_reason()
    if reason:
        pytest.skip(f'mmseg / mmdet / mmcv ops not importable: {reason}')
    import mmdet.utils
    import mmseg.utils

    import tlalign_mm
    mmseg.utils.register_all_modules(init_default_scope=False)
    mmdet.utils.register_all_modules(init_default_scope=False)
    # ours stay in our registry; mmseg / mmdet reach them across scopes
    for scope in ('mmseg', 'mmdet'):
        reg = _registry(scope, 'MODELS')
        assert 'TLASwinTransformer' not in reg.module_dict
        assert reg.get('tlalign_mm.TLASwinTransformer') is tlalign_mm.TLASwinTransformer


def _scope(name):
    from mmengine.registry import DefaultScope
    return DefaultScope.overwrite_default_scope(name)


def _registry(scope, kind):
    return getattr(importlib.import_module(f'{scope}.registry'), kind)


def _build_model(cfg, scope):
    from mmengine.model import revert_sync_batchnorm
    with _scope(scope):
        model = _registry(scope, 'MODELS').build(cfg.model)
    return revert_sync_batchnorm(model)


def _no_pretrained(cfg):
    cfg = copy.deepcopy(cfg)
    cfg.model.backbone.pop('init_cfg', None)
    return cfg


def _seed(s=0):
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


@pytest.fixture(scope='module')
def demo_data():
    need = [osp.join(VOC_SEG, 'img_dir', 'train'), osp.join(COCO_VOC, 'annotations', 'instances_train.json')]
    if not all(osp.exists(p) for p in need):
        subprocess.run([sys.executable, osp.join(REPO, 'tools', 'prepare_demo_data.py'), '--only', 'seg,coco'],
                       cwd=REPO, check=True, timeout=600)
    return need


VOC_CLASSES = tuple(open(osp.join(VOC_SEG, 'classes.txt')).read().split()) if osp.exists(
    osp.join(VOC_SEG, 'classes.txt')) else ()


def _seg_cfg(path, size=SEG_SIZE):
    """The config at a reduced size on the demo VOC set (22 classes): the config's own train
    pipeline with crop ``size`` and scale (4 * size, size), heads set to 22 classes."""
    cfg = _no_pretrained(Config.fromfile(path))
    classes = VOC_CLASSES or tuple(f'c{i}' for i in range(22))
    cfg.crop_size = cfg.model.data_preprocessor.size = (size, size)
    cfg.model.decode_head.num_classes = cfg.model.auxiliary_head.num_classes = len(classes)
    ds = cfg.train_dataloader.dataset
    ds.type = 'BaseSegDataset'
    ds.data_root = VOC_SEG
    ds.data_prefix = dict(img_path='img_dir/train', seg_map_path='ann_dir/train')
    ds.img_suffix, ds.seg_map_suffix, ds.reduce_zero_label = '.jpg', '.png', False
    ds.metainfo = dict(classes=classes)
    for t in ds.pipeline:
        if t.type == 'LoadAnnotations':
            t.reduce_zero_label = False
        elif t.type == 'RandomResize':
            t.scale = (4 * size, size)
        elif t.type == 'RandomCrop':
            t.crop_size = (size, size)
    cfg.train_dataloader.dataset = ds
    cfg.val_dataloader = cfg.test_dataloader = None
    check_downstream_config(cfg)
    return cfg


def _det_cfg(path, short=DET_SHORT):
    """The config on the demo COCO-format VOC set (20 classes), training images resized to a
    short side of ``short`` (the ms-crop pipeline itself is exercised in test_det_pipelines),
    64 instead of 512 sampled RoIs per image and 300 instead of 2000 proposals (CPU time)."""
    import json
    cfg = _no_pretrained(Config.fromfile(path))
    cats = json.load(open(osp.join(COCO_VOC, 'annotations', 'instances_train.json')))['categories']
    classes = tuple(c['name'] for c in cats)
    _set_det_num_classes(cfg, len(classes))
    ds = cfg.train_dataloader.dataset
    ds.data_root = COCO_VOC
    ds.ann_file = 'annotations/instances_train.json'
    ds.data_prefix = dict(img='train/')
    ds.metainfo = dict(classes=classes)
    ds.filter_cfg = dict(filter_empty_gt=True, min_size=1)
    ds.pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
        dict(type='Resize', scale=(int(short * 1333 / 800), short), keep_ratio=True),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PackDetInputs'),
    ]
    for rcnn in cfg.model.train_cfg.rcnn:
        rcnn.sampler.num = 64
    cfg.model.train_cfg.rpn_proposal.update(nms_pre=300, max_per_img=300)
    cfg.val_dataloader = cfg.test_dataloader = None
    check_downstream_config(cfg)
    return cfg


def _batch(cfg, scope, n=2):
    from mmengine.dataset import pseudo_collate
    _seed(0)
    with _scope(scope):
        ds = _registry(scope, 'DATASETS').build(cfg.train_dataloader.dataset)
        return pseudo_collate([ds[i] for i in range(n)])


def _fwd_bwd(model, batch, scope):
    model.train()
    model.zero_grad(set_to_none=True)
    _seed(0)
    with _scope(scope):
        data = model.data_preprocessor(batch, training=True)
        losses = model(**data, mode='loss')
        loss, log_vars = model.parse_losses(losses)
    assert torch.isfinite(loss), log_vars
    loss.backward()
    bb_grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert all(g is not None for g in bb_grads), 'a backbone parameter got no gradient'
    assert all(torch.isfinite(g).all() for g in bb_grads)
    assert any(g.abs().sum() > 0 for g in bb_grads)
    return data, log_vars


class _Built:
    def __init__(self, cfg, model, scope):
        self.cfg, self.model, self.scope = cfg, model, scope


@pytest.fixture(scope='module')
def seg_swin_t(mm, demo_data):
    cfg = _seg_cfg(SWIN_T_SEG)
    _seed(0)
    model = _build_model(cfg, 'mmseg')
    model.init_weights()
    return _Built(cfg, model, 'mmseg')


@pytest.fixture(scope='module')
def seg_deit_s(mm, demo_data):
    cfg = _seg_cfg(DEIT_S_SEG)
    _seed(0)
    model = _build_model(cfg, 'mmseg')
    model.init_weights()
    return _Built(cfg, model, 'mmseg')


@pytest.fixture(scope='module')
def det_swin_t(mm, demo_data):
    cfg = _det_cfg(SWIN_T_DET)
    _seed(0)
    model = _build_model(cfg, 'mmdet')
    model.init_weights()
    return _Built(cfg, model, 'mmdet')


# ------------------------------------------------------------------------- forward + backward
@pytest.mark.mm
@pytest.mark.parametrize('family', ['seg_swin_t', 'seg_deit_s'])
def test_upernet_forward_backward_on_demo_images(family, request):
    b = request.getfixturevalue(family)
    from torch.nn.modules.batchnorm import _BatchNorm
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in b.model.modules())
    assert any(isinstance(m, _BatchNorm) for m in b.model.decode_head.modules())
    batch = _batch(b.cfg, 'mmseg')
    data, log_vars = _fwd_bwd(b.model, batch, 'mmseg')
    assert tuple(data['inputs'].shape) == (2, 3, SEG_SIZE, SEG_SIZE)
    assert {'decode.loss_ce', 'aux.loss_ce'} <= set(log_vars)
    # single-scale whole-image inference through the config's test pipeline (short side 128 here
    # instead of 512: a non-square size that is no multiple of the stride), back to the original size
    from mmengine.dataset import Compose, pseudo_collate
    test_pipeline = copy.deepcopy(b.cfg.test_pipeline)
    test_pipeline[1].scale = (512, 128)
    test_pipeline[2].reduce_zero_label = False
    info = dict(img_path=osp.join(VOC_SEG, 'img_dir', 'train', '2011_000003.jpg'),
                seg_map_path=osp.join(VOC_SEG, 'ann_dir', 'train', '2011_000003.png'),
                reduce_zero_label=False, seg_fields=[])
    b.model.eval()
    with torch.no_grad(), _scope('mmseg'):
        sample = Compose(test_pipeline)(info)
        assert tuple(sample['inputs'].shape[-2:]) == (128, 189)
        pred = b.model.test_step(pseudo_collate([sample]))[0]
    assert tuple(pred.pred_sem_seg.data.shape) == (1, 338, 500)
    assert tuple(pred.seg_logits.data.shape) == (22, 338, 500)
    assert torch.isfinite(pred.seg_logits.data).all()


@pytest.mark.mm
def test_cascade_forward_backward_on_demo_images(det_swin_t):
    b = det_swin_t
    batch = _batch(b.cfg, 'mmdet')
    assert all(len(s.gt_instances) > 0 for s in batch['data_samples'])
    data, log_vars = _fwd_bwd(b.model, batch, 'mmdet')
    assert data['inputs'].shape[-1] % 32 == 0 and data['inputs'].shape[-2] % 32 == 0
    assert min(data['inputs'].shape[-2:]) <= DET_SHORT + 31
    for i in range(3):
        assert {f's{i}.loss_cls', f's{i}.loss_bbox', f's{i}.loss_mask'} <= set(log_vars)
    assert {'loss_rpn_cls', 'loss_rpn_bbox'} <= set(log_vars)


# ------------------------------------------------------------------------- pipelines of the configs
@pytest.mark.mm
def test_seg_pipelines_run_on_a_demo_image(mm, demo_data):
    """The configs' own train / test / multi-scale+flip pipelines, unchanged, on a real image."""
    from mmengine.dataset import Compose
    cfg = Config.fromfile(SWIN_T_SEG)
    img = osp.join(VOC_SEG, 'img_dir', 'train', '2011_000003.jpg')
    seg = osp.join(VOC_SEG, 'ann_dir', 'train', '2011_000003.png')
    info = dict(img_path=img, seg_map_path=seg, reduce_zero_label=True, seg_fields=[], label_map=None)
    _seed(0)
    with _scope('mmseg'):
        out = Compose(cfg.train_pipeline)(copy.deepcopy(info))
        assert max(out['inputs'].shape[-2:]) <= 512
        out = Compose(cfg.test_pipeline)(copy.deepcopy(info))
        assert min(out['inputs'].shape[-2:]) == 512  # short side 512
        tta = Compose(cfg.tta_pipeline)(copy.deepcopy(info))
    assert len(tta['inputs']) == 12  # 6 scales x 2 flips
    # ratios of the single-scale size (short side 512): 256, 384, 512, 640, 768, 896
    assert sorted({min(x.shape[-2:]) for x in tta['inputs']}) == [256, 384, 512, 640, 768, 896]


@pytest.mark.mm
def test_det_pipelines_run_on_a_demo_image(mm, demo_data):
    from mmdet.datasets import CocoDataset
    from mmengine.dataset import Compose
    cfg = Config.fromfile(SWIN_T_DET)
    det = _det_cfg(SWIN_T_DET)
    with _scope('mmdet'):
        ds = CocoDataset(data_root=COCO_VOC, ann_file='annotations/instances_train.json',
                         data_prefix=dict(img='train/'), pipeline=[],
                         metainfo=dict(det.train_dataloader.dataset.metainfo))
        infos = [ds.get_data_info(i) for i in range(len(ds))]
        train = Compose(cfg.train_pipeline)
        sizes = set()
        for seed in range(6):
            _seed(seed)
            out = train(copy.deepcopy(infos[0]))
            sizes.add(tuple(out['inputs'].shape[-2:]))
            assert out['inputs'].dtype == torch.uint8
        assert len(sizes) > 1 and all(min(s) <= 800 and max(s) <= 1333 for s in sizes)
        out = Compose(cfg.test_pipeline)(copy.deepcopy(infos[0]))
        assert min(out['inputs'].shape[-2:]) == 800 or max(out['inputs'].shape[-2:]) == 1333


# ------------------------------------------------------------------------- optimizer groups
@pytest.mark.mm
def test_no_weight_decay_groups(seg_swin_t, seg_deit_s):
    from mmengine.optim import build_optim_wrapper
    for b, zero in ((seg_swin_t, ('relative_position_bias_table', 'norm')),
                    (seg_deit_s, ('pos_embed', 'cls_token', 'norm'))):
        with _scope('mmseg'):
            ow = build_optim_wrapper(b.model, copy.deepcopy(b.cfg.optim_wrapper))
        name_of = {id(p): n for n, p in b.model.named_parameters()}
        decay = {}
        for g in ow.optimizer.param_groups:
            for p in g['params']:
                decay[name_of[id(p)]] = g['weight_decay']
        for n, wd in decay.items():
            expect = 0.0 if any(z in n for z in zero) else 0.01
            assert wd == expect, (n, wd)
        assert decay['decode_head.bottleneck.conv.weight'] == 0.01


# ------------------------------------------------------------------------- parameter counts
@pytest.mark.mm
@pytest.mark.parametrize('name', sorted(PUBLISHED_PARAMS_M))
def test_parameter_counts_match_published(name, mm):
    path = osp.join(SEG_DIR if name.startswith('upernet') else DET_DIR, name)
    scope = 'mmseg' if name.startswith('upernet') else 'mmdet'
    model = _build_model(_no_pretrained(Config.fromfile(path)), scope)
    n = sum(p.numel() for p in model.parameters())
    del model
    published = PUBLISHED_PARAMS_M[name] * 1e6
    assert abs(n - published) / published < PARAM_TOLERANCE, f'{name}: {n / 1e6:.2f}M vs {published / 1e6:.0f}M'


def _mm_config(package, rel):
    return Config.fromfile(osp.join(osp.dirname(importlib.import_module(package).__file__), '.mim', 'configs', rel))


@pytest.mark.mm
def test_parameter_counts_equal_mm_models(mm):
    """Ours vs the same model with mmseg's / mmdet's own backbone: Swin-T UperNet (mmseg's Swin-T
    config) and Cascade Mask R-CNN (our config with mmdet's SwinTransformer) are equal to the
    parameter; DeiT-S UperNet exceeds mmseg's DeiT-S MLN config by exactly the final LayerNorm (the
    recipe's final norm, which mmseg's config leaves off) and the patch-embedding bias (which
    mmseg's ViT drops)."""
    def count(cfg, scope):
        return sum(p.numel() for p in _build_model(cfg, scope).parameters())

    ref = _mm_config('mmseg', 'swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py')
    ref.model.backbone.pop('init_cfg')
    assert count(_no_pretrained(Config.fromfile(SWIN_T_SEG)), 'mmseg') == count(ref, 'mmseg')

    ref = _mm_config('mmseg', 'vit/vit_deit-s16_mln_upernet_8xb2-160k_ade20k-512x512.py')
    ref.model.pretrained = None
    assert not ref.model.backbone.get('final_norm', False)
    ours = count(_no_pretrained(Config.fromfile(DEIT_S_SEG)), 'mmseg')
    assert ours == count(ref, 'mmseg') + 2 * 384 + 384

    cfg = _no_pretrained(Config.fromfile(SWIN_T_DET))
    ours = count(cfg, 'mmdet')
    cfg.model.backbone = dict(type='SwinTransformer', embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                              window_size=7, mlp_ratio=4, qkv_bias=True, drop_path_rate=0.2, patch_norm=True,
                              out_indices=(0, 1, 2, 3), convert_weights=True)
    assert ours == count(cfg, 'mmdet')


# ============================================================================ pretrained loading
def _backbone_only(cfg, scope):
    with _scope(scope):
        return _registry(scope, 'MODELS').build(copy.deepcopy(cfg.model.backbone))


def _with_checkpoint(path, ckpt, scope):
    cfg = Config.fromfile(path)
    cfg.model.backbone.init_cfg.checkpoint = str(ckpt)
    return cfg


@pytest.mark.mm
def test_exported_pretraining_backbone_loads_exactly(mm, tmp_path):
    """pretraining checkpoint -> export_checkpoint -> init_cfg of the UperNet config -> identical."""
    from tlalign_mm.checkpoint import export_checkpoint
    from tlalign_mm.registry import MODELS as TLA_MODELS
    pre = Config.fromfile(osp.join(REPO, 'configs', 'pretrain', 'swin-tiny_tla_8xb128-300e_in1k.py'))
    _seed(1)
    clf = TLA_MODELS.build(pre.model)
    clf.init_weights()
    with torch.no_grad():  # make every tensor distinguishable from a fresh init
        for p in clf.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    src = tmp_path / 'epoch_300.pth'
    torch.save({'state_dict': clf.state_dict(), 'meta': {'epoch': 300}}, src)
    dst = tmp_path / 'backbone.pth'
    info = export_checkpoint(src, dst)
    assert info['layout'] == 'tlalign' and info['prefix'] == 'backbone.'

    cfg = _with_checkpoint(SWIN_T_SEG, dst, 'mmseg')
    _seed(2)
    model = _build_model(cfg, 'mmseg')
    model.init_weights()
    ref = clf.backbone.state_dict()
    got = model.backbone.state_dict()
    loaded = [k for k in got if k in ref]
    assert len(loaded) == len(ref)
    for k in loaded:
        assert torch.equal(got[k], ref[k]), k
    # the classifier had only the last stage's norm; norm0..2 are new for the dense outputs
    assert sorted(set(got) - set(ref)) == sorted(f'norm{i}.{p}' for i in range(3) for p in ('weight', 'bias'))


@pytest.mark.mm
def test_official_deit_checkpoint_loads_exactly(mm, tmp_path):
    import timm
    _seed(3)
    deit = timm.create_model('deit_small_patch16_224', pretrained=False)
    sd = {k: v.clone() for k, v in deit.state_dict().items()}
    path = tmp_path / 'deit_small_patch16_224-cd65a155.pth'
    torch.save({'model': sd}, path)
    cfg = _with_checkpoint(osp.join(SEG_DIR, 'upernet_deit-s_in1k-official-pre_mln_8xb2-160k_ade20k-512x512.py'),
                           path, 'mmseg')
    bb = _backbone_only(cfg, 'mmseg')
    bb.init_weights()
    got = bb.state_dict()
    assert set(got) == {k for k in sd if not k.startswith('head.')}
    for k, v in sd.items():
        if k.startswith('head.') or k == 'pos_embed':
            continue
        assert torch.equal(got[k], v), k
    # position embedding: class row kept, 14x14 grid resampled bicubically to 32x32 (512 / 16)
    pe = sd['pos_embed']
    grid = pe[:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(32, 32), mode='bicubic', align_corners=False)
    expect = torch.cat([pe[:, :1], grid.permute(0, 2, 3, 1).reshape(1, 32 * 32, -1)], dim=1)
    assert torch.equal(got['pos_embed'][:, :1], pe[:, :1])
    torch.testing.assert_close(got['pos_embed'], expect, rtol=0, atol=1e-6)


def _official_swin_from_timm(sd):
    """timm>=0.9 Swin -> the official microsoft/Swin-Transformer layout (merging at the end of the
    previous stage, ``head``, the official buffers)."""
    out = {}
    for k, v in sd.items():
        m = re.match(r'layers\.(\d+)\.downsample\.(.*)', k)
        if m:
            k = f'layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}'
        elif k.startswith('head.fc.'):
            k = 'head.' + k[len('head.fc.'):]
        out[k] = v.clone()
    for k in list(out):
        m = re.match(r'(layers\.\d+\.blocks\.(\d+))\.attn\.qkv\.weight', k)
        if m:
            out[f'{m.group(1)}.attn.relative_position_index'] = torch.zeros(49, 49, dtype=torch.long)
    return out


@pytest.mark.mm
def test_official_swin_checkpoint_loads_exactly_into_both_families(mm, tmp_path):
    import timm
    _seed(4)
    swin = timm.create_model('swin_tiny_patch4_window7_224', pretrained=False)
    with torch.no_grad():
        for n, p in swin.named_parameters():
            if 'norm' in n or 'relative_position_bias_table' in n:
                p.add_(torch.randn_like(p) * 0.1)
    official = _official_swin_from_timm(swin.state_dict())
    path = tmp_path / 'swin_tiny_patch4_window7_224.pth'
    torch.save({'model': official}, path)
    official_cfgs = ((osp.join(SEG_DIR, 'upernet_swin-t_in1k-official-pre_8xb2-160k_ade20k-512x512.py'), 'mmseg'),
                     (osp.join(DET_DIR, 'cascade-mask-rcnn_swin-t_in1k-official-pre_fpn_ms-crop-3x_8xb2_coco.py'),
                      'mmdet'))
    for cfg_path, scope in official_cfgs:
        cfg = _with_checkpoint(cfg_path, path, scope)
        bb = _backbone_only(cfg, scope)
        bb.init_weights()
        got = bb.state_dict()
        n = 0
        for k, v in official.items():
            if k.startswith('head.') or k.endswith('relative_position_index'):
                continue
            nk = 'norm3.' + k[5:] if k.startswith('norm.') else k
            assert torch.equal(got[nk], v), (scope, k)
            n += 1
        assert n == len(got) - 6  # all but norm0..2 (new output norms)


@pytest.mark.mm
def test_missing_checkpoint_file_is_a_clear_error(mm, tmp_path):
    missing = tmp_path / 'nowhere' / 'backbone.pth'
    for cfg_path, scope in ((SWIN_T_SEG, 'mmseg'), (DEIT_S_SEG, 'mmseg'), (SWIN_T_DET, 'mmdet')):
        bb = _backbone_only(_with_checkpoint(cfg_path, missing, scope), scope)
        with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
            bb.init_weights()


@pytest.mark.mm
def test_detector_checkpoint_for_a_classifier_backbone(det_swin_t, tmp_path):
    """A detector checkpoint where a classifier one was expected: with a backbone of another
    family (our Swin-T detector for DeiT-S; a ResNet-50 detector for Swin-T) it fails, naming
    the layout / prefixes; with the same backbone its ``backbone.`` weights load exactly."""
    from mmdet.models.backbones import ResNet
    det_sd = {k: v for k, v in det_swin_t.model.state_dict().items()
              if k.startswith(('backbone.', 'neck.', 'rpn_head.', 'roi_head.bbox_head.0.'))}
    det_ckpt = tmp_path / 'cascade_swin-t_epoch_36.pth'
    torch.save({'state_dict': det_sd, 'meta': {'epoch': 36}}, det_ckpt)

    deit = _backbone_only(_with_checkpoint(DEIT_S_SEG, det_ckpt, 'mmseg'), 'mmseg')
    with pytest.raises((RuntimeError, ValueError)) as e:
        deit.init_weights()
    msg = str(e.value)
    assert str(det_ckpt) in msg and "prefix 'backbone.'" in msg

    res_sd = {f'backbone.{k}': v for k, v in ResNet(depth=50).state_dict().items()}
    res_sd.update({k: v for k, v in det_sd.items() if not k.startswith('backbone.')})
    res_ckpt = tmp_path / 'cascade_r50_epoch_36.pth'
    torch.save({'state_dict': res_sd, 'meta': {}}, res_ckpt)
    swin = _backbone_only(_with_checkpoint(SWIN_T_SEG, res_ckpt, 'mmseg'), 'mmseg')
    with pytest.raises(ValueError, match=r'unrecognised checkpoint layout') as e:
        swin.init_weights()
    assert str(res_ckpt) in str(e.value)

    # same backbone: the detector's fine-tuned backbone transfers, every tensor equal
    swin = _backbone_only(_with_checkpoint(SWIN_T_SEG, det_ckpt, 'mmseg'), 'mmseg')
    swin.init_weights()
    for k, v in swin.state_dict().items():
        assert torch.equal(v, det_sd['backbone.' + k]), k


def test_import_tlalign_mm_stays_light():
    """``import tlalign_mm`` (and ``tlalign_mm.models``, what the downstream configs import)
    imports neither mmseg nor mmdet, and allow-lists nothing process-wide (tests/test_import.py: no
    side effects at all)."""
    code = ("import sys, torch, tlalign_mm.models; "
            "assert 'mmdet' not in sys.modules and 'mmseg' not in sys.modules, sorted(sys.modules); "
            "from mmengine.logging import HistoryBuffer; "
            "assert HistoryBuffer not in torch.serialization.get_safe_globals(); print('light')")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip() == 'light', r.stderr[-2000:]
