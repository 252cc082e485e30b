"""Pipeline transforms: timm's ImageNet augmentation, minus normalisation, and packing for mmengine.

Where each piece of the DeiT recipe lives (DeiT ``datasets.build_transform`` calls
``timm.data.create_transform(224, is_training=True, color_jitter=0.4,
auto_augment='rand-m9-mstd0.5-inc1', interpolation='bicubic', re_prob=0.25, re_mode='pixel',
re_count=1)``; eval is ``Resize(int(224 / 0.875) = 256, bicubic) + CenterCrop(224)``):

* in the data worker, :class:`TimmClassificationTransform`: PIL load -> timm's
  RandomResizedCropAndInterpolation + flip + RandAugment (+ ColorJitter, which timm disables
  when RandAugment is on) -> **uint8** tensor.  Built with ``create_transform(...,
  normalize=False)``, i.e. exactly the pipeline timm itself uses with its GPU prefetcher
  (``use_prefetcher=True`` also ends in ``MaybePILToTensor``).
* in the model's data preprocessor, on the device: ``(x - 255*mean) / (255*std)``, then
  :func:`build_random_erasing` (timm's ``RandomErasing`` works on *normalised* tensors: its
  'pixel' mode fills with N(0, 1) noise, which is only right after normalisation; this is where
  timm's ``PrefetchLoader`` applies it too), then mixing (CutMix / TL-Align).  Per-sample erasing
  before batch mixing keeps DeiT's order (there RE runs in the dataset, mixing in the train loop).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data.random_erasing import RandomErasing
from torchvision.transforms.functional import pil_to_tensor

from ..registry import TRANSFORMS
from ..structures import ClsDataSample

__all__ = ['ImageReadError', 'load_image', 'TimmClassificationTransform',
           'PackClsInputs', 'build_random_erasing']


class ImageReadError(OSError):
    """An image file exists but cannot be decoded (corrupt, truncated, not an image)."""


def load_image(path: str) -> Image.Image:
    """Read ``path`` as an RGB PIL image (timm / torchvision ``pil_loader`` behaviour).

    Grey, palette, RGBA and CMYK images are converted with ``convert('RGB')``.

    Raises:
        FileNotFoundError: ``path`` does not exist (names the path).
        ImageReadError: PIL cannot decode it, including truncated files (names the path).
    """
    try:
        with open(path, 'rb') as f:
            img = Image.open(f)
            return img.convert('RGB')  # forces the full decode while the file is open
    except FileNotFoundError as e:
        raise FileNotFoundError(f'image file not found: {path}') from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageReadError(f'cannot read image {path}: {type(e).__name__}: {e}') from e


_RESERVED = {'normalize': 'normalisation is done by the data preprocessor on the device',
             'use_prefetcher': 'the output is always an unnormalised uint8 tensor',
             'separate': 'not supported (AugMix split pipelines are not part of this recipe)',
             're_prob': 'random erasing needs normalised input: use build_random_erasing() '
                        'in the data preprocessor',
             're_mode': 'see re_prob', 're_count': 'see re_prob', 're_num_splits': 'see re_prob'}


@TRANSFORMS.register_module()
class TimmClassificationTransform:
    """Load an image and apply timm's ImageNet train or eval transform, without normalising.

    Wraps ``timm.data.create_transform(..., normalize=False)``.  Defaults are DeiT's
    (``deit/datasets.py::build_transform``): ``rand-m9-mstd0.5-inc1`` RandAugment, colour jitter
    0.4 (timm turns it off when RandAugment is on, as in DeiT), bicubic, RandomResizedCrop
    scale (0.08, 1) ratio (3/4, 4/3), hflip 0.5; eval resize ``floor(size / crop_pct)`` (256 for
    224 at crop_pct 0.875) on the short side, then centre crop.  Random erasing is deliberately
    not here: see :func:`build_random_erasing`.

    Args:
        input_size: int, (H, W) or (C, H, W) of the output.
        is_training: train (random) or eval (deterministic resize + centre crop) transform.
        auto_augment: timm auto-augment string, or None to disable (train only).
        color_jitter: float or 3/4-tuple (train only; timm leaves it out whenever an
            ``auto_augment`` policy other than '3a' is on, so with the default it is inactive,
            exactly as in DeiT).
        interpolation: 'bicubic', 'bilinear', 'random', ...
        crop_pct: eval centre-crop fraction; None -> timm's 0.875.
        scale, ratio: RandomResizedCrop ranges; None -> (0.08, 1.0), (3/4, 4/3).
        hflip: horizontal flip probability (train only).
        mean: used by timm only as RandAugment's fill colour (``round(255 * mean)``); the actual
            normalisation happens in the data preprocessor with its own mean/std.
        std: accepted for symmetry with timm; unused here.
        **timm_kwargs: any other ``create_transform`` argument (``vflip``, ``no_aug``,
            ``train_crop_mode``, ``crop_mode``, ``color_jitter_prob``, ...).  ``normalize``,
            ``use_prefetcher``, ``separate`` and ``re_*`` are refused, with the reason.

    Input ``results``: ``img_path`` (str) and optionally ``img`` (a PIL image or an (H, W, 3) uint8
    RGB array; then no file is read).
    Output ``results`` adds/overwrites ``img``: ``torch.uint8`` tensor (3, H, W), values 0..255, and
    ``ori_shape`` (h, w) of the decoded image, ``img_shape`` (H, W) of the output.

    Raises:
        OSError: ``FileNotFoundError`` or ``ImageReadError`` from :func:`load_image`, naming the file.
    """

    def __init__(self,
                 input_size: int | Sequence[int] = 224,
                 is_training: bool = True,
                 auto_augment: str | None = 'rand-m9-mstd0.5-inc1',
                 color_jitter: float | Sequence[float] | None = 0.4,
                 interpolation: str = 'bicubic',
                 crop_pct: float | None = None,
                 scale: Sequence[float] | None = None,
                 ratio: Sequence[float] | None = None,
                 hflip: float = 0.5,
                 mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                 std: Sequence[float] = IMAGENET_DEFAULT_STD,
                 **timm_kwargs) -> None:
        for key in timm_kwargs:
            if key in _RESERVED:
                raise ValueError(f'TimmClassificationTransform: {key!r} is not accepted: {_RESERVED[key]}')
        self.input_size = tuple(input_size) if isinstance(input_size, (list, tuple)) else input_size
        self.is_training = is_training
        self.cfg = dict(input_size=self.input_size, is_training=is_training, auto_augment=auto_augment,
                        color_jitter=color_jitter, interpolation=interpolation, crop_pct=crop_pct,
                        scale=tuple(scale) if scale is not None else None,
                        ratio=tuple(ratio) if ratio is not None else None, hflip=hflip,
                        mean=tuple(mean), std=tuple(std), **timm_kwargs)
        self.transform = create_transform(**self.cfg, normalize=False)

    def __call__(self, results: dict) -> dict:
        img = results.get('img')
        if isinstance(img, np.ndarray):         # in-memory sets (CIFAR): (H, W, 3) uint8 RGB
            img = Image.fromarray(img)
        if not isinstance(img, Image.Image):
            img = load_image(results['img_path'])
        elif img.mode != 'RGB':
            img = img.convert('RGB')
        results['ori_shape'] = (img.height, img.width)
        out = self.transform(img)
        if not isinstance(out, torch.Tensor):  # MaybePILToTensor passes tensors through; be safe
            out = pil_to_tensor(out) if isinstance(out, Image.Image) else torch.as_tensor(np.asarray(out))
        results['img'] = out
        results['img_shape'] = tuple(out.shape[-2:])
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.cfg}):\n{self.transform}'


@TRANSFORMS.register_module()
class PackClsInputs:
    """Pack ``results`` into ``dict(inputs=Tensor(3, H, W) uint8, data_samples=ClsDataSample)``.

    The mmengine convention (``BaseModel.forward(inputs, data_samples, mode)``); with
    ``collate_fn=dict(type='default_collate')`` a batch is ``inputs`` (B, 3, H, W) uint8 and
    ``data_samples`` a list of B :class:`ClsDataSample`; with mmengine's default
    ``pseudo_collate`` ``inputs`` is a list of (3, H, W) tensors (``BaseDataPreprocessor`` /
    ``ImgDataPreprocessor`` stack either).

    Args:
        meta_keys: keys of ``results`` copied into the sample's metainfo when present.

    ``results['img']`` may be a tensor (C, H, W), an HWC numpy array or a PIL image.
    """

    def __init__(self, meta_keys: Sequence[str] = ('img_path', 'ori_shape', 'img_shape', 'sample_idx')) -> None:
        self.meta_keys = tuple(meta_keys)

    def __call__(self, results: dict) -> dict:
        img = results['img']
        if isinstance(img, Image.Image):
            img = pil_to_tensor(img)
        elif isinstance(img, np.ndarray):
            arr = img[..., None] if img.ndim == 2 else img
            img = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        sample = ClsDataSample(metainfo={k: results[k] for k in self.meta_keys if k in results})
        if 'gt_label' in results:
            sample.gt_label = results['gt_label']
        return dict(inputs=img, data_samples=sample)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(meta_keys={self.meta_keys})'


class _RandomErasing(RandomErasing):
    """timm's ``RandomErasing`` that draws its fill on the input's device when ``device=None``."""

    def __call__(self, input: torch.Tensor) -> torch.Tensor:
        if not input.is_floating_point():
            raise TypeError('random erasing expects a normalised float tensor (timm fills with '
                            f'N(0, 1) noise), got {input.dtype}')
        if self._follow_input:
            self.device = input.device
        return super().__call__(input)


def build_random_erasing(re_prob: float = 0.25,
                         re_mode: str = 'pixel',
                         re_count: int = 1,
                         re_num_splits: int = 0,
                         device: str | torch.device | None = None) -> RandomErasing:
    """timm's ``RandomErasing`` as DeiT configures it, for use on a normalised batch.

    Same arguments as timm's ``create_transform(re_prob=, re_mode=, re_count=, re_num_splits=)``
    (area 0.02..1/3, aspect 0.3..1/0.3, 1..``re_count`` boxes; 'pixel' fills each box with
    per-pixel N(0, 1), 'rand' per-channel N(0, 1), 'const' zeros).  Call it on a float tensor
    (3, H, W) or (B, 3, H, W) *after* ``(x/255 - mean) / std``; each sample is erased
    independently with probability ``re_prob``, in place (the tensor is also returned).  Its
    randomness is Python's ``random`` plus torch's generator on the fill device.

    Args:
        device: where the fill noise is drawn; ``None`` (default) follows the input tensor.

    Returns:
        A ``timm.data.random_erasing.RandomErasing`` instance (a thin subclass that also checks
        the input is floating point and, with ``device=None``, follows the input's device).
    """
    eraser = _RandomErasing(re_prob, mode=re_mode, max_count=re_count, num_splits=re_num_splits,
                            device='cpu' if device is None else device)
    eraser._follow_input = device is None
    return eraser

