"""Build small, real demo datasets under ``data/demo/`` from package registries only.

None of these is ImageNet, ADE20K or COCO.  They are real photos with real annotations that
exercise the real classification / segmentation / detection pipelines end to end; the full
datasets are the user's own (standard OpenMMLab layouts under ``data/``).

Sets (``--only`` takes group names or set names, comma-separated)::

    group set            source (pinned)                          content
    cls   fashion_mnist  Debian package dataset-fashion-mnist     28x28 grey photos, 10 classes
    seg   voc_seg        labelme==6.3.1 source archive            3 VOC2012 photos + 5 video frames,
                                                                  class masks
    coco  coco_voc       labelme==6.3.1 source archive            3 VOC photos, 12 COCO polygons
    coco  coco_trees     deepforest==2.1.0 wheel                  4 aerial images, 951 tree boxes

Layouts written under ``--out`` (default ``<repo>/data/demo``)::

    fashion_mnist/{train,val}/<NN_class>/<idx>.png               ImageNetDataset folder layout
    voc_seg/{img_dir,ann_dir}/{train,val}/<stem>.{jpg,png}       mmseg (labels: uint8, 255 = ignore)
    coco_voc/annotations/instances_{train,val}.json + {train,val}/   mmdet CocoDataset
    coco_trees/annotations/instances_{train,val}.json + {train,val}/ mmdet CocoDataset (boxes only)

Licences: Fashion-MNIST MIT (Zalando SE); labelme GPL-3.0 (VOC photos from Flickr); deepforest
MIT.  Each set folder gets a ``DATA_CARD.md`` and a copy of the licence.

Reproducibility and idempotence:

* every downloaded archive is pinned by version and sha256 (pip checks it with
  ``--require-hashes``) and kept in a cache (``--cache``, default
  ``$TLALIGN_CACHE/downloads`` or ``~/.cache/tlalign_mm/downloads``); every source file read
  from an archive or from the Debian package is pinned by sha256 too and checked before use;
* outputs are deterministic (no timestamps; rebuilding gives byte-identical files);
* a set is built in ``<out>/.tmp-<set>-*`` and renamed into place when complete; it then holds a
  ``.complete`` marker (JSON: recipe, source hashes, sha256 of every output file) and a
  ``DATA_CARD.md``.  A re-run verifies the marker (recipe unchanged, every file present with its
  hash, no extra files) and prints ``up to date`` without touching anything or downloading;
  a set folder without a marker (half-written, or edited) is removed and rebuilt;
  ``--force`` rebuilds from the cached sources.

Exit status: 0 all requested sets are ready; 3 a source could not be had (missing Debian files,
registry unreachable); 1 any other failure (hash mismatch, validation error); 2 bad arguments.

Examples::

    python tools/prepare_demo_data.py                          # all sets into data/demo
    python tools/prepare_demo_data.py --only cls --cls-train-per-class 10 --cls-val-per-class 5
    python tools/prepare_demo_data.py --only seg,coco --cache /tmp/dl --force
    python tools/prepare_demo_data.py --only cls --install-apt # apt-get install dataset-fashion-mnist first
"""
from __future__ import annotations

import abc
import argparse
import contextlib
import gzip
import hashlib
import importlib.util
import io
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
#: Bumped whenever the conversion changes what is written (forces a rebuild of complete sets).
RECIPE_VERSION = 1
MARKER = '.complete'
CARD = 'DATA_CARD.md'

EXIT_FAILED = 1
EXIT_SOURCE_UNAVAILABLE = 3


class SourceUnavailable(RuntimeError):
    """A source (Debian files, a registry archive) cannot be had; the message says how to provide it."""


class DataError(RuntimeError):
    """A source does not match its pin, or a converted set fails validation."""


# --------------------------------------------------------------------------------------------
# Pins
# --------------------------------------------------------------------------------------------

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

_LM = 'examples/'
LABELME = dict(
    name='labelme', version='6.3.1', kind='sdist', filename='labelme-6.3.1.tar.gz',
    sha256='2947e0d8341a92faa7b3ee50cf4b672f838051c6bf24892526e95b64fd3a707e',
    prefix='labelme-6.3.1/', licence='GPL-3.0-only', page='https://pypi.org/project/labelme/6.3.1/#files',
    files={
        'LICENSE': '8ceb4b9ee5adedde47b31e975c1d90c73ad27b6b165a1dcd80c7c545eb65b903',
        # semantic segmentation: 3 PASCAL VOC 2012 photos, VOC class masks (-1 = __ignore__)
        _LM + 'semantic_segmentation/data_dataset_voc/class_names.txt':
            'fbb7c98a5329dd20f8ceab25ea091b1370eafcaaf19cab9536623e6e51552caa',
        _LM + 'semantic_segmentation/data_dataset_voc/JPEGImages/2011_000003.jpg':
            '4409c3cd06827e2add28a6dbde4beaceedc40540019065a88fa4306ecfbf9183',
        _LM + 'semantic_segmentation/data_dataset_voc/JPEGImages/2011_000006.jpg':
            '0a14b0d2e4fd82d1f20c911875051b2501c1a805f77fe8c05cad84ee1d6308d7',
        _LM + 'semantic_segmentation/data_dataset_voc/JPEGImages/2011_000025.jpg':
            '01f0b224bdc6b2b1d8155070d8544cc2642d8ab142b418969ec8aa95ac721bd5',
        _LM + 'semantic_segmentation/data_dataset_voc/SegmentationClassNpy/2011_000003.npy':
            'b8fa09887687b4d8352b24b165dbc49f90c3db16ef46e9a50bbf2e25e846a3bf',
        _LM + 'semantic_segmentation/data_dataset_voc/SegmentationClassNpy/2011_000006.npy':
            '8ec9437453f7a08774f0aaed553132d0a10acb2fba18235fba2e6023a4d49640',
        _LM + 'semantic_segmentation/data_dataset_voc/SegmentationClassNpy/2011_000025.npy':
            '653ba3cc8561515405a6abb87fcd042f6eed01fb2d0719f2c061a1508d721164',
        _LM + 'semantic_segmentation/data_dataset_voc/SegmentationClass/2011_000003.png':
            'b5e27fc8c38db53d26ed17a82344263db401066feafb2cf8e9a29f7acd43488c',
        _LM + 'semantic_segmentation/data_dataset_voc/SegmentationClass/2011_000006.png':
            '4791d59d7817eea320ca7360b6c3ec019f5001987036a3af4f1a582458ca767d',
        _LM + 'semantic_segmentation/data_dataset_voc/SegmentationClass/2011_000025.png':
            'c7a406ea94c185702bbc5d2af9b472a8a2a9f00b20f6d53efcf99b6d4b1e0676',
        # video annotation: 5 consecutive street frames, _background_/car/track masks
        _LM + 'video_annotation/data_dataset_voc/class_names.txt':
            '237b436baf4d544f64fb85d18e470d89ff90dc635ec041ffa70aa3291347336e',
        _LM + 'video_annotation/data_dataset_voc/JPEGImages/00000100.jpg':
            '703f2a06b7e1f57b8b0b506dc2132f941dc8685b0c56c67635ca756e229e7bf1',
        _LM + 'video_annotation/data_dataset_voc/JPEGImages/00000101.jpg':
            'fc103d75c25b40748d4f56817b83a1d8bf69546e3b5a62977bc9de688c97a271',
        _LM + 'video_annotation/data_dataset_voc/JPEGImages/00000102.jpg':
            'c2af2e5e11653185e5bf6d071e07c6289d6e11bc0ce2ee6062d325a81d548448',
        _LM + 'video_annotation/data_dataset_voc/JPEGImages/00000103.jpg':
            '7cff616cb49b8327d7193d9b358e474568ad638f826d0fbd47cf5cdc81392065',
        _LM + 'video_annotation/data_dataset_voc/JPEGImages/00000104.jpg':
            'aec6365060d160dd1a90c8206829c00c0e2860c967940566ce31b8df3137a990',
        _LM + 'video_annotation/data_dataset_voc/SegmentationClass/00000100.npy':
            '5b94013e03efc962df7d3fb2b153afb0e5d706312194c8a078950770229ca312',
        _LM + 'video_annotation/data_dataset_voc/SegmentationClass/00000101.npy':
            '60f982139b2de7c9628349b140a84c82b9035091b763e25f9317f4043350e3b2',
        _LM + 'video_annotation/data_dataset_voc/SegmentationClass/00000102.npy':
            'c484a5f50c63149f5381135b1d96bef7d947101a99173436cff26eb3a8b11b77',
        _LM + 'video_annotation/data_dataset_voc/SegmentationClass/00000103.npy':
            '79de97b4ceed4c305a5c1b9b34093026651fc0c6b9170e339177080dc4a3d549',
        _LM + 'video_annotation/data_dataset_voc/SegmentationClass/00000104.npy':
            'f25ada1944cf0960588cdfe7060e97bc8a4aeab3437402c8a41b733e5e682851',
        _LM + 'video_annotation/data_dataset_voc/SegmentationClassPNG/00000100.png':
            'd24ec17093b823650249c8345eb89aca0ea13ed3096e231706cb3e942d0aa790',
        _LM + 'video_annotation/data_dataset_voc/SegmentationClassPNG/00000101.png':
            '90c8d357a2f1749f824239b3116b3c204bf8b1d3c2746b815e642da149c1eb72',
        _LM + 'video_annotation/data_dataset_voc/SegmentationClassPNG/00000102.png':
            'b0c6be9090403ada51e4f9b50ea7e844b4f7bbddeb88b8ce41628d23b2925097',
        _LM + 'video_annotation/data_dataset_voc/SegmentationClassPNG/00000103.png':
            '74864400d47753f233f6e46cb9bb6386bbf698e4bb79737a25a0b73173d6a13d',
        _LM + 'video_annotation/data_dataset_voc/SegmentationClassPNG/00000104.png':
            '84d4b8ce62bdcc0496368603c7448c9e978d863bfe30a562159953d60d1df23e',
        # instance segmentation: the same 3 VOC photos (re-encoded) with 12 COCO polygons
        _LM + 'instance_segmentation/data_dataset_coco/annotations.json':
            '935081d34679b92a74e0dc1acf04e5ac97b01cba7eefe26d5572e761ebf16ec2',
        _LM + 'instance_segmentation/data_dataset_coco/JPEGImages/2011_000003.jpg':
            '40c7f2fbf740c7e9707f97047a83593f6c36d8951a737b4287528932d809e80d',
        _LM + 'instance_segmentation/data_dataset_coco/JPEGImages/2011_000006.jpg':
            '9f58b8e4aca7f0411d3c8fe365da1ba5de9c36c729bda2f32cefbbb246ef1e1f',
        _LM + 'instance_segmentation/data_dataset_coco/JPEGImages/2011_000025.jpg':
            '52794c29522d495c942baf7d41823b91479ec55723bcc72d6080540831701b82',
    },
)

