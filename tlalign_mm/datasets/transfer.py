"""Transfer-learning sets (CIFAR-10 / 100, Flowers-102, Stanford Cars) for mmengine, read by
torchvision's dataset classes from their standard local formats (never downloaded).

``TorchvisionClsDataset(dataset='CIFAR10', data_root=..., split='train')`` builds the torchvision
class with ``download=False`` and hands the pipeline ``dict(img_path, gt_label)`` (files) or
``dict(img, img_path, gt_label)`` (CIFAR's in-memory arrays).  torchvision checks the published
MD5 sums of CIFAR's and Flowers' files; here only their presence is checked, so that a local copy
in the right layout (or a test's tiny files in the same formats) is read as it is.
"""
from __future__ import annotations

import os.path as osp
from typing import Optional

from mmengine.dataset import BaseDataset

from ..registry import DATASETS

__all__ = ['TorchvisionClsDataset', 'TRANSFER_SETS']

#: name -> (torchvision class, {split: constructor kwargs}, number of classes, expected layout)
TRANSFER_SETS = {
    'CIFAR10': ('CIFAR10', {'train': dict(train=True), 'test': dict(train=False)}, 10,
                '{root}/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} (the "python version")'),
    'CIFAR100': ('CIFAR100', {'train': dict(train=True), 'test': dict(train=False)}, 100,
                 '{root}/cifar-100-python/{train, test, meta} (the "python version")'),
    'Flowers102': ('Flowers102', {s: dict(split=s) for s in ('train', 'val', 'test')}, 102,
                   '{root}/flowers-102/{jpg/image_00001.jpg ..., imagelabels.mat, setid.mat}'),
    'StanfordCars': ('StanfordCars', {s: dict(split=s) for s in ('train', 'test')}, 196,
                     '{root}/stanford_cars/{devkit/{cars_meta.mat, cars_train_annos.mat}, cars_train/*.jpg, '
                     'cars_test/*.jpg, cars_test_annos_withlabels.mat}'),
}


def _local(tv_cls):
    """The torchvision class with its MD5 check replaced by a presence check."""

    class Local(tv_cls):
        def _check_integrity(self) -> bool:
            if hasattr(self, 'train_list'):                                     # CIFAR
                names = [f for f, _ in self.train_list + self.test_list] + [self.meta['filename']]
                return all(osp.isfile(osp.join(self.root, self.base_folder, n)) for n in names)
            if hasattr(self, '_file_dict'):                                     # Flowers102
                return self._images_folder.is_dir() and all(
                    (self._base_folder / f).is_file() for f, _ in
                    (self._file_dict['label'], self._file_dict['setid']))
            return super()._check_integrity()

        def _load_meta(self) -> None:                                          # CIFAR, without MD5
            import pickle
            path = osp.join(self.root, self.base_folder, self.meta['filename'])
            if not osp.isfile(path):
                raise RuntimeError(f'metadata file {path} not found')
            with open(path, 'rb') as f:
                self.classes = pickle.load(f, encoding='latin1')[self.meta['key']]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    Local.__name__ = tv_cls.__name__
    return Local


@DATASETS.register_module()
class TorchvisionClsDataset(BaseDataset):
    """A torchvision classification set (:data:`TRANSFER_SETS`) as an mmengine dataset.

    Args:
        dataset: 'CIFAR10', 'CIFAR100', 'Flowers102' or 'StanfordCars'.
        data_root: the folder torchvision's ``root`` points at (see the layouts).
        split: 'train' / 'test' (Flowers102 also 'val'; 'trainval' joins its train and val).
        pipeline, test_mode, indices, serialize_data, lazy_init, max_refetch: as mmengine's
            ``BaseDataset``.

    Samples: ``dict(img_path: str, gt_label: int)``, plus ``img`` (32 x 32 x 3 uint8 RGB array)
    for CIFAR.  ``metainfo['classes']`` holds the class names.

    Raises:
        ValueError: an unknown dataset or split (the message lists the known ones).
        FileNotFoundError: nothing in the expected layout under ``data_root`` (the message gives
            the layout; nothing is downloaded).
    """

    def __init__(self, dataset: str, data_root: str, split: str = 'train', pipeline=(), test_mode: bool = False,
                 indices: Optional[int] = None, serialize_data: bool = True, lazy_init: bool = False,
                 max_refetch: int = 1000, metainfo: Optional[dict] = None):
        if dataset not in TRANSFER_SETS:
            raise ValueError(f'TorchvisionClsDataset: unknown dataset {dataset!r}; known: {sorted(TRANSFER_SETS)}')
        splits = set(TRANSFER_SETS[dataset][1]) | ({'trainval'} if dataset == 'Flowers102' else set())
        if split not in splits:
            raise ValueError(f'TorchvisionClsDataset({dataset}): unknown split {split!r}; known: {sorted(splits)}')
        self.dataset, self.split = dataset, split
        super().__init__(data_root=data_root, pipeline=pipeline, test_mode=test_mode, indices=indices,
                         serialize_data=serialize_data, lazy_init=lazy_init, max_refetch=max_refetch,
                         metainfo=metainfo)

    def _torchvision(self, split: str):
        import torchvision.datasets as tvd
        name, kwargs, _, layout = TRANSFER_SETS[self.dataset]
        try:
            return _local(getattr(tvd, name))(root=self.data_root, download=False, **kwargs[split])
        except RuntimeError as e:
            raise FileNotFoundError(
                f'{self.dataset} ({split}) not found under data_root={self.data_root!r} ({e}). Expected layout: '
                + layout.replace('{root}', str(self.data_root))
                + '. Download it yourself: nothing is fetched here.') from None

    def load_data_list(self) -> list[dict]:
        """``[dict(img_path, gt_label[, img]), ...]`` from the torchvision class."""
        parts = ['train', 'val'] if self.split == 'trainval' else [self.split]
        data_list, classes = [], None
        for split in parts:
            tv = self._torchvision(split)
            if hasattr(tv, 'data'):                                             # CIFAR: in memory
                data_list += [dict(img=img, img_path=f'{self.dataset}/{split}/{i}', gt_label=int(t))
                              for i, (img, t) in enumerate(zip(tv.data, tv.targets))]
            elif hasattr(tv, '_samples'):                                       # StanfordCars
                data_list += [dict(img_path=str(p), gt_label=int(t)) for p, t in tv._samples]
            else:                                                               # Flowers102
                data_list += [dict(img_path=str(p), gt_label=int(t)) for p, t in zip(tv._image_files, tv._labels)]
            classes = getattr(tv, 'classes', None) or classes
        n = TRANSFER_SETS[self.dataset][2]
        self._metainfo['classes'] = tuple(classes) if classes else tuple(str(i) for i in range(n))
        return data_list
