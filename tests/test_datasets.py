"""tlalign_mm.datasets: layouts, labels, timm transforms (unnormalised), errors, DeiT sampler, loader."""
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms.functional import pil_to_tensor

from tlalign_mm.datasets import (
    ImageFolderDataset,
    ImageNetDataset,
    ImageReadError,
    PackClsInputs,
    RepeatAugSampler,
    TimmClassificationTransform,
    build_random_erasing,
)
from tlalign_mm.registry import DATA_SAMPLERS, DATASETS, TRANSFORMS
from tlalign_mm.structures import ClsDataSample

WNIDS = ['n01440764', 'n01443537', 'n01484850']  # deliberately written out of order below


def _jpeg(path, size=(300, 400), seed=0):
    """Write a (h, w) RGB JPEG with smooth + noisy content so resizing is non-trivial."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1)
    img = (img + rng.integers(0, 40, img.shape)).clip(0, 255).astype(np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(img).save(path, quality=90)
    return path


@pytest.fixture
def folder_root(tmp_path):
    """<root>/train/<wnid>/*.{JPEG,jpg,png}: 2 + 3 + 1 images, plus distractors."""
    root = tmp_path / 'imagenet'
    counts = {WNIDS[2]: 1, WNIDS[0]: 2, WNIDS[1]: 3}
    for c, n in counts.items():
        for i in range(n):
            ext = ['.JPEG', '.jpg', '.PNG'][i % 3]
            _jpeg(str(root / 'train' / c / f'{c}_{i}{ext}'), size=(64, 80), seed=i)
    (root / 'train' / WNIDS[0] / 'notes.txt').write_text('not an image')
    (root / 'train' / '.cache').mkdir()
    return root


def test_folder_layout_classes_and_labels(folder_root):
    ds = ImageNetDataset(data_root=str(folder_root), split='train')
    assert ds.metainfo['classes'] == tuple(WNIDS)
    assert len(ds) == 6
    infos = [ds.get_data_info(i) for i in range(len(ds))]
    labels = [d['gt_label'] for d in infos]
    assert labels == [0, 0, 1, 1, 1, 2]
    for d in infos:
        assert os.path.basename(os.path.dirname(d['img_path'])) == WNIDS[d['gt_label']]
        assert isinstance(d['gt_label'], int)
    assert not any(d['img_path'].endswith('.txt') for d in infos)
    assert ds.get_cat_ids(5) == [2]
    assert ds.get_gt_labels().tolist() == labels
    # registry + alias + lazy_init keeps metainfo without loading
    ds2 = DATASETS.build(dict(type='ImageFolderDataset', data_root=str(folder_root), split='train',
                              lazy_init=True))
    assert isinstance(ds2, ImageFolderDataset) and not ds2._fully_initialized
    assert ds2.metainfo['classes'] == tuple(WNIDS)
    assert len(ds2) == 6  # loads on first use


def test_folder_layout_explicit_classes(folder_root, tmp_path):
    order = [WNIDS[2], WNIDS[0]]  # WNIDS[1] folder is skipped (warning), order fixes labels
    ds = ImageNetDataset(data_root=str(folder_root), split='train', classes=order)
    assert ds.metainfo['classes'] == tuple(order)
    assert sorted(ds.get_gt_labels().tolist()) == [0, 1, 1]
    names = tmp_path / 'classes.txt'
    names.write_text('\n'.join(order) + '\n')
    ds = ImageNetDataset(data_root=str(folder_root), split='train', classes=str(names))
    assert ds.metainfo['classes'] == tuple(order)
    labels = {os.path.basename(os.path.dirname(ds.get_data_info(i)['img_path'])): ds.get_data_info(i)['gt_label']
              for i in range(len(ds))}
    assert labels == {WNIDS[2]: 0, WNIDS[0]: 1}


def test_annotation_list_layout(tmp_path):
    root = tmp_path / 'imagenet'
    for i in range(4):
        _jpeg(str(root / 'val' / f'ILSVRC2012_val_{i:08d}.JPEG'), size=(40, 50), seed=i)
    _jpeg(str(root / 'val' / 'sub dir' / 'with space.jpg'), size=(40, 50))
    (root / 'meta').mkdir()
    (root / 'meta' / 'val.txt').write_text(
        'ILSVRC2012_val_00000000.JPEG 3\nILSVRC2012_val_00000001.JPEG 0\n\n'
        'ILSVRC2012_val_00000002.JPEG 1\nILSVRC2012_val_00000003.JPEG 3\nsub dir/with space.jpg 2\n')
    ds = ImageNetDataset(data_root=str(root), split='val', ann_file='meta/val.txt', test_mode=True)
    assert len(ds) == 5
    assert ds.get_gt_labels().tolist() == [3, 0, 1, 3, 2]
    assert ds.get_data_info(0)['img_path'] == str(root / 'val' / 'ILSVRC2012_val_00000000.JPEG')
    assert ds.get_data_info(4)['img_path'] == str(root / 'val' / 'sub dir' / 'with space.jpg')
    assert ds.metainfo['classes'] == ('0', '1', '2', '3')
    ds = ImageNetDataset(data_root=str(root), split='val', ann_file='meta/val.txt', classes=list('abcde'))
    assert ds.metainfo['classes'] == tuple('abcde')
    with pytest.raises(ValueError, match='label 3 but only 2 classes'):
        ImageNetDataset(data_root=str(root), split='val', ann_file='meta/val.txt', classes=['a', 'b'])
    (root / 'meta' / 'bad.txt').write_text('ILSVRC2012_val_00000000.JPEG 1\nILSVRC2012_val_00000001.JPEG\n')
    with pytest.raises(ValueError, match=r'bad\.txt:2'):
        ImageNetDataset(data_root=str(root), split='val', ann_file='meta/bad.txt')
    with pytest.raises(FileNotFoundError, match='wrong'):
        ImageNetDataset(data_root=str(root), data_prefix='wrong', ann_file='meta/val.txt')


def test_missing_and_empty_roots(tmp_path):
    missing = tmp_path / 'nowhere'
    with pytest.raises(FileNotFoundError) as err:
        ImageNetDataset(data_root=str(missing), split='train')
    msg = str(err.value)
    assert str(missing / 'train') in msg and 'train/<wnid>' in msg and '<ann_file>' in msg
    with pytest.raises(FileNotFoundError, match='meta/val.txt'):
        ImageNetDataset(data_root=str(tmp_path), split='val', ann_file='meta/val.txt')
    (tmp_path / 'empty' / 'train').mkdir(parents=True)
    with pytest.raises(ValueError, match='no class sub-folders'):
        ImageNetDataset(data_root=str(tmp_path / 'empty'), split='train')
    (tmp_path / 'empty' / 'train' / 'n0').mkdir()
    with pytest.raises(ValueError, match='no images'):
        ImageNetDataset(data_root=str(tmp_path / 'empty'), split='train')
    with pytest.raises(ValueError, match='split'):
        ImageNetDataset(data_root=str(tmp_path), split='training')


def test_train_transform_shape_dtype(folder_root):
    pipeline = [dict(type='TimmClassificationTransform', input_size=224, is_training=True),
                dict(type='PackClsInputs')]
    ds = ImageNetDataset(data_root=str(folder_root), split='train', pipeline=pipeline)
    for i in (0, 5):  # JPEG and PNG
        out = ds[i]
        x = out['inputs']
        assert x.shape == (3, 224, 224) and x.dtype == torch.uint8
        sample = out['data_samples']
        assert isinstance(sample, ClsDataSample)
        assert sample.gt_label.dtype == torch.int64 and sample.gt_label.tolist() == [ds.get_data_info(i)['gt_label']]
        assert sample.img_path == ds.get_data_info(i)['img_path']
        assert sample.ori_shape == (64, 80) and sample.img_shape == (224, 224)
    # the DeiT recipe pieces are really in the timm pipeline
    t = TRANSFORMS.build(dict(type='TimmClassificationTransform', input_size=(3, 96, 96)))
    names = repr(t.transform)
    assert 'RandomResizedCropAndInterpolation' in names and 'RandAugment' in names
    assert 'Normalize' not in names and 'RandomErasing' not in names and 'ColorJitter' not in names
    assert t({'img_path': ds.get_data_info(0)['img_path']})['img'].shape == (3, 96, 96)
    with pytest.raises(ValueError, match='build_random_erasing'):
        TimmClassificationTransform(re_prob=0.25)


def test_eval_transform_matches_torchvision(tmp_path):
    path = _jpeg(str(tmp_path / 'x.JPEG'), size=(300, 400), seed=3)
    t = TimmClassificationTransform(input_size=224, is_training=False, crop_pct=0.875)
    out = t({'img_path': path})
    with open(path, 'rb') as f:
        ref_img = Image.open(f).convert('RGB')
    ref = pil_to_tensor(T.CenterCrop(224)(T.Resize(256, interpolation=T.InterpolationMode.BICUBIC)(ref_img)))
    assert out['img'].dtype == torch.uint8 and out['img'].shape == (3, 224, 224)
    assert torch.equal(out['img'], ref)
    assert out['ori_shape'] == (300, 400)


def test_corrupt_and_missing_image_errors(tmp_path):
    good = _jpeg(str(tmp_path / 'train' / 'n0' / 'good.JPEG'), size=(64, 64))
    data = open(good, 'rb').read()
    bad = tmp_path / 'train' / 'n0' / 'bad.JPEG'
    bad.write_bytes(data[:len(data) // 3])  # truncated JPEG
    (tmp_path / 'train' / 'n0' / 'junk.jpg').write_bytes(b'definitely not a jpeg')
    ds = ImageNetDataset(data_root=str(tmp_path), split='train',
                         pipeline=[dict(type='TimmClassificationTransform', is_training=False, input_size=32),
                                   dict(type='PackClsInputs')])
    names = [os.path.basename(ds.get_data_info(i)['img_path']) for i in range(len(ds))]
    for name in ('bad.JPEG', 'junk.jpg'):
        with pytest.raises(ImageReadError, match=name):
            ds[names.index(name)]
    assert ds[names.index('good.JPEG')]['inputs'].shape == (3, 32, 32)
    t = TimmClassificationTransform(is_training=False, input_size=32)
    with pytest.raises(FileNotFoundError, match='gone.JPEG'):
        t({'img_path': str(tmp_path / 'gone.JPEG')})


def test_pack_and_random_erasing():
    packed = PackClsInputs()({'img': np.zeros((8, 6, 3), np.uint8), 'gt_label': 4, 'img_path': 'a.jpg'})
    assert packed['inputs'].shape == (3, 8, 6) and packed['data_samples'].gt_label.tolist() == [4]
    eraser = build_random_erasing(re_prob=1.0, re_mode='pixel', re_count=1)
    from timm.data.random_erasing import RandomErasing
    assert isinstance(eraser, RandomErasing) and eraser.per_pixel and eraser.probability == 1.0
    x = torch.full((4, 3, 32, 32), 7.0)
    y = eraser(x)
    assert y is x and all((x[i] != 7.0).any() for i in range(4))  # every sample got a noise box
    with pytest.raises(TypeError, match='float'):
        eraser(torch.zeros(3, 8, 8, dtype=torch.uint8))


class _Sized:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def test_repeat_aug_sampler_semantics():
    from timm.data.distributed_sampler import RepeatAugSampler as TimmRA
    n = 12
    s = DATA_SAMPLERS.build(dict(type='RepeatAugSampler', seed=0), default_args=dict(dataset=_Sized(n)))
    assert isinstance(s, RepeatAugSampler) and isinstance(s, TimmRA)
    s.set_epoch(0)
    e0 = list(s)
    # timm/DeiT: an epoch keeps len(dataset) steps on 1 replica; indices come in consecutive triples
    assert len(s) == n and len(e0) == n
    triples = [e0[i:i + 3] for i in range(0, n, 3)]
    assert all(len(set(t)) == 1 for t in triples) and len({t[0] for t in triples}) == n // 3
    # seed=0 reproduces timm's own order exactly (timm seeds with the epoch alone)
    ref = TimmRA(_Sized(n), num_replicas=1, rank=0)
    ref.set_epoch(0)
    assert e0 == list(ref)
    s.set_epoch(1)
    assert list(s) != e0
    s.set_epoch(0)
    assert list(s) == e0  # deterministic per epoch
    other = RepeatAugSampler(_Sized(n), seed=5)
    assert list(other) != e0
    # every index exactly 3 times per epoch when asked to (selected_round=0, ratio=1/3 on 1 replica)
    full = RepeatAugSampler(_Sized(n), seed=0, selected_round=0, selected_ratio=1 / 3)
    counts = np.bincount(list(full), minlength=n)
    assert len(full) == 3 * n and (counts == 3).all()
    # 3 replicas: the copies of each image land on 3 different ranks
    ranks = [list(RepeatAugSampler(_Sized(n), seed=0, num_replicas=3, rank=r)) for r in range(3)]
    assert all(len(r) == n // 3 for r in ranks)
    assert ranks[0] == ranks[1] == ranks[2]


def test_runner_build_dataloader(folder_root):
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner
    with DefaultScope.overwrite_default_scope('tlalign_mm'):  # as a config's default_scope would
        loader = _build_loader(Runner, folder_root)
    assert isinstance(loader.sampler, RepeatAugSampler) and loader.sampler.seed == 0
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    for b in batches:
        assert b['inputs'].shape == (2, 3, 64, 64) and b['inputs'].dtype == torch.uint8
        labels = torch.cat([s.gt_label for s in b['data_samples']])
        assert labels.shape == (2,) and labels.dtype == torch.int64


def _build_loader(Runner, folder_root):
    return Runner.build_dataloader(dict(
        batch_size=2, num_workers=0,
        sampler=dict(type='RepeatAugSampler', num_repeats=3, shuffle=True),
        dataset=dict(type='ImageNetDataset', data_root=str(folder_root), split='train',
                     pipeline=[dict(type='TimmClassificationTransform', input_size=64),
                               dict(type='PackClsInputs')]),
        collate_fn=dict(type='default_collate')), seed=0)


def test_randaugment_posterize_zero_bits_works():
    """timm's RandAugment 'inc1' (DeiT recipe) asks posterize for 0 bits at high magnitude.

    Pillow 13 raises on that; the environment pins Pillow < 13, where it yields a black image.
    A crash here would stop ImageNet pretraining at a random iteration.
    """
    import numpy as np
    from PIL import Image
    from timm.data.auto_augment import posterize

    img = Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8))
    out = np.asarray(posterize(img, 0))
    assert out.shape == (8, 8, 3) and out.max() == 0