_DF = 'deepforest/data/'
DEEPFOREST = dict(
    name='deepforest', version='2.1.0', kind='wheel', filename='deepforest-2.1.0-py3-none-any.whl',
    sha256='8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54',
    prefix='', licence='MIT', page='https://pypi.org/project/deepforest/2.1.0/#files',
    files={
        'deepforest-2.1.0.dist-info/licenses/LICENSE':
            '5487293ab54d4861d41b5f51622b236f610def978abf6d88091f74559232ab14',
        _DF + '2019_YELL_2_528000_4978000_image_crop2.xml':
            'bd431af6a5086d721eb731b22f5ea28cd8a8eab06883efc1c665391acbc68e11',
        _DF + '2019_YELL_2_528000_4978000_image_crop2.png':
            'a9bdb0f4447fdd899d22f567e0e20ba8320c5413b2ad0cd0ac8d9f3b6e0f9767',
        _DF + '2019_YELL_2_541000_4977000_image_crop.xml':
            'cefe4b96888bacbf8af1674f000082e549aa707aa6590d545effb23e43f26631',
        _DF + '2019_YELL_2_541000_4977000_image_crop.png':
            '178e58a23cc2642226a364a30f71bd9258ddc1b012c826f12250914a90c7a131',
        _DF + 'SOAP_061.xml': '4833280af75fd9c47965a93e38945282835e9e725cac412bdb9469d63480947c',
        _DF + 'SOAP_061.png': '256508f1a62149bec4a80879077a865caf50e8cace095e6564c76befa480d424',
        _DF + 'OSBS_029.xml': '1f68c4011d7b351c29ca755072e77f3d16e6fd1f995bd05a9dd4eb952b55373c',
        _DF + 'OSBS_029.png': 'd9477c6a00e4902c7bee487d4c5582c3b8b9a2f77f3908a29628b816b291e6ee',
    },
)

#: PASCAL VOC class order, spelled as mmseg's / mmdet's VOC datasets spell it.
VOC_CLASSES = ('background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat',
               'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant',
               'sheep', 'sofa', 'train', 'tvmonitor')
#: labelme's spellings -> ours.  'track' in labelme's video example labels a box truck.
LABELME_RENAME = {'_background_': 'background', 'potted plant': 'pottedplant', 'tv/monitor': 'tvmonitor',
                  'track': 'truck'}
SEG_CLASSES = VOC_CLASSES + ('truck',)
IGNORE_INDEX = 255

#: deepforest's 4 annotated images; OSBS_029 (a different NEON site) is held out as val.
TREE_IMAGES = (('2019_YELL_2_528000_4978000_image_crop2', 'train'),
               ('2019_YELL_2_541000_4977000_image_crop', 'train'),
               ('SOAP_061', 'train'),
               ('OSBS_029', 'val'))


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------

def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def log(msg: str) -> None:
    print(msg, flush=True)


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def png_bytes(img: Image.Image) -> bytes:
    """PNG encoding without metadata (deterministic for a given Pillow/zlib)."""
    buf = io.BytesIO()
    img.save(buf, format='PNG')
    return buf.getvalue()


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, sort_keys=False) + '\n')


def voc_palette(n: int = 256) -> list[int]:
    """The PASCAL VOC colour map (index 255 -> (224, 224, 192)) as a flat RGB list."""
    pal = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def label_png(label: np.ndarray) -> bytes:
    """A uint8 class-index map as a palette ('P') PNG: ``np.array(Image.open(f))`` gives the indices."""
    label = np.ascontiguousarray(label, dtype=np.uint8)
    img = Image.frombytes('P', (label.shape[1], label.shape[0]), label.tobytes())
    img.putpalette(voc_palette())
    return png_bytes(img)


def default_cache() -> Path:
    root = os.environ.get('TLALIGN_CACHE') or osp.join(osp.expanduser('~'), '.cache', 'tlalign_mm')
    return Path(root) / 'downloads'


