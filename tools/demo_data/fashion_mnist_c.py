"""The ``fashion_mnist_c`` set (group ``robust``): Fashion-MNIST test images under the 15 ImageNet-C
corruptions at 5 severities, made with the ``imagecorruptions`` package (PyPI).

ImageNet-C corrupts the 224x224 centre crops a model sees; the analogue here corrupts the demo
models' 32x32 input: each 28x28 grey test image is resized to 32x32 (bicubic, as the demo test
pipeline does), made RGB and corrupted.  ``imagecorruptions`` needs images of at least 32 px.
Written in the ImageNet-C layout that ``tools/analysis/robustness.py --imagenet-c`` reads::

    fashion_mnist_c/<corruption>/<severity>/<NN_class>/<idx>.png

The corruptions draw from numpy's global generator; it is seeded per image from
(corruption, severity, image index), so a rebuild writes identical files.
"""
from __future__ import annotations

import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from .common import RECIPE_VERSION, DataError, DemoSet, SourceUnavailable, log, md_table, png_bytes, write_bytes
from .fashion_mnist import FASHION_CLASSES, FASHION_MNIST, fashion_folder, first_per_class, read_fashion_sources

CORRUPTION_SIZE = 32
IMAGECORRUPTIONS_VERSION = '1.1.2'


def import_imagecorruptions():
    """``imagecorruptions`` 1.1.2, made to run on numpy 2 and scikit-image >= 0.19 as it ran before.

    The package (last released 2021) relies on three things its dependencies have since changed,
    each mapped here onto its replacement inside the package's own module (nothing else changes):

    * ``skimage.filters.gaussian(..., multichannel=True)`` (defocus / glass blur, elastic
      transform) is now ``channel_axis=-1``, the same operation;
    * ``np.float_`` (the fog pattern) is numpy 2's ``np.float64``;
    * ``skimage.util.random_noise`` (impulse noise) no longer draws from numpy's global generator
      but from a fresh unseeded one; it is given a seed drawn from the global generator, so that
      seeding numpy makes impulse noise reproducible again, like every other corruption.

    Raises:
        SourceUnavailable: the package is not installed (names the pinned version).
    """
    try:
        with warnings.catch_warnings():  # it imports the deprecated pkg_resources
            warnings.simplefilter('ignore')
            import imagecorruptions
            from imagecorruptions import corruptions
    except ImportError as e:
        raise SourceUnavailable(
            f'the fashion_mnist_c set needs imagecorruptions=={IMAGECORRUPTIONS_VERSION} ({e}); '
            'tools/setup_env.sh installs it (requirements/robustness.txt), or: '
            f'pip install imagecorruptions=={IMAGECORRUPTIONS_VERSION} "setuptools<81"') from e
    if not getattr(corruptions, '_tlalign_compat', False):
        gaussian, sk = corruptions.gaussian, corruptions.sk

        def gaussian_compat(image, *args, multichannel=None, **kwargs):
            if multichannel:
                kwargs.setdefault('channel_axis', -1)
            return gaussian(image, *args, **kwargs)

        def random_noise_compat(image, *args, **kwargs):
            kwargs.setdefault('rng', int(np.random.randint(2 ** 31)))
            return sk.util.random_noise(image, *args, **kwargs)

        corruptions.gaussian = gaussian_compat
        corruptions.sk = _ModuleWith(sk, util=_ModuleWith(sk.util, random_noise=random_noise_compat))
        if not hasattr(np, 'float_'):
            corruptions.np = _ModuleWith(np, float_=np.float64)
        corruptions._tlalign_compat = True
    return imagecorruptions


class _ModuleWith:
    """A module with some attributes replaced (used only inside imagecorruptions' module)."""

    def __init__(self, module, **replaced):
        self._module = module
        self.__dict__.update(replaced)

    def __getattr__(self, name):
        return getattr(self._module, name)


def corruption_seed(corruption: str, severity: int, index: int) -> int:
    """The numpy seed of one corrupted image (stable across runs and machines)."""
    return zlib.crc32(f'{corruption}/{severity}/{index}'.encode())


