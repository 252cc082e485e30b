"""Transfer fine-tuning: the torchvision-backed datasets on tiny files written here in each real
format (CIFAR's python pickles, Flowers-102's jpg + .mat files, Stanford Cars' devkit .mat files),
the configs, and a few training iterations of a transfer config on each set."""
import glob
import os
import pickle

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import init_default_scope
from PIL import Image

import tlalign_mm  # noqa: F401
from tlalign_mm.datasets import TorchvisionClsDataset
from tlalign_mm.registry import MODELS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRANSFER_CONFIGS = sorted(glob.glob(os.path.join(REPO, 'configs', 'transfer', '*.py')))
CLASSES = {'cifar10': 10, 'cifar100': 100, 'flowers102': 102, 'stanford-cars': 196}
NAMES = {'cifar10': 'CIFAR10', 'cifar100': 'CIFAR100', 'flowers102': 'Flowers102', 'stanford-cars': 'StanfordCars'}


def _rgb(i, size=40):
    g = np.random.default_rng(i)
    return g.integers(0, 256, (size, size, 3), dtype=np.uint8)


def _write_cifar(root, hundred=False, n=4):
    folder = root / ('cifar-100-python' if hundred else 'cifar-10-batches-py')
    folder.mkdir(parents=True)
    key = 'fine_labels' if hundred else 'labels'
    files = ['train', 'test'] if hundred else [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']
    images = {}
    for j, name in enumerate(files):
        imgs = np.stack([_rgb(100 * j + i, 32) for i in range(n)])              # (n, 32, 32, 3)
        labels = [(7 * j + i) % (100 if hundred else 10) for i in range(n)]
        with open(folder / name, 'wb') as f:     # CIFAR's format: rows of R, G, B planes, 3072 bytes
            pickle.dump({'data': imgs.transpose(0, 3, 1, 2).reshape(n, -1), key: labels}, f)
        images[name] = (imgs, labels)
    meta = {'fine_label_names': [f'c{i}' for i in range(100)]} if hundred else \
        {'label_names': [f'c{i}' for i in range(10)]}
    with open(folder / ('meta' if hundred else 'batches.meta'), 'wb') as f:
        pickle.dump(meta, f)
    return images


def _write_flowers(root):
    from scipy.io import savemat
    folder = root / 'flowers-102'
    (folder / 'jpg').mkdir(parents=True)
    for i in range(1, 7):
        Image.fromarray(_rgb(i)).save(folder / 'jpg' / f'image_{i:05d}.jpg')
    savemat(folder / 'imagelabels.mat', {'labels': np.array([[1, 2, 3, 102, 5, 6]])})     # 1-based
    savemat(folder / 'setid.mat', {'trnid': np.array([[1, 2]]), 'valid': np.array([[3, 4]]),
                                   'tstid': np.array([[5, 6]])})


def _write_cars(root):
    from scipy.io import savemat
    folder = root / 'stanford_cars'
    (folder / 'devkit').mkdir(parents=True)
    for split in ('train', 'test'):
        (folder / f'cars_{split}').mkdir()
        for i in range(3):
            Image.fromarray(_rgb(50 + i)).save(folder / f'cars_{split}' / f'{i:05d}.jpg')
    dtype = [('bbox_x1', 'O'), ('bbox_y1', 'O'), ('bbox_x2', 'O'), ('bbox_y2', 'O'), ('class', 'O'), ('fname', 'O')]

    def annos(classes):
        a = np.zeros((1, 3), dtype=dtype)
        for i, c in enumerate(classes):
            a[0, i] = (1, 1, 30, 30, c, f'{i:05d}.jpg')
        return {'annotations': a}

    savemat(folder / 'devkit' / 'cars_train_annos.mat', annos([1, 196, 7]))
    savemat(folder / 'cars_test_annos_withlabels.mat', annos([3, 4, 5]))
    savemat(folder / 'devkit' / 'cars_meta.mat',
            {'class_names': np.array([f'car {i}' for i in range(196)], dtype=object)[None]})


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    images = {'cifar10': _write_cifar(root), 'cifar100': _write_cifar(root, hundred=True)}
    _write_flowers(root)
    _write_cars(root)
    return root, images


def test_cifar_reads_the_pickled_images_and_labels(data_root):
    root, images = data_root
    ds = TorchvisionClsDataset('CIFAR10', str(root), 'train')
    assert len(ds) == 5 * 4 and ds.metainfo['classes'][:2] == ('c0', 'c1')
    first = ds.get_data_info(0)
    imgs, labels = images['cifar10']['data_batch_1']
    assert np.array_equal(first['img'], imgs[0]) and first['gt_label'] == labels[0]
    test = TorchvisionClsDataset('CIFAR100', str(root), 'test')
    imgs, labels = images['cifar100']['test']
    assert len(test) == 4 and [test.get_data_info(i)['gt_label'] for i in range(4)] == labels
    assert np.array_equal(test.get_data_info(3)['img'], imgs[3])


def test_flowers_and_cars_read_their_mat_files(data_root):
    root, _ = data_root
    tv = TorchvisionClsDataset('Flowers102', str(root), 'trainval')
    assert [tv.get_data_info(i)['gt_label'] for i in range(len(tv))] == [0, 1, 2, 101]
    assert tv.get_data_info(3)['img_path'].endswith('image_00004.jpg')
    te = TorchvisionClsDataset('Flowers102', str(root), 'test')
    assert [te.get_data_info(i)['gt_label'] for i in range(2)] == [4, 5]
    cars = TorchvisionClsDataset('StanfordCars', str(root), 'train')
    assert [cars.get_data_info(i)['gt_label'] for i in range(3)] == [0, 195, 6]
    assert cars.metainfo['classes'][195] == 'car 195'
    assert cars.get_data_info(1)['img_path'].endswith(os.path.join('cars_train', '00001.jpg'))


def test_missing_root_names_the_expected_layout(tmp_path):
    for name, where in (('CIFAR10', 'cifar-10-batches-py'), ('Flowers102', 'flowers-102/{jpg'),
                        ('StanfordCars', 'stanford_cars/{devkit')):
        with pytest.raises(FileNotFoundError, match=f'{name} .*Expected layout: .*{where}'):
            TorchvisionClsDataset(name, str(tmp_path), 'train' if name != 'Flowers102' else 'val')
    with pytest.raises(ValueError, match="unknown split 'val'"):
        TorchvisionClsDataset('CIFAR10', str(tmp_path), 'val')
    with pytest.raises(ValueError, match='unknown dataset'):
        TorchvisionClsDataset('SVHN', str(tmp_path))


def _leaf(name):
    return os.path.basename(name)


def test_every_transfer_config_has_a_row():
    rows = {f'{a}_in1k-{k}-pre_8xb96-1000e_{d}-224px.py' for a in ('deit-t', 'deit-s', 'deit-b')
            for k in ('tla', 'cutmix') for d in CLASSES}
    assert {_leaf(p) for p in TRANSFER_CONFIGS} == rows


@pytest.mark.parametrize('path', TRANSFER_CONFIGS, ids=_leaf)
def test_transfer_config_builds_its_model(path):
    init_default_scope('tlalign_mm')
    cfg = Config.fromfile(path)
    name = _leaf(path)
    arch, pre, _, data = name[:-len('-224px.py')].split('_')
    full = {'deit-t': 'deit-tiny', 'deit-s': 'deit-small', 'deit-b': 'deit-base'}[arch]
    kind = pre.split('-')[1]
    assert cfg.model.backbone.init_cfg.checkpoint == f'work_dirs/{full}_{kind}_8xb128-300e_in1k/backbone.pth'
    assert os.path.isfile(os.path.join(REPO, 'configs', 'pretrain', f'{full}_{kind}_8xb128-300e_in1k.py'))
    assert cfg.train_dataloader.dataset.dataset == NAMES[data] == cfg.val_dataloader.dataset.dataset
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    assert model.num_classes == CLASSES[data] and type(model.label_rule).__name__ == 'AreaRule'
    assert model.backbone.embed_dims == {'deit-t': 192, 'deit-s': 384, 'deit-b': 768}[arch]
    assert model.data_preprocessor.random_erasing is None
    assert all(b.drop_path.__class__.__name__ == 'Identity' for b in model.backbone.blocks)
    assert cfg.optim_wrapper.optimizer.type == 'SGD' and cfg.train_cfg.max_epochs == 1000


@pytest.mark.slow
@pytest.mark.parametrize('data', sorted(CLASSES))
def test_transfer_config_trains_a_few_iterations(data, data_root, tmp_path):
    """DeiT-T from a (random) backbone checkpoint through init_cfg, fine-tuned on the tiny files."""
    from mmengine.runner import Runner
    root, _ = data_root
    init_default_scope('tlalign_mm')
    cfg = Config.fromfile(os.path.join(REPO, 'configs', 'transfer', f'deit-t_in1k-tla-pre_8xb96-1000e_{data}-224px.py'))
    torch.manual_seed(0)
    bb = MODELS.build(dict(type='TLAVisionTransformer', arch='deit-tiny'))
    bb.init_weights()
    torch.nn.init.normal_(bb.cls_token)             # not the zeros a fresh model starts from
    torch.save({'state_dict': bb.state_dict()}, tmp_path / 'backbone.pth')
    cfg.model.backbone.init_cfg.checkpoint = str(tmp_path / 'backbone.pth')
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dl = cfg[key]
        dl.update(batch_size=2, num_workers=0, persistent_workers=False, pin_memory=False)
        dl.dataset.data_root = str(root)
        dl.dataset.indices = 4
    cfg.train_dataloader.sampler = dict(type='DefaultSampler', shuffle=True)
    cfg.train_cfg.update(max_epochs=1, val_interval=1)
    cfg.param_scheduler = []
    cfg.optim_wrapper.type = 'OptimWrapper'
    cfg.optim_wrapper.pop('loss_scale')
    cfg.work_dir = str(tmp_path / 'work')
    cfg.default_hooks.logger.interval = 1
    cfg.pop('custom_hooks', None)
    runner = Runner.from_cfg(cfg)
    seen = {}

    class AtStart(Hook):     # after the Runner's weight init and checkpoint loading, before the first step
        def before_train(self, runner):
            seen['cls_token'] = runner.model.backbone.cls_token.detach().clone()
            seen['head'] = runner.model.head.fc.weight.detach().clone()

    runner.register_hook(AtStart())
    runner.train()
    torch.testing.assert_close(seen['cls_token'], bb.cls_token.detach(), rtol=0, atol=0)   # the checkpoint was loaded
    assert not torch.equal(runner.model.head.fc.weight, seen['head'])                      # and it trained
    metrics = runner.val_loop.run()
    assert 0 <= metrics['accuracy/top1'] <= 100