def md_table(header: list[str], rows: list[list]) -> str:
    out = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    out += ['| ' + ' | '.join(str(c) for c in r) + ' |' for r in rows]
    return '\n'.join(out)


# --------------------------------------------------------------------------------------------
# Sources: registry archives (pip download, pinned) and their files (pinned)
# --------------------------------------------------------------------------------------------

def _manual_archive_help(spec: dict, cache: Path) -> str:
    how = ('pip download --no-deps --no-binary {n} {n}=={v} -d DIR' if spec['kind'] == 'sdist'
           else 'pip download --no-deps --only-binary :all: {n}=={v} -d DIR').format(n=spec['name'], v=spec['version'])
    opt = '--labelme-archive' if spec['name'] == 'labelme' else '--deepforest-wheel'
    return (f"To provide it by hand: get {spec['filename']} (sha256 {spec['sha256']}) from {spec['page']}\n"
            f"  (on a machine with access: {how}) and either put it at {cache / spec['filename']}\n"
            f'  or pass {opt} PATH, then re-run.')


def fetch_archive(spec: dict, args) -> tuple[Path, str]:
    """The pinned archive: given by hand, cached, or downloaded with pip (hash-checked).

    Returns ``(path, how)``.  Raises :class:`SourceUnavailable` when it cannot be had.
    """
    cache = Path(args.cache)
    given = args.labelme_archive if spec['name'] == 'labelme' else args.deepforest_wheel
    if given:
        path = Path(given)
        if not path.is_file():
            raise SourceUnavailable(f'{spec["name"]}: {path} (given by hand) does not exist.')
        digest = sha256_file(path)
        if digest != spec['sha256']:
            log(f"  warning: {path} has sha256 {digest}, not the pinned {spec['sha256']}; "
                'accepting it only if every file used matches its own pin')
        return path, 'given by hand'
    target = cache / spec['filename']
    if target.is_file():
        digest = sha256_file(target)
        if digest != spec['sha256']:
            raise DataError(f"cached {target} has sha256 {digest}, expected {spec['sha256']} "
                            f"({spec['name']}=={spec['version']}). Delete it to download it again.")
        log(f'  using cached {target}')
        return target, 'cache'
    where = f"{spec['name']}=={spec['version']} ({spec['kind']})"
    if args.no_download:
        raise SourceUnavailable(f'{where} is not in the cache and --no-download was given.\n'
                                + _manual_archive_help(spec, cache))
    if importlib.util.find_spec('pip') is None:
        raise SourceUnavailable(f'cannot download {where}: this interpreter ({sys.executable}) has no pip.\n'
                                + _manual_archive_help(spec, cache))
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    log(f'  downloading {where} with pip into {cache} ...')
    with tempfile.TemporaryDirectory(prefix='.pip-', dir=cache) as td:
        req = Path(td) / 'requirements.txt'
        req.write_text(f"{spec['name']}=={spec['version']} --hash=sha256:{spec['sha256']}\n")
        dest = Path(td) / 'out'
        cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--require-hashes', '-r', str(req),
               '-d', str(dest), '--disable-pip-version-check', '--no-input', '--timeout', '30', '--retries', '2']
        cmd += ['--no-binary', spec['name']] if spec['kind'] == 'sdist' else ['--only-binary', ':all:']
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            rc, out = proc.returncode, (proc.stdout + proc.stderr)
        except subprocess.TimeoutExpired:
            rc, out = -1, 'pip download timed out after 900 s'
        got = dest / spec['filename']
        if rc != 0 or not got.is_file():
            tail = '\n'.join('    ' + ln for ln in out.strip().splitlines()[-12:])
            raise SourceUnavailable(f'could not download {where} from the package index '
                                    f'(pip exit {rc}):\n{tail}\n' + _manual_archive_help(spec, cache))
        digest = sha256_file(got)
        if digest != spec['sha256']:  # pip checked it already; belt and braces
            raise DataError(f"downloaded {got.name} has sha256 {digest}, expected {spec['sha256']}")
        os.replace(got, target)
    log(f'  downloaded {target.name} ({target.stat().st_size / 1e6:.1f} MB) in {time.time() - t0:.1f} s')
    return target, 'downloaded'


def read_archive_files(spec: dict, archive: Path) -> dict[str, bytes]:
    """Every pinned file of ``spec`` read from ``archive`` (one pass) and checked against its pin."""
    wanted = {spec['prefix'] + rel: rel for rel in spec['files']}
    found: dict[str, bytes] = {}
    if spec['kind'] == 'sdist':
        with tarfile.open(archive, 'r:gz') as tf:
            for m in tf:
                if m.name in wanted and m.isfile():
                    found[wanted[m.name]] = tf.extractfile(m).read()
    else:
        with zipfile.ZipFile(archive) as zf:
            names = set(zf.namelist())
            for full, rel in wanted.items():
                if full in names:
                    found[rel] = zf.read(full)
    missing = sorted(set(spec['files']) - set(found))
    if missing:
        raise DataError(f'{archive.name} lacks {len(missing)} expected file(s): {", ".join(missing[:5])}')
    bad = [(rel, sha256_bytes(found[rel])) for rel in spec['files'] if sha256_bytes(found[rel]) != spec['files'][rel]]
    if bad:
        lines = '\n'.join(f'    {rel}: {got} (pinned {spec["files"][rel]})' for rel, got in bad[:8])
        raise DataError(f"{len(bad)} file(s) in {archive.name} differ from the pins of "
                        f"{spec['name']}=={spec['version']}:\n{lines}")
    return found


def pins_under(spec: dict, *prefixes: str) -> dict[str, str]:
    """The pinned files of ``spec`` whose path starts with one of ``prefixes``."""
    return {rel: d for rel, d in spec['files'].items() if rel.startswith(prefixes)}


def source_table(pins: dict[str, str]) -> str:
    rows = [[f'`{rel}`', f'`{digest}`'] for rel, digest in pins.items()]
    return md_table(['file in archive', 'sha256'], rows)


# --------------------------------------------------------------------------------------------
# Set definitions
# --------------------------------------------------------------------------------------------

class DemoSet(abc.ABC):
    """One output folder: its recipe (what determines its content) and how to build it."""

    name = ''
    group = ''
    #: The layout written, shown when the source cannot be had (to make the set by hand instead).
    layout_help = ''

    @abc.abstractmethod
    def recipe(self, args) -> dict:
        """Everything that determines the set's content (recorded in its completion marker)."""

    @abc.abstractmethod
    def build(self, root: Path, args, cache: dict) -> dict:
        """Write the set under ``root``; return ``dict(card=str, counts=dict, sources=dict)``."""


# ---- classification: Fashion-MNIST ----------------------------------------------------------

def fashion_folder(label: int) -> str:
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
    name = 'fashion_mnist'
    group = 'cls'

    def recipe(self, args):
        return dict(recipe_version=RECIPE_VERSION, source=f"debian:{FASHION_MNIST['debian_package']}",
                    pins={n: s['raw'] for n, s in FASHION_MNIST['files'].items()},
                    train_per_class=args.cls_train_per_class, val_per_class=args.cls_val_per_class)

    def build(self, root, args, cache):
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


# ---- semantic segmentation: labelme VOC + video examples -----------------------------------

def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


