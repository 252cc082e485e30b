"""ImageNet-style classification datasets: a class-per-folder tree or an annotation list.

Two on-disk layouts are understood (the same two as mmpretrain's ``ImageNet`` / ``CustomDataset``
and torchvision's ``ImageFolder``, without depending on either)::

    folder layout (classes = sorted sub-folder names, label = position in that list)
        <data_root>/<split>/<wnid>/<image>.JPEG     e.g. data/imagenet/train/n01440764/n01440764_18.JPEG

    annotation-list layout (one '<relative/path> <label>' per line)
        <data_root>/<ann_file>                      e.g. data/imagenet/meta/val.txt
        <data_root>/<data_prefix>/<relative/path>   e.g. data/imagenet/val/ILSVRC2012_val_00000001.JPEG

Each sample handed to the pipeline is ``dict(img_path=str, gt_label=int, sample_idx=int)``; the
image is read by the pipeline (:class:`~tlalign_mm.datasets.transforms.TimmClassificationTransform`),
not here, so building the dataset costs one directory walk or one text-file read.
"""
from __future__ import annotations

import logging
import os
import os.path as osp
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from mmengine.dataset import BaseDataset
from mmengine.fileio import list_from_file
from mmengine.logging import print_log

from ..registry import DATASETS, TRANSFORMS

__all__ = ['IMG_EXTENSIONS', 'ImageNetDataset', 'ImageFolderDataset']

#: File suffixes (compared case-insensitively) that count as images in the folder layout.
IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')

_SPLITS = ('train', 'val', 'test')

def _layout_help(split: str = '') -> str:
    """Both accepted layouts, spelled with the requested split (``train`` when none was given)."""
    split = split or 'train'
    return (
        'Expected one of these layouts:\n'
        '  folder layout (classes = sorted sub-folder names):\n'
        f'    <data_root>/{split}/<wnid>/<image>.JPEG     e.g. data/imagenet/{split}/n01440764/n01440764_18.JPEG\n'
        f"    config: dataset=dict(type='ImageNetDataset', data_root='data/imagenet', split='{split}')\n"
        "  annotation-list layout (lines '<relative/path> <label>', paths relative to data_prefix):\n"
        '    <data_root>/<ann_file>                      e.g. data/imagenet/meta/val.txt\n'
        '    <data_root>/<data_prefix>/<relative/path>   e.g. data/imagenet/val/ILSVRC2012_val_00000001.JPEG\n'
        "    config: dataset=dict(type='ImageNetDataset', data_root='data/imagenet', split='val', "
        "ann_file='meta/val.txt')")


def _build_pipeline_step(step: dict | Callable) -> dict | Callable:
    """Build a pipeline dict from tlalign_mm's TRANSFORMS (falling back to mmengine's).

    mmengine's ``Compose`` builds from the root registry under the *current default scope*, so
    without ``default_scope='tlalign_mm'`` it would not find our transforms.  Names that neither
    our registry nor its parent know are left as dicts for mmengine's ``Compose`` (which then
    looks them up under the default scope, e.g. another codebase's transforms).
    """
    if isinstance(step, Mapping) and isinstance(step.get('type'), str):
        cls = TRANSFORMS.get(step['type'])
        if cls is not None:
            args = dict(step)
            args.pop('type')
            return cls(**args)
    return step


