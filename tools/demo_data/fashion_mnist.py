"""The ``fashion_mnist`` set (group ``cls``): Fashion-MNIST from the Debian package ``dataset-fashion-mnist``.

Reads the four IDX files (``.gz`` as Debian installs them, or unpacked), checks their decompressed
content against the pinned sha256 and writes the first N images of every class as PNGs in the
``ImageNetDataset`` folder layout ``{train,val}/<NN_class>/<idx>.png``.
"""
from __future__ import annotations

import gzip
import os
import os.path as osp
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from .common import (
    RECIPE_VERSION,
    DataError,
    DemoSet,
    SourceUnavailable,
    log,
    md_table,
    png_bytes,
    sha256_bytes,
    write_bytes,
)

FASHION_MNIST = dict(
    debian_package='dataset-fashion-mnist',
    debian_version='0.0~git20200523.55506a9-1',
    default_dir='/usr/share/datasets/fashion-mnist',
    upstream='https://github.com/zalandoresearch/fashion-mnist',
    licence='MIT (Debian: Expat), Copyright 2017 Zalando SE',
    # gz: the bytes of the Debian files (Debian recompressed them: they differ from upstream's .gz);
    # raw: the decompressed IDX content, the authoritative pin (upstream .gz or unpacked files pass it).
    files={
        'train-images-idx3-ubyte': dict(
            magic=2051, count=60000,
            gz='b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7',
            raw='c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888'),
        'train-labels-idx1-ubyte': dict(
            magic=2049, count=60000,
            gz='0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056',
            raw='bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9'),
        't10k-images-idx3-ubyte': dict(
            magic=2051, count=10000,
            gz='cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa',
            raw='5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b'),
        't10k-labels-idx1-ubyte': dict(
            magic=2049, count=10000,
            gz='8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05',
            raw='0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34'),
    },
)

#: Fashion-MNIST label order (0..9); folder names are ``NN_<slug>`` so that sorted order == label order.
FASHION_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                   'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')