class VocSegSet(DemoSet):
    name = 'voc_seg'
    group = 'seg'
    layout_help = ('voc_seg/img_dir/{train,val}/<stem>.jpg + voc_seg/ann_dir/{train,val}/<stem>.png '
                   '(uint8 class indices, 255 = ignore, 0 = background) + voc_seg/classes.txt (line i = class i)')
    pins = pins_under(LABELME, 'LICENSE', _LM + 'semantic_segmentation/', _LM + 'video_annotation/')

    def recipe(self, args):
        return dict(recipe_version=RECIPE_VERSION, source=f"pypi:{LABELME['name']}=={LABELME['version']}",
                    archive_sha256=LABELME['sha256'], pins=self.pins, classes=list(SEG_CLASSES))

    def build(self, root, args, cache):
        files = labelme_files(args, cache)
        sem = _LM + 'semantic_segmentation/data_dataset_voc/'
        vid = _LM + 'video_annotation/data_dataset_voc/'
        class_index = {c: i for i, c in enumerate(SEG_CLASSES)}

        def mapping(class_names_txt: str) -> np.ndarray:
            names = [ln.strip() for ln in files[class_names_txt].decode().splitlines() if ln.strip()]
            lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
            for i, n in enumerate(names):
                lut[i] = class_index[LABELME_RENAME.get(n, n)]
            return names, lut

        voc_names, voc_lut = mapping(sem + 'class_names.txt')
        if [LABELME_RENAME.get(n, n) for n in voc_names] != list(VOC_CLASSES):
            raise DataError(f'labelme VOC class list is not the VOC order: {voc_names}')
        vid_names, vid_lut = mapping(vid + 'class_names.txt')

        items = []  # (stem, jpg bytes, label npy path, palette png path, lut, origin)
        for stem in ('2011_000003', '2011_000006', '2011_000025'):
            items.append((stem, sem + f'JPEGImages/{stem}.jpg', sem + f'SegmentationClassNpy/{stem}.npy',
                          sem + f'SegmentationClass/{stem}.png', voc_lut, 'VOC2012 photo'))
        for k in range(100, 105):
            stem = f'{k:08d}'
            items.append((stem, vid + f'JPEGImages/{stem}.jpg', vid + f'SegmentationClass/{stem}.npy',
                          vid + f'SegmentationClassPNG/{stem}.png', vid_lut, 'video frame'))

        pixels = Counter()
        rows = []
        for stem, jpg, npy, png, lut, origin in items:
            lab = _npy(files[npy])
            if lab.ndim != 2:
                raise DataError(f'{npy}: expected a 2-D class map, got shape {lab.shape}')
            ref = np.array(Image.open(io.BytesIO(files[png])))
            if not np.array_equal(np.where(lab < 0, IGNORE_INDEX, lab), ref):
                raise DataError(f'{npy} and {png} disagree')
            w, h = Image.open(io.BytesIO(files[jpg])).size
            if lab.shape != (h, w):
                raise DataError(f'{npy}: mask {lab.shape} vs image {(h, w)}')
            vals = np.unique(lab)
            if vals.min() < -1 or vals.max() >= 255 or (lut[vals[vals >= 0]] == IGNORE_INDEX).any():
                raise DataError(f'{npy}: unexpected class values {vals.tolist()}')
            out = np.where(lab < 0, IGNORE_INDEX, lut[np.clip(lab, 0, 255)]).astype(np.uint8)
            ann = label_png(out)
            for split in ('train', 'val'):
                write_bytes(root / 'img_dir' / split / f'{stem}.jpg', files[jpg])
                write_bytes(root / 'ann_dir' / split / f'{stem}.png', ann)
            u, c = np.unique(out, return_counts=True)
            pixels.update({int(a): int(b) for a, b in zip(u, c)})
            present = ', '.join(SEG_CLASSES[v] if v != IGNORE_INDEX else 'ignore(255)' for v in u.tolist())
            rows.append([f'`{stem}`', origin, f'{w}x{h}', present])
        (root / 'classes.txt').write_text(''.join(c + '\n' for c in SEG_CLASSES))
        (root / 'LICENSE.labelme.txt').write_bytes(files['LICENSE'])
        counts = dict(train=len(items), val=len(items), classes=len(SEG_CLASSES),
                      classes_present=sorted(SEG_CLASSES[v] for v in pixels if v != IGNORE_INDEX))
        log(f'  {len(items)} images (3 VOC photos + 5 video frames), same images in train and val; '
            f'{len(SEG_CLASSES)} classes, present: {", ".join(counts["classes_present"])}')
        return dict(card=self.card(rows, pixels), counts=counts,
                    sources=dict(archive=LABELME['filename'], archive_sha256=LABELME['sha256'], files=self.pins))

    def card(self, rows, pixels):
        cls_rows = [[i, c, pixels.get(i, 0)] for i, c in enumerate(SEG_CLASSES)] + [[255, 'ignore', pixels.get(255, 0)]]
        classes_tuple = ', '.join(repr(c) for c in SEG_CLASSES)
        return f"""# VOC + street-frames demo set (semantic segmentation)

8 real photos with hand-drawn class masks from the examples shipped in the labelme source archive:
3 PASCAL VOC 2012 photos (`examples/semantic_segmentation/data_dataset_voc`) and 5 consecutive
frames of a street video (`examples/video_annotation/data_dataset_voc`). For exercising the mmseg
pipeline (UperNet), not for measuring accuracy.

- **Source**: `{LABELME['name']}=={LABELME['version']}` source archive `{LABELME['filename']}`
  (sha256 `{LABELME['sha256']}`), {LABELME['page']}.
- **Licence**: labelme is {LABELME['licence']} (copy in `LICENSE.labelme.txt`); the VOC 2012
  photos originate from Flickr (PASCAL VOC: images subject to Flickr's terms of use). The origin
  of the video frames is not stated in the archive beyond being part of labelme's examples.
- **Split**: train and val hold the *same* 8 images. With 8 images a held-out split would leave
  val with classes never seen in training, and the 5 video frames are near-duplicates of each
  other, so any split leaks; val here measures fitting, i.e. that the pipeline learns.
- **Counts**: 8 train, 8 val; {len(SEG_CLASSES)} classes (VOC's 21 + `truck`).

## Layout (mmseg)

```
voc_seg/
  img_dir/{{train,val}}/<stem>.jpg
  ann_dir/{{train,val}}/<stem>.png   # palette PNG, pixel = class index (uint8), 255 = ignore
  classes.txt                      # line i = class i
```

Config: `dict(type='BaseSegDataset', data_root='data/demo/voc_seg',
data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train'), img_suffix='.jpg',
seg_map_suffix='.png', reduce_zero_label=False, metainfo=dict(classes=({classes_tuple})))`
with `ignore_index=255` in the decode heads.

## Images

{md_table(['stem', 'origin', 'size (WxH)', 'classes present'], rows)}

## Classes (pixel counts over the 8 label maps)

{md_table(['index', 'class', 'pixels'], cls_rows)}

## Quirks handled

- Labels are taken from labelme's `SegmentationClassNpy` / `SegmentationClass/*.npy` (int32,
  `-1` = regions annotated `__ignore__`) -> 255; they are checked to equal labelme's palette
  PNGs pixel for pixel.
- One class list for both sources: VOC's 21 classes in VOC order (labelme's `_background_`,
  `potted plant`, `tv/monitor` renamed to mmseg's `background`, `pottedplant`, `tvmonitor`) plus
  `truck` (index 21). The video's own indices (`_background_`=0, `car`=1, `track`=2, as listed in
  its `class_names.txt`) are remapped to 0 / 7 (`car`) / 21.
- labelme's video label `track` marks a box truck (see `examples/video_annotation/.readme`), so
  it is named `truck` here.
- The video frames annotate only `car` and `truck`; everything else, including a few small
  pedestrians in the background, is `background` there, whereas in the VOC photos persons are
  class 15. This is the source annotation; it is kept as is.
- The car polygon is identical in all 5 frames (copied from frame to frame by the annotator).

## Sources (sha256 of every file read from the archive)

{source_table(self.pins)}
"""