class FashionMnistCSet(DemoSet):
    """The first N test images of every Fashion-MNIST class, under every ImageNet-C corruption."""

    name = 'fashion_mnist_c'
    group = 'robust'
    layout_help = 'fashion_mnist_c/<corruption>/<severity 1..5>/<NN_class>/<idx>.png (ImageNet-C layout)'

    def recipe(self, args):
        """Debian package pins, imagecorruptions version, size and per-class count."""
        return dict(recipe_version=RECIPE_VERSION, source=f"debian:{FASHION_MNIST['debian_package']}",
                    pins={n: s['raw'] for n, s in FASHION_MNIST['files'].items() if n.startswith('t10k')},
                    imagecorruptions=IMAGECORRUPTIONS_VERSION, size=CORRUPTION_SIZE,
                    seeding='numpy seeded with crc32(corruption/severity/index); skimage noise seeded from numpy',
                    per_class=args.robust_per_class)

    def build(self, root, args, cache):
        """Corrupt the picked test images with every corruption and severity and write the PNGs."""
        ic = import_imagecorruptions()
        names = tuple(ic.get_corruption_names('common'))  # the 15 ImageNet-C test corruptions
        if len(names) != 15:
            raise DataError(f'imagecorruptions lists {len(names)} common corruptions, expected 15: {names}')
        arrays, hashes = read_fashion_sources(Path(args.fashion_mnist_dir), args)
        hashes = {k: v for k, v in hashes.items() if k.startswith('t10k')}
        images, labels = arrays['t10k-images-idx3-ubyte'], arrays['t10k-labels-idx1-ubyte']
        picked = first_per_class(labels, args.robust_per_class)
        log(f'  corrupting {len(picked)} test images x {len(names)} corruptions x 5 severities '
            f'at {CORRUPTION_SIZE}x{CORRUPTION_SIZE}')
        resized = {i: np.asarray(Image.fromarray(np.ascontiguousarray(images[i])).convert('RGB').resize(
            (CORRUPTION_SIZE, CORRUPTION_SIZE), Image.BICUBIC)) for i in picked}
        state = np.random.get_state()
        try:
            for name in names:
                for sev in range(1, 6):
                    for i in picked:
                        np.random.seed(corruption_seed(name, sev, i))
                        out = ic.corrupt(resized[i], corruption_name=name, severity=sev)
                        write_bytes(root / name / str(sev) / fashion_folder(int(labels[i])) / f'{i:05d}.png',
                                    png_bytes(Image.fromarray(np.ascontiguousarray(out))))
                log(f'    {name}: done')
        finally:
            np.random.set_state(state)
        counts = dict(images=len(picked), corruptions=len(names), severities=5,
                      files=len(picked) * len(names) * 5)
        return dict(card=self.card(args, hashes, counts, names), counts=counts, sources=hashes)

    def card(self, args, hashes, counts, corruption_names):
        """The set's ``DATA_CARD.md``."""
        rows = [[f'`{fashion_folder(i)}`', i, name, args.robust_per_class] for i, name in enumerate(FASHION_CLASSES)]
        return f"""# Fashion-MNIST-C demo set (robustness)

The first {args.robust_per_class} test (t10k) images of each Fashion-MNIST class ({counts['images']}
images, the first of the `fashion_mnist` set's `val/` images), each resized to
{CORRUPTION_SIZE}x{CORRUPTION_SIZE} (bicubic), made RGB and corrupted with the 15 ImageNet-C
corruptions of `imagecorruptions=={IMAGECORRUPTIONS_VERSION}` (PyPI) at severities 1-5:
{counts['files']} PNGs.

- **Source**: Debian package `{FASHION_MNIST['debian_package']}` {FASHION_MNIST['debian_version']};
  licence {FASHION_MNIST['licence']} (the corrupted images are derived from it).
- **Why 32x32**: ImageNet-C corrupts the 224x224 crops a model sees; the demo models see 32x32,
  and `imagecorruptions` needs at least 32 px.
- **Determinism**: numpy's generator is seeded per image with crc32(`<corruption>/<severity>/<index>`).
- **Compatibility**: `imagecorruptions` 1.1.2 predates numpy 2 and scikit-image 0.19;
  `tools/demo_data/fashion_mnist_c.py` maps its removed calls (`multichannel=True`, `np.float_`)
  onto their replacements and seeds scikit-image's impulse noise from numpy's generator.

## Layout

```
fashion_mnist_c/<corruption>/<severity>/<NN_class>/<idx>.png   # 32x32 RGB
```

Corruptions: {', '.join(f'`{c}`' for c in corruption_names)}.

Evaluate with `tools/analysis/robustness.py CONFIG CHECKPOINT --suites c --imagenet-c data/demo/fashion_mnist_c`.

## Classes

{md_table(['folder', 'label', 'Fashion-MNIST name', 'images'], rows)}
"""