FASHION_MNIST_LICENCE = """\
The MIT License (MIT) Copyright (c) 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT
NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT
OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def fashion_folder(label: int) -> str:
    """The class folder of ``label``: ``NN_<name>`` (``00_t-shirt_top``), so sorted order == label order."""
    slug = ''.join(ch if ch.isalnum() or ch == '-' else '_' for ch in FASHION_CLASSES[label].lower())
    return f'{label:02d}_{slug}'


def _fashion_missing_message(src: Path, missing: list[str], install_offer: bool) -> str:
    pkg = FASHION_MNIST['debian_package']
    lines = [f'Fashion-MNIST source files are missing in {src}:']
    lines += [f'    {src / m}' for m in missing]
    lines += [f"They come from the Debian package {pkg} (pinned: {FASHION_MNIST['debian_version']}), "
              'which installs them as',
              *[f"    {FASHION_MNIST['default_dir']}/{n}.gz" for n in FASHION_MNIST['files']]]
    if install_offer:
        lines += [f'You are root and apt-get exists: re-run with --install-apt to run '
                  f"'apt-get install -y {pkg}'."]
    else:
        lines += [f"Install it ('apt-get install {pkg}' as root), or download the four *-ubyte.gz files from",
                  f"    {FASHION_MNIST['upstream']} (data/fashion) into a folder and pass --fashion-mnist-dir DIR",
                  '    (the decompressed content is checked against the pinned sha256; .gz or unpacked both work).']
    lines += ['Layout this tool writes (what ImageNetDataset reads; a hand-made copy belongs outside',
              'data/demo, where this tool would treat it as half-written and rebuild it):',
              '    <data_root>/{train,val}/<NN_class>/<idx>.png   e.g. fashion_mnist/train/00_t-shirt_top/00001.png',
              '    classes (sorted folder names = labels 0..9): '
              + ', '.join(fashion_folder(i) for i in range(10))]
    return '\n'.join(lines)


def _can_apt() -> bool:
    return hasattr(os, 'geteuid') and os.geteuid() == 0 and shutil.which('apt-get') is not None


def _apt_install(pkg: str) -> None:
    log(f"  running 'apt-get install -y {pkg}' ...")
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
    rc = subprocess.run(['apt-get', 'install', '-y', pkg], env=env).returncode
    if rc != 0:
        log("  apt-get install failed; running 'apt-get update' and trying once more ...")
        subprocess.run(['apt-get', 'update'], env=env)
        rc = subprocess.run(['apt-get', 'install', '-y', pkg], env=env).returncode
    if rc != 0:
        raise SourceUnavailable(f"'apt-get install -y {pkg}' failed (exit {rc}).")


def read_fashion_sources(src: Path, args) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Decompressed, pin-checked IDX arrays from ``src`` (``*.gz`` preferred, unpacked accepted)."""
    def locate():
        paths, missing = {}, []
        for n in FASHION_MNIST['files']:
            for cand in (src / f'{n}.gz', src / n):
                if cand.is_file():
                    paths[n] = cand
                    break
            else:
                missing.append(f'{n}.gz')
        return paths, missing

    paths, missing = locate()
    is_default = osp.realpath(src) == osp.realpath(FASHION_MNIST['default_dir'])
    if missing and args.install_apt:
        if not is_default:
            raise SourceUnavailable('--install-apt installs into ' + FASHION_MNIST['default_dir']
                                    + f', but --fashion-mnist-dir is {src}.')
        if not _can_apt():
            raise SourceUnavailable('--install-apt needs root and apt-get.\n'
                                    + _fashion_missing_message(src, missing, False))
        _apt_install(FASHION_MNIST['debian_package'])
        paths, missing = locate()
    if missing:
        raise SourceUnavailable(_fashion_missing_message(src, missing, is_default and _can_apt()))
    arrays, hashes = {}, {}
    for n, spec in FASHION_MNIST['files'].items():
        blob = paths[n].read_bytes()
        raw = gzip.decompress(blob) if paths[n].suffix == '.gz' else blob
        raw_sha = sha256_bytes(raw)
        if raw_sha != spec['raw']:
            raise DataError(f'{paths[n]}: decompressed content has sha256 {raw_sha}, expected {spec["raw"]} '
                            '(not the Fashion-MNIST release this tool pins)')
        magic, count = (int(v) for v in np.frombuffer(raw[:8], dtype='>u4'))
        if magic != spec['magic'] or count != spec['count']:
            raise DataError(f'{paths[n]}: IDX header magic={magic} count={count}, '
                            f'expected {spec["magic"]} / {spec["count"]}')
        if magic == 2051:
            rows, cols = (int(v) for v in np.frombuffer(raw[8:16], dtype='>u4'))
            arrays[n] = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, rows, cols)
        else:
            arrays[n] = np.frombuffer(raw, dtype=np.uint8, offset=8)
            if arrays[n].max() > 9:
                raise DataError(f'{paths[n]}: label > 9')
        hashes[n] = dict(file=paths[n].name, file_sha256=sha256_bytes(blob), content_sha256=raw_sha)
    return arrays, hashes


def first_per_class(labels: np.ndarray, n: int) -> list[int]:
    """Indices of the first ``n`` samples of every class, in file order (deterministic)."""
    out = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)[:n]
        if len(idx) < n:
            raise DataError(f'only {len(idx)} samples of class {c} available, {n} requested')
        out += idx.tolist()
    return sorted(out)