# ---- COCO instances: labelme VOC polygons ----------------------------------------------------

def labelme_files(args, cache: dict) -> dict[str, bytes]:
    """The pinned labelme files, fetched once per run (a failure is remembered, not retried)."""
    if 'labelme' not in cache:
        try:
            archive, _ = fetch_archive(LABELME, args)
            log(f'  reading {len(LABELME["files"])} pinned files from {archive.name}')
            cache['labelme'] = read_archive_files(LABELME, archive)
        except (SourceUnavailable, DataError) as e:
            cache['labelme'] = e
    if isinstance(cache['labelme'], Exception):
        raise cache['labelme']
    return cache['labelme']


def _poly_area(poly: list[float]) -> float:
    x, y = np.asarray(poly[0::2], dtype=np.float64), np.asarray(poly[1::2], dtype=np.float64)
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def _poly_perimeter(poly: list[float]) -> float:
    p = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    return float(np.linalg.norm(p - np.roll(p, -1, axis=0), axis=1).sum())


def validate_coco(coco: dict, images_dir: Path, name: str, require_masks: bool) -> list[str]:
    """Checks an instances json: ids, references, boxes/polygons inside images, areas.

    Own checks always; with pycocotools importable also: ``COCO()`` indexes it, every polygon
    rasterises to a non-empty mask of the image's size whose area / box agree with the json.
    Returns notes for the log; raises :class:`DataError` on the first failure.
    """
    def fail(msg):
        raise DataError(f'{name}: {msg}')

    imgs = {im['id']: im for im in coco['images']}
    cats = {c['id'] for c in coco['categories']}
    if len(imgs) != len(coco['images']) or min(imgs) < 1:
        fail('image ids must be unique and >= 1')
    ann_ids = [a['id'] for a in coco['annotations']]
    if len(set(ann_ids)) != len(ann_ids) or min(ann_ids) < 1:
        fail('annotation ids must be unique and >= 1')
    for im in coco['images']:
        p = images_dir / im['file_name']
        if not p.is_file():
            fail(f'missing image {p}')
        with Image.open(p) as pil:
            if pil.size != (im['width'], im['height']):
                fail(f"{im['file_name']}: size {pil.size} != json {(im['width'], im['height'])}")
    for a in coco['annotations']:
        im = imgs.get(a['image_id'])
        if im is None or a['category_id'] not in cats:
            fail(f"annotation {a['id']}: unknown image or category")
        w, h = im['width'], im['height']
        x, y, bw, bh = a['bbox']
        if bw <= 0 or bh <= 0 or x < 0 or y < 0 or x + bw > w + 1e-6 or y + bh > h + 1e-6:
            fail(f"annotation {a['id']}: bbox {a['bbox']} outside the {w}x{h} image or empty")
        if a['area'] <= 0:
            fail(f"annotation {a['id']}: area {a['area']}")
        seg = a.get('segmentation')
        if require_masks:
            if not isinstance(seg, list) or not seg:
                fail(f"annotation {a['id']}: no polygon")
            for part in seg:
                if len(part) < 6 or len(part) % 2:
                    fail(f"annotation {a['id']}: polygon with {len(part)} coordinates")
                xs, ys = np.asarray(part[0::2]), np.asarray(part[1::2])
                if xs.min() < 0 or ys.min() < 0 or xs.max() > w or ys.max() > h:
                    fail(f"annotation {a['id']}: polygon outside the image")
    notes = [f'{len(imgs)} images, {len(ann_ids)} annotations, {len(cats)} categories: own checks passed']
    if importlib.util.find_spec('pycocotools') is None:
        notes.append('pycocotools not importable: its checks skipped')
        return notes
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    api = COCO()
    api.dataset = json.loads(json.dumps(coco))
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    worst, n_masks = 0.0, 0
    for a in coco['annotations']:
        if not a.get('segmentation'):
            continue
        im = imgs[a['image_id']]
        m = api.annToMask(a)
        if m.shape != (im['height'], im['width']) or m.sum() == 0:
            fail(f"annotation {a['id']}: polygon rasterises to {m.shape}, {int(m.sum())} pixels")
        rle = mask_utils.encode(np.asfortranarray(m))
        marea = float(mask_utils.area(rle))
        tol = 0.75 * sum(_poly_perimeter(p) for p in a['segmentation']) + 4
        if abs(marea - a['area']) > tol:
            fail(f"annotation {a['id']}: rasterised area {marea} vs json area {a['area']} (tolerance {tol:.0f})")
        mb = mask_utils.toBbox(rle)
        if np.abs(mb - np.asarray(a['bbox'])).max() > 2.0:
            fail(f"annotation {a['id']}: mask box {mb.tolist()} vs json bbox {a['bbox']}")
        worst = max(worst, abs(marea - a['area']) / a['area'])
        n_masks += 1
    if n_masks:
        notes.append(f'pycocotools: indexed; {n_masks} polygons rasterise inside their images; '
                     f'worst |mask area - area| = {100 * worst:.1f}% of area')
    else:
        notes.append('pycocotools: indexed (boxes only)')
    return notes