@DATASETS.register_module()
class ImageNetDataset(BaseDataset):
    """ImageNet-1k (or any class-per-folder image set) as an mmengine ``BaseDataset``.

    Args:
        data_root: Root folder; relative ``ann_file`` / ``data_prefix`` / ``classes`` files are
            joined to it.
        split: ``'train'``, ``'val'`` or ``'test'``; the image folder is ``<data_root>/<split>``
            unless ``data_prefix`` is given.  ``''`` means "images directly under data_root".
        ann_file: Optional annotation list, one ``<relative/path> <label>`` per line (blank lines
            skipped; the path may contain spaces, the label is the last field, an int >= 0).
            Without it the folder layout is used.
        data_prefix: Image folder, a str or mmengine's ``dict(img_path=...)``; defaults to
            ``split``.  Annotation-list paths are relative to it.
        classes: Class names: a sequence of str, or a text file with one name per line.
            Folder layout: fixes the label order (label = index in ``classes``); sub-folders not
            listed are skipped with a warning.  Annotation-list layout: labels must be
            ``< len(classes)``.  Default: folder layout -> sorted sub-folder names (hidden
            folders, i.e. starting with '.', ignored), the torchvision ``ImageFolder`` / timm
            ``ImageDataset`` convention; annotation-list layout -> ``('0', ..., str(max_label))``.
        extensions: Image suffixes accepted in the folder layout (case-insensitive).
        pipeline: Transforms (dicts or callables).  Dicts are built from tlalign_mm's
            ``TRANSFORMS`` (so no ``default_scope`` is needed), else left to mmengine.
        metainfo, filter_cfg, indices, serialize_data, test_mode, max_refetch: as in
            ``mmengine.dataset.BaseDataset``.
        lazy_init: As in ``BaseDataset``: skip building the sample list until first use.  In the
            folder layout ``metainfo['classes']`` is still available (one ``listdir``); in the
            annotation-list layout without ``classes`` it is known only after ``full_init()``.

    Samples: ``get_data_info(i)`` -> ``dict(img_path: str, gt_label: int, sample_idx: int)``;
    ``dataset[i]`` is that dict after the pipeline.

    Raises:
        FileNotFoundError: image folder or ``ann_file`` missing, or the first listed image absent
            (message names the path and both layouts).
        ValueError: bad ``split``, no class sub-folders, no images, malformed annotation line
            (names file and line), label out of range.
    """

    METAINFO: dict = dict(classes=None)

    def __init__(self,
                 data_root: str = '',
                 split: str = '',
                 ann_file: str = '',
                 data_prefix: str | dict | None = None,
                 classes: str | Sequence[str] | None = None,
                 extensions: Sequence[str] = IMG_EXTENSIONS,
                 pipeline: Sequence[dict | Callable] = (),
                 metainfo: Mapping | None = None,
                 test_mode: bool = False,
                 lazy_init: bool = False,
                 **kwargs) -> None:
        if split and split not in _SPLITS:
            raise ValueError(f'{type(self).__name__}: split must be one of {_SPLITS} or \'\', got {split!r}')
        self.split = split
        self.extensions = tuple(e.lower() if e.startswith('.') else '.' + e.lower() for e in extensions)
        if data_prefix is None:
            data_prefix = split
        if isinstance(data_prefix, str):
            data_prefix = dict(img_path=data_prefix)
        metainfo = dict(metainfo or {})
        if classes is None:
            classes = metainfo.pop('classes', None)
        else:
            metainfo.pop('classes', None)
        pipeline = [_build_pipeline_step(step) for step in pipeline]
        # mmpretrain's pattern: build lazily, fix the class list, then load unless asked not to.
        super().__init__(ann_file=ann_file, metainfo=metainfo, data_root=data_root,
                         data_prefix=data_prefix, pipeline=pipeline, test_mode=test_mode,
                         lazy_init=True, **kwargs)
        if classes is not None:
            self._metainfo['classes'] = self._read_classes(classes)
        elif not self.ann_file:
            self._metainfo['classes'] = tuple(self._find_class_folders())
        if not lazy_init:
            self.full_init()

    # ------------------------------------------------------------------ paths and classes
    @property
    def img_prefix(self) -> str:
        """The image folder, ``data_root`` joined with ``data_prefix['img_path']``."""
        return self.data_prefix.get('img_path', '') or self.data_root or ''

    @property
    def num_classes(self) -> int | None:
        classes = self._metainfo.get('classes')
        return None if classes is None else len(classes)

    def _missing(self, what: str, path: str) -> FileNotFoundError:
        return FileNotFoundError(
            f'{type(self).__name__}: {what} {path!r} does not exist '
            f'(data_root={self.data_root!r}, split={self.split!r}, ann_file={self.ann_file!r}, '
            f'data_prefix={self.data_prefix.get("img_path", "")!r}).\n{_layout_help(self.split)}')

    def _read_classes(self, classes: str | Sequence[str]) -> tuple[str, ...]:
        if isinstance(classes, str):
            path = classes
            if not osp.isabs(path) and self.data_root and not osp.exists(path):
                path = osp.join(self.data_root, path)
            if not osp.isfile(path):
                raise self._missing('classes file', path)
            names = [line.strip() for line in list_from_file(path)]
            classes = [n for n in names if n]
        classes = tuple(str(c) for c in classes)
        if not classes:
            raise ValueError(f'{type(self).__name__}: `classes` is empty')
        if len(set(classes)) != len(classes):
            raise ValueError(f'{type(self).__name__}: `classes` has duplicates')
        return classes

    def _find_class_folders(self) -> list[str]:
        root = self.img_prefix
        if not root or not osp.isdir(root):
            raise self._missing('image folder', root)
        names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith('.'))
        if not names:
            raise ValueError(f'{type(self).__name__}: no class sub-folders found in {root!r} '
                             f'(the folder layout needs one sub-folder per class).\n{_layout_help(self.split)}')
        return names

    # ------------------------------------------------------------------ loading
    def load_data_list(self) -> list[dict]:
        """Return ``[dict(img_path=str, gt_label=int), ...]`` from the folder tree or ann_file."""
        if self.ann_file:
            return self._load_annotation_list()
        return self._load_folder_tree()

    def _load_folder_tree(self) -> list[dict]:
        root = self.img_prefix
        folders = self._find_class_folders()
        classes = self._metainfo['classes']
        label_of = {name: i for i, name in enumerate(classes)}
        unknown = [f for f in folders if f not in label_of]
        if unknown:
            print_log(f'{type(self).__name__}: skipping {len(unknown)} sub-folder(s) of {root!r} not in '
                      f'`classes`: {unknown[:5]}{" ..." if len(unknown) > 5 else ""}',
                      logger='current', level=logging.WARNING)
        absent = [c for c in classes if c not in set(folders)]
        if absent:
            print_log(f'{type(self).__name__}: {len(absent)} class(es) have no folder in {root!r}: '
                      f'{absent[:5]}{" ..." if len(absent) > 5 else ""}', logger='current', level=logging.WARNING)
        data_list, empty = [], []
        for name in folders:
            if name not in label_of:
                continue
            label, before = label_of[name], len(data_list)
            class_dir = osp.join(root, name)
            for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
                dirnames.sort()
                for fname in sorted(filenames):
                    if osp.splitext(fname)[1].lower() in self.extensions:
                        data_list.append(dict(img_path=osp.join(dirpath, fname), gt_label=label))
            if len(data_list) == before:
                empty.append(name)
        if empty:
            print_log(f'{type(self).__name__}: {len(empty)} class folder(s) hold no image '
                      f'({self.extensions}): {empty[:5]}', logger='current', level=logging.WARNING)
        if not data_list:
            raise ValueError(f'{type(self).__name__}: no images with suffix in {self.extensions} under '
                             f'{root!r}/<class>/.\n{_layout_help(self.split)}')
        return data_list

    def _load_annotation_list(self) -> list[dict]:
        ann_file, prefix = self.ann_file, self.data_prefix.get('img_path', '')
        if not osp.isfile(ann_file):
            raise self._missing('annotation file', ann_file)
        data_list = []
        for lineno, line in enumerate(list_from_file(ann_file), start=1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(maxsplit=1)
            try:
                label = int(parts[1]) if len(parts) == 2 else None
            except ValueError:
                label = None
            if label is None or label < 0:
                raise ValueError(f'{type(self).__name__}: {ann_file}:{lineno}: expected '
                                 f'\'<relative/path> <label>\' with an int label >= 0, got {line!r}')
            path = parts[0] if osp.isabs(parts[0]) or not prefix else osp.join(prefix, parts[0])
            data_list.append(dict(img_path=path, gt_label=label))
        if not data_list:
            raise ValueError(f'{type(self).__name__}: annotation file {ann_file!r} lists no image.\n'
                             f'{_layout_help(self.split)}')
        if not osp.exists(data_list[0]['img_path']):  # one stat: catches a wrong data_prefix early
            raise self._missing(f'image (line 1 of {ann_file!r})', data_list[0]['img_path'])
        max_label = max(d['gt_label'] for d in data_list)
        classes = self._metainfo.get('classes')
        if classes is None:
            self._metainfo['classes'] = tuple(str(i) for i in range(max_label + 1))
        elif max_label >= len(classes):
            raise ValueError(f'{type(self).__name__}: {ann_file!r} has label {max_label} but only '
                             f'{len(classes)} classes were given')
        return data_list

    # ------------------------------------------------------------------ helpers
    def get_cat_ids(self, idx: int) -> list[int]:
        """``[gt_label]`` of sample ``idx`` (used by mmengine's ``ClassBalancedDataset``)."""
        return [int(self.get_data_info(idx)['gt_label'])]

    def get_gt_labels(self) -> np.ndarray:
        """All labels, shape (len(self),), int64."""
        return np.array([self.get_data_info(i)['gt_label'] for i in range(len(self))], dtype=np.int64)

    def extra_repr(self) -> list[str]:
        return [f'split: {self.split!r}', f'image folder: {self.img_prefix!r}',
                f'annotation file: {self.ann_file!r}', f'number of classes: {self.num_classes}']

    def __repr__(self) -> str:
        head = f'Dataset {type(self).__name__}'
        body = [f'number of samples: {len(self) if self._fully_initialized else "(not loaded)"}']
        body += self.extra_repr()
        return '\n'.join([head] + ['    ' + line for line in body])


@DATASETS.register_module()
class ImageFolderDataset(ImageNetDataset):
    """Same as :class:`ImageNetDataset`, under a generic name for non-ImageNet class folders
    (e.g. Fashion-MNIST exported as ``<root>/<split>/<class>/*.png``; grey images become RGB)."""