class FashionMnistSet(DemoSet):
    """The first N train / test images of every Fashion-MNIST class in the ImageNetDataset folder layout."""

    name = 'fashion_mnist'
    group = 'cls'

    def recipe(self, args):
        """Debian package, IDX content pins and the per-class counts."""
        return dict(recipe_version=RECIPE_VERSION, source=f"debian:{FASHION_MNIST['debian_package']}",
                    pins={n: s['raw'] for n, s in FASHION_MNIST['files'].items()},
                    train_per_class=args.cls_train_per_class, val_per_class=args.cls_val_per_class)

    def build(self, root, args, cache):
        """Read the pinned IDX files and write the per-class PNGs, ``classes.txt`` and the licence."""
        src = Path(args.fashion_mnist_dir)
        log(f'  reading IDX files from {src}')
        arrays, hashes = read_fashion_sources(src, args)
        splits = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', args.cls_train_per_class),
                  'val': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte', args.cls_val_per_class)}
        counts = {}
        for split, (img_name, lab_name, n) in splits.items():
            images, labels = arrays[img_name], arrays[lab_name]
            picked = first_per_class(labels, n)
            for i in picked:
                lab = int(labels[i])
                write_bytes(root / split / fashion_folder(lab) / f'{i:05d}.png',
                            png_bytes(Image.fromarray(np.ascontiguousarray(images[i]))))
            counts[split] = len(picked)
            log(f'  {split}: {len(picked)} images ({n} per class) from {img_name}, source indices '
                f'{picked[0]}..{picked[-1]}')
        (root / 'classes.txt').write_text(''.join(fashion_folder(i) + '\n' for i in range(10)))
        (root / 'LICENSE.fashion-mnist.txt').write_text(FASHION_MNIST_LICENCE)
        card = self.card(args, hashes, counts)
        return dict(card=card, counts=counts, sources=hashes)

    def card(self, args, hashes, counts):
        """The set's ``DATA_CARD.md``."""
        fm = FASHION_MNIST
        rows = [[f'`{fashion_folder(i)}`', i, name, args.cls_train_per_class, args.cls_val_per_class]
                for i, name in enumerate(FASHION_CLASSES)]
        src_rows = [[h['file'], f"`{h['file_sha256']}`", f"`{h['content_sha256']}`"] for h in hashes.values()]
        return f"""# Fashion-MNIST demo subset (classification)

Real 28x28 greyscale photos of Zalando articles, 10 classes. A small deterministic subset for
exercising the ImageNet-style classification pipeline (`ImageNetDataset` folder layout); the
transforms convert to RGB and resize.

- **Source**: Debian package `{fm['debian_package']}` {fm['debian_version']}
  (files under `{fm['default_dir']}/`), upstream {fm['upstream']}.
- **Licence**: {fm['licence']} (see `LICENSE.fashion-mnist.txt`).
- **Subset**: the first {args.cls_train_per_class} images of each class (file order) of the
  training file -> `train/`; the first {args.cls_val_per_class} of each class of the test (t10k)
  file -> `val/`. File names are the index in the source IDX file (`<idx>.png`).
- **Counts**: train {counts['train']}, val {counts['val']}.

## Layout

```
fashion_mnist/
  train/<NN_class>/<idx>.png   # 28x28, mode L
  val/<NN_class>/<idx>.png
  classes.txt                  # folder names, line i = label i
```

Config: `dataset=dict(type='ImageNetDataset', data_root='data/demo/fashion_mnist', split='train')`
(classes = sorted folder names, so label order = Fashion-MNIST label order).

## Classes

{md_table(['folder', 'label', 'Fashion-MNIST name', 'train', 'val'], rows)}

## Sources (sha256)

The `.gz` files of the Debian package are recompressed by Debian, so their bytes differ from
upstream's `.gz`; the decompressed IDX content is what this tool pins (upstream files pass too).

{md_table(['file', 'file sha256', 'decompressed IDX sha256'], src_rows)}

## Quirks handled

- IDX parsed directly (big-endian header, magic 2051/2049 and counts checked).
- Class names contain `/` and spaces (`T-shirt/top`, `Ankle boot`): folder names are `NN_` plus
  the name lowercased, every character other than a letter, digit or hyphen replaced by `_`
  (`00_t-shirt_top`, `09_ankle_boot`), so that sorted order is label order.
"""