class CocoVocSet(DemoSet):
    name = 'coco_voc'
    group = 'coco'
    layout_help = ('coco_voc/annotations/instances_{train,val}.json (COCO instances with polygons, '
                   'file_name relative to the image folder) + coco_voc/{train,val}/<file_name>')
    pins = pins_under(LABELME, 'LICENSE', _LM + 'instance_segmentation/')

    def recipe(self, args):
        return dict(recipe_version=RECIPE_VERSION, source=f"pypi:{LABELME['name']}=={LABELME['version']}",
                    archive_sha256=LABELME['sha256'], pins=self.pins)

    def build(self, root, args, cache):
        files = labelme_files(args, cache)
        base = _LM + 'instance_segmentation/data_dataset_coco/'
        src = json.loads(files[base + 'annotations.json'])
        src_cats = {c['id']: c['name'] for c in src['categories']}
        # Category 0 is labelme's _background_: dropped; the VOC ids 1..20 are kept as they are.
        categories = []
        for cid in sorted(src_cats):
            name = LABELME_RENAME.get(src_cats[cid], src_cats[cid])
            if cid == 0:
                if name != 'background':
                    raise DataError(f'expected category 0 to be _background_, got {src_cats[cid]!r}')
                continue
            if VOC_CLASSES[cid] != name:
                raise DataError(f'category {cid} is {src_cats[cid]!r}, expected {VOC_CLASSES[cid]!r}')
            categories.append(dict(id=cid, name=name, supercategory='voc'))
        # Images renumbered from 1 in file-name order; file_name loses its 'JPEGImages/' prefix.
        src_imgs = sorted(src['images'], key=lambda im: im['file_name'])
        new_img_id = {im['id']: k + 1 for k, im in enumerate(src_imgs)}
        images = []
        for im in src_imgs:
            fname = im['file_name'].split('/')[-1]
            data = files[base + 'JPEGImages/' + fname]
            w, h = Image.open(io.BytesIO(data)).size
            if (w, h) != (im['width'], im['height']):
                raise DataError(f"{fname}: image {w}x{h} vs json {im['width']}x{im['height']}")
            images.append(dict(id=new_img_id[im['id']], file_name=fname, width=w, height=h))
            for split in ('train', 'val'):
                write_bytes(root / split / fname, data)
        sizes = {new_img_id[im['id']]: (im['width'], im['height']) for im in src_imgs}
        anns, clipped = [], 0
        src_anns = sorted((a for a in src['annotations'] if a['category_id'] != 0),
                          key=lambda a: (new_img_id[a['image_id']], a['id']))
        for k, a in enumerate(src_anns):
            img_id = new_img_id[a['image_id']]
            w, h = sizes[img_id]
            parts = []
            for part in a['segmentation']:
                xy = np.asarray(part, dtype=np.float64).reshape(-1, 2)
                c = np.stack([np.clip(xy[:, 0], 0, w), np.clip(xy[:, 1], 0, h)], 1)
                clipped += int((c != xy).any())
                parts.append([float(v) for v in c.reshape(-1)])
            allxy = np.concatenate([np.asarray(p).reshape(-1, 2) for p in parts])
            x0, y0 = allxy.min(0)
            x1, y1 = allxy.max(0)
            anns.append(dict(id=k + 1, image_id=img_id, category_id=a['category_id'], segmentation=parts,
                             area=round(sum(_poly_area(p) for p in parts), 2),
                             bbox=[round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)], iscrowd=0))
        coco = dict(info=dict(description='labelme 6.3.1 examples/instance_segmentation (3 PASCAL VOC 2012 '
                                          'photos) converted by tools/prepare_demo_data.py',
                              version=LABELME['version']),
                    licenses=[dict(id=1, name='GPL-3.0-only (labelme); photos from Flickr via PASCAL VOC 2012',
                                   url='https://www.gnu.org/licenses/gpl-3.0.html')],
                    images=images, annotations=anns, categories=categories)
        for split in ('train', 'val'):
            write_json(root / 'annotations' / f'instances_{split}.json', coco)
        (root / 'LICENSE.labelme.txt').write_bytes(files['LICENSE'])
        for note in validate_coco(coco, root / 'train', 'coco_voc/instances_train.json', require_masks=True):
            log('  ' + note)
        per_cat = Counter(categories[[c['id'] for c in categories].index(a['category_id'])]['name'] for a in anns)
        counts = dict(images=len(images), annotations=len(anns), categories=len(categories),
                      instances_per_class=dict(sorted(per_cat.items())))
        log(f'  {len(images)} images, {len(anns)} instances ({dict(sorted(per_cat.items()))}); '
            f'train = val; {clipped} polygon(s) clipped to the image')
        return dict(card=self.card(images, anns, per_cat, clipped), counts=counts,
                    sources=dict(archive=LABELME['filename'], archive_sha256=LABELME['sha256'], files=self.pins))

    def card(self, images, anns, per_cat, clipped):
        img_rows = [[im['id'], f"`{im['file_name']}`", f"{im['width']}x{im['height']}",
                     sum(a['image_id'] == im['id'] for a in anns)] for im in images]
        cat_rows = [[cid, VOC_CLASSES[cid], per_cat.get(VOC_CLASSES[cid], 0)] for cid in range(1, 21)]
        present = tuple(c for c in VOC_CLASSES[1:] if per_cat.get(c))
        return f"""# VOC photos as COCO instances (instance segmentation / detection)

The 3 PASCAL VOC 2012 photos of labelme's `examples/instance_segmentation/data_dataset_coco`,
with {len(anns)} hand-drawn instance polygons, in mmdet's COCO layout. For exercising the
Cascade Mask R-CNN pipeline, not for measuring accuracy.

- **Source**: `{LABELME['name']}=={LABELME['version']}` source archive `{LABELME['filename']}`
  (sha256 `{LABELME['sha256']}`), {LABELME['page']}.
- **Licence**: labelme is {LABELME['licence']} (copy in `LICENSE.labelme.txt`); the photos
  originate from Flickr via PASCAL VOC 2012 (subject to Flickr's terms of use).
- **Split**: `instances_train.json` and `instances_val.json` are identical and `train/` and
  `val/` hold the same 3 images: with 3 images a held-out split would leave val with classes
  absent from training; val measures fitting.
- **Counts**: {len(images)} images, {len(anns)} instances, 20 categories (VOC ids 1..20), of which
  {len(present)} occur: {', '.join(present)}.

## Layout (mmdet)

```
coco_voc/
  annotations/instances_train.json
  annotations/instances_val.json
  train/<file_name>.jpg
  val/<file_name>.jpg
```

Config: `dict(type='CocoDataset', data_root='data/demo/coco_voc', ann_file='annotations/instances_train.json',
data_prefix=dict(img='train/'), metainfo=dict(classes=<names>))`. With the 20 VOC names every class
has a head output (14 never occur); `metainfo=dict(classes={present!r})` keeps only the occurring ones
(mmdet maps the chosen names' ids to labels 0..n-1).

## Images

{md_table(['id', 'file_name', 'size (WxH)', 'instances'], img_rows)}

## Categories

{md_table(['id', 'name', 'instances'], cat_rows)}

## Quirks handled

- labelme's category 0 `_background_` is dropped; the VOC ids 1..20 are kept (no annotation
  used category 0). Names follow mmdet's VOC spelling (`pottedplant`, `tvmonitor`).
- `file_name` had a `JPEGImages/` prefix: stripped (images sit directly in `train/` and `val/`).
- Image and annotation ids started at 0 (valid JSON, but 0 is falsy in some tools): renumbered
  from 1 (images in file-name order).
- labelme's `area` / `bbox` came from its own rasterisation and do not match the polygons
  (boxes off by up to 1-2 px; areas 0.4-7 % above pycocotools' masks): recomputed from the polygons
  (bbox = polygon extent, area = polygon area, shoelace, summed over parts). Checked against
  pycocotools' rasterisation.
- {clipped} polygon(s) reached slightly past the image border (by < 1 px): clipped to the image.
- Some instances consist of several polygons (an occluded person in 2 parts, a sofa in 4).
- These JPEGs are not byte-identical to the same photos in `semantic_segmentation/` (a different
  re-encoding by labelme); each set uses the files its annotations were made on.

## Sources (sha256 of every file read from the archive)

{source_table(self.pins)}
"""


# ---- COCO boxes: deepforest trees -------------------------------------------------------------

class CocoTreesSet(DemoSet):
    name = 'coco_trees'
    group = 'coco'
    layout_help = ('coco_trees/annotations/instances_{train,val}.json (COCO boxes, category 1 = tree) + '
                   'coco_trees/{train,val}/<file_name>')

    def recipe(self, args):
        return dict(recipe_version=RECIPE_VERSION, source=f"pypi:{DEEPFOREST['name']}=={DEEPFOREST['version']}",
                    archive_sha256=DEEPFOREST['sha256'], pins=DEEPFOREST['files'],
                    split={s: sp for s, sp in TREE_IMAGES})

    def build(self, root, args, cache):
        archive, _ = fetch_archive(DEEPFOREST, args)
        log(f'  reading {len(DEEPFOREST["files"])} pinned files from {archive.name}')
        files = read_archive_files(DEEPFOREST, archive)
        splits = {'train': dict(images=[], annotations=[]), 'val': dict(images=[], annotations=[])}
        labels = Counter()
        rows = []
        for stem, split in TREE_IMAGES:
            xml = ET.fromstring(files[_DF + stem + '.xml'])
            data = files[_DF + stem + '.png']
            with Image.open(io.BytesIO(data)) as pil:
                w, h = pil.size
                mode = pil.mode
            xw, xh = int(xml.findtext('size/width')), int(xml.findtext('size/height'))
            if (w, h) != (xw, xh):
                raise DataError(f'{stem}: png {w}x{h} vs xml {xw}x{xh}')
            d = splits[split]
            img_id = len(d['images']) + 1
            d['images'].append(dict(id=img_id, file_name=stem + '.png', width=w, height=h))
            write_bytes(root / split / (stem + '.png'), data)
            n_img, img_labels = 0, Counter()
            for obj in xml.findall('object'):
                b = [float(obj.findtext('bndbox/' + k)) for k in ('xmin', 'ymin', 'xmax', 'ymax')]
                if not (0 <= b[0] < b[2] <= w and 0 <= b[1] < b[3] <= h):
                    raise DataError(f'{stem}: box {b} outside the {w}x{h} image or empty')
                label = obj.findtext('name')
                img_labels[label] += 1
                bw, bh = b[2] - b[0], b[3] - b[1]
                d['annotations'].append(dict(id=len(d['annotations']) + 1, image_id=img_id, category_id=1,
                                             bbox=[b[0], b[1], bw, bh], area=bw * bh, iscrowd=0,
                                             attributes=dict(deepforest_label=label)))
                n_img += 1
            labels.update(img_labels)
            rows.append([f'`{stem}.png`', split, f'{w}x{h} ({mode})', n_img, ', '.join(
                f'{k} {v}' for k, v in sorted(img_labels.items())), xml.findtext('filename')])
        licence = DEEPFOREST['licence']
        for split, d in splits.items():
            coco = dict(info=dict(description='deepforest 2.1.0 deepforest/data annotated images converted by '
                                              'tools/prepare_demo_data.py', version=DEEPFOREST['version']),
                        licenses=[dict(id=1, name=f'{licence} (deepforest package)',
                                       url='https://github.com/weecology/DeepForest/blob/main/LICENSE')],
                        images=d['images'], annotations=d['annotations'],
                        categories=[dict(id=1, name='tree', supercategory='tree')])
            write_json(root / 'annotations' / f'instances_{split}.json', coco)
            for note in validate_coco(coco, root / split, f'coco_trees/instances_{split}.json', require_masks=False):
                log('  ' + note)
        (root / 'LICENSE.deepforest.txt').write_bytes(files['deepforest-2.1.0.dist-info/licenses/LICENSE'])
        counts = {s: dict(images=len(d['images']), boxes=len(d['annotations'])) for s, d in splits.items()}
        counts['source_labels'] = dict(sorted(labels.items()))
        log(f"  train: {counts['train']['images']} images / {counts['train']['boxes']} boxes, "
            f"val: {counts['val']['images']} image / {counts['val']['boxes']} boxes; one category 'tree'")
        return dict(card=self.card(rows, counts), counts=counts,
                    sources=dict(archive=DEEPFOREST['filename'], archive_sha256=DEEPFOREST['sha256'],
                                 files=DEEPFOREST['files']))

    def card(self, rows, counts):
        total = counts['train']['boxes'] + counts['val']['boxes']
        return f"""# Aerial tree crowns as COCO boxes (detection)

The 4 annotated RGB aerial images shipped inside the deepforest wheel (`deepforest/data/*.xml` +
images), {total} tree-crown boxes, one category `tree`. Boxes only (no masks): use it with
`with_mask=False` / a box-only head.

- **Source**: `{DEEPFOREST['name']}=={DEEPFOREST['version']}` wheel `{DEEPFOREST['filename']}`
  (sha256 `{DEEPFOREST['sha256']}`), {DEEPFOREST['page']}.
- **Licence**: {DEEPFOREST['licence']} (the package's licence, copied to `LICENSE.deepforest.txt`).
  The image names carry NEON site codes (YELL, SOAP, OSBS: NEON airborne observation platform
  imagery); check NEON's data policy before reuse beyond testing.
- **Split** (held out by site): train = the two YELL crops + SOAP_061
  ({counts['train']['images']} images, {counts['train']['boxes']} boxes); val = OSBS_029
  ({counts['val']['images']} image, {counts['val']['boxes']} boxes), a different site, so val
  measures transfer. For a fitting check use `instances_train.json` as the val annotation too.

## Layout (mmdet)

```
coco_trees/
  annotations/instances_train.json
  annotations/instances_val.json
  train/<stem>.png
  val/<stem>.png
```

Config: `dict(type='CocoDataset', data_root='data/demo/coco_trees', ann_file='annotations/instances_train.json',
data_prefix=dict(img='train/'), metainfo=dict(classes=('tree',)))`.

## Images

{md_table(['file', 'split', 'size', 'boxes', 'source labels', 'filename in xml'], rows)}

## Quirks handled

- Boxes come from the 4 Pascal-VOC XML files ({total} boxes). The CSVs in the package are partial
  or duplicates (`example.csv` holds only 79 of the 279 boxes of its image) and are not used.
- `SOAP_061` labels its crowns `Dead` ({counts['source_labels'].get('Dead', 0)}) / `Alive`
  ({counts['source_labels'].get('Alive', 0)}) instead of `Tree`; all become `tree`, the original label is
  kept per annotation in `attributes.deepforest_label`.
- `OSBS_029.xml` names `OSBS_029.tif`; the package also ships `OSBS_029.png` with the same pixels,
  which is used (no TIFF in the set).
- bbox = `[xmin, ymin, xmax - xmin, ymax - ymin]` (deepforest's convention, no VOC `+1`);
  area = box area; no `segmentation` key. All boxes lie inside their images.
- The largest image (`2019_YELL_2_528000_4978000_image_crop2.png`, 2299x2472, 15 MB) is copied
  unchanged (lossless PNG); the training resize scales it down.

## Sources (sha256 of every file read from the archive)

{source_table(DEEPFOREST['files'])}
"""


SETS = (FashionMnistSet(), VocSegSet(), CocoVocSet(), CocoTreesSet())
GROUPS = {'cls': ('fashion_mnist',), 'seg': ('voc_seg',), 'coco': ('coco_voc', 'coco_trees')}


# --------------------------------------------------------------------------------------------
# Markers, verification, atomic replacement
# --------------------------------------------------------------------------------------------

def list_files(root: Path) -> list[str]:
    """Every file under ``root`` except the marker, as sorted '/'-separated relative paths."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            rel = osp.relpath(osp.join(dirpath, f), root).replace(os.sep, '/')
            if rel != MARKER:
                out.append(rel)
    return sorted(out)


def check_complete(final: Path, recipe: dict) -> tuple[bool, str]:
    """``(True, '')`` when ``final`` is a complete set made by ``recipe`` and unmodified."""
    marker = final / MARKER
    if not marker.is_file():
        return False, 'no .complete marker (half-written or made by hand)'
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError) as e:
        return False, f'unreadable marker ({e})'
    if info.get('recipe') != recipe:
        old, new = info.get('recipe') or {}, recipe
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        return False, 'built with different settings (' + ', '.join(diff) + ')'
    outputs = info.get('outputs') or {}
    present = list_files(final)
    if sorted(outputs) != present:
        extra = sorted(set(present) - set(outputs))[:3]
        gone = sorted(set(outputs) - set(present))[:3]
        return False, f'files differ from the marker (missing {gone}, extra {extra})'
    for rel, digest in outputs.items():
        if sha256_file(final / rel) != digest:
            return False, f'{rel} was modified'
    return True, ''


def write_marker(root: Path, dset: DemoSet, recipe: dict, result: dict) -> dict:
    outputs = {rel: sha256_file(root / rel) for rel in list_files(root)}
    marker = dict(set=dset.name, recipe=recipe, sources=result['sources'], counts=result['counts'],
                  outputs=outputs)
    (root / MARKER).write_text(json.dumps(marker, indent=1) + '\n')
    return marker


def clean_leftovers(out: Path) -> None:
    for p in sorted(out.glob('.tmp-*')) + sorted(out.glob('.old-*')):
        if p.is_dir():
            log(f'removing leftover {p} (an interrupted earlier run)')
            shutil.rmtree(p)


def ensure_set(dset: DemoSet, args, cache: dict) -> dict:
    """Build ``dset`` unless complete; returns a summary row."""
    out = Path(args.out)
    final = out / dset.name
    recipe = dset.recipe(args)
    t0 = time.time()
    if final.exists():
        ok, why = check_complete(final, recipe)
        if ok and not args.force:
            counts = json.loads((final / MARKER).read_text())['counts']
            log(f'[{dset.name}] up to date: {final}')
            return dict(set=dset.name, status='up to date', path=str(final), counts=counts, seconds=time.time() - t0)
        log(f'[{dset.name}] ' + ('--force: rebuilding' if ok else f'{why}: removing it and rebuilding'))
    else:
        log(f'[{dset.name}] building {final}')
    tmp = Path(tempfile.mkdtemp(prefix=f'.tmp-{dset.name}-', dir=out))
    try:
        result = dset.build(tmp, args, cache)
        (tmp / CARD).write_text(result['card'])
        write_marker(tmp, dset, recipe, result)
        if final.exists():
            old = out / f'.old-{dset.name}-{os.getpid()}'
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    secs = time.time() - t0
    log(f'[{dset.name}] done in {secs:.1f} s: {final}')
    return dict(set=dset.name, status='built', path=str(final), counts=result['counts'], seconds=secs)


@contextlib.contextmanager
def out_lock(out: Path):
    """An exclusive lock on ``<out>/.lock`` so that two runs never build into the same folder."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    with open(out / '.lock', 'a') as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log(f'waiting for another prepare_demo_data run on {out} ...')
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog='prepare_demo_data.py',
        description='Build small real demo datasets under data/demo from package registries only: '
                    'fashion_mnist (cls, Debian dataset-fashion-mnist, MIT), voc_seg (seg, labelme 6.3.1 '
                    'examples, GPL-3.0), coco_voc + coco_trees (coco, labelme 6.3.1 polygons / deepforest '
                    '2.1.0 tree boxes, MIT). Pinned by version and sha256, deterministic, idempotent: '
                    "complete sets carry a .complete marker and are skipped ('up to date').",
        epilog='Exit status: 0 ready; 3 a source is unavailable (the message says how to provide it); '
               '1 other failure; 2 bad arguments. Each set folder gets a DATA_CARD.md.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--out', default=str(REPO / 'data' / 'demo'), help='output root')
    p.add_argument('--only', default='cls,seg,coco',
                   help='comma-separated groups (cls, seg, coco) and/or set names '
                        '(fashion_mnist, voc_seg, coco_voc, coco_trees)')
    p.add_argument('--force', action='store_true', help='rebuild complete sets (from the cached sources)')
    p.add_argument('--cache', default=str(default_cache()),
                   help='download cache for the pinned archives ($TLALIGN_CACHE/downloads when set)')
    p.add_argument('--no-download', action='store_true',
                   help='never call pip; fail (exit 3) when an archive is not cached or given')
    p.add_argument('--labelme-archive', metavar='PATH', help=f"use this {LABELME['filename']} instead of "
                                                            'the cache / a download')
    p.add_argument('--deepforest-wheel', metavar='PATH', help=f"use this {DEEPFOREST['filename']} instead "
                                                             'of the cache / a download')
    g = p.add_argument_group('cls (Fashion-MNIST)')
    g.add_argument('--fashion-mnist-dir', default=FASHION_MNIST['default_dir'],
                   help='folder holding {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]')
    g.add_argument('--install-apt', action='store_true',
                   help=f"if the files are missing, run 'apt-get install -y {FASHION_MNIST['debian_package']}' "
                        '(root only)')
    g.add_argument('--cls-train-per-class', type=int, default=400, metavar='N',
                   help='first N training images of every class -> train/')
    g.add_argument('--cls-val-per-class', type=int, default=100, metavar='N',
                   help='first N test (t10k) images of every class -> val/')
    args = p.parse_args(argv)
    wanted = []
    for tok in (t.strip() for t in args.only.split(',')):
        if not tok:
            continue
        names = GROUPS.get(tok, (tok,) if tok in {s.name for s in SETS} else None)
        if names is None:
            p.error(f'--only: unknown set {tok!r} (groups: {", ".join(GROUPS)}; '
                    f'sets: {", ".join(s.name for s in SETS)})')
        wanted += [n for n in names if n not in wanted]
    if not wanted:
        p.error('--only selects nothing')
    args.sets = [s for s in SETS if s.name in wanted]
    if args.cls_train_per_class < 1 or args.cls_val_per_class < 1:
        p.error('--cls-train-per-class and --cls-val-per-class must be >= 1')
    if args.cls_train_per_class > 6000 or args.cls_val_per_class > 1000:
        p.error('Fashion-MNIST has 6000 training and 1000 test images per class')
    return args


def _fmt_counts(counts: dict) -> str:
    parts = []
    for k, v in counts.items():
        if isinstance(v, dict):
            parts.append(f'{k}(' + ', '.join(f'{a}={b}' for a, b in v.items()) + ')')
        elif isinstance(v, list):
            parts.append(f'{k}={len(v)}')
        else:
            parts.append(f'{k}={v}')
    return ', '.join(parts)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, failures, code = [], [], 0
    with out_lock(out):
        clean_leftovers(out)
        cache: dict = {}
        for dset in args.sets:
            try:
                rows.append(ensure_set(dset, args, cache))
            except SourceUnavailable as e:
                log(f'[{dset.name}] SOURCE UNAVAILABLE:\n{e}')
                if dset.layout_help:
                    log(f'Or make the set yourself in this layout (outside {out}, where a folder without a '
                        f'.complete marker is treated as half-written and rebuilt):\n    {dset.layout_help}')
                failures.append(dset.name)
                code = code or EXIT_SOURCE_UNAVAILABLE
            except DataError as e:
                log(f'[{dset.name}] FAILED: {e}')
                failures.append(dset.name)
                code = EXIT_FAILED
    log('\nSummary:')
    for r in rows:
        log(f"  {r['set']:<14} {r['status']:<11} {r['seconds']:6.1f} s  {r['path']}\n"
            f"  {'':<14} {_fmt_counts(r['counts'])}")
    for name in failures:
        log(f'  {name:<14} FAILED (see above)')
    return code


if __name__ == '__main__':
    sys.exit(main())
