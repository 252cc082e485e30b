"""ImageNet-style data for pretraining: dataset, timm transforms (unnormalised), DeiT's sampler;
the transfer sets (CIFAR-10/100, Flowers-102, Stanford Cars) through torchvision (``TorchvisionClsDataset``);
the fault-tolerant wrappers the resumable train loops put around any training set
(``FaultTolerantDataset``, ``ResumableBatchSampler``: per-sample random streams, bad-file substitution).

Registered in tlalign_mm's registries (``tlalign_mm.registry``): ``ImageNetDataset``,
``ImageFolderDataset`` (DATASETS); ``TimmClassificationTransform``, ``PackClsInputs``
(TRANSFORMS); ``RepeatAugSampler`` (DATA_SAMPLERS).  Normalisation and random erasing belong to
the model's data preprocessor (:func:`build_random_erasing`).
"""
from .fault_tolerant import (
    BAD_SAMPLES_KEY,
    BadSampleError,
    FaultTolerantDataset,
    RecordingCollate,
    ResumableBatchSampler,
    SampleIndex,
    check_image_file,
)
from .imagenet import IMG_EXTENSIONS, ImageFolderDataset, ImageNetDataset
from .samplers import RepeatAugSampler
from .transfer import TRANSFER_SETS, TorchvisionClsDataset
from .transforms import (
    ImageReadError,
    PackClsInputs,
    TimmClassificationTransform,
    build_random_erasing,
    load_image,
)

__all__ = [
    'IMG_EXTENSIONS', 'ImageNetDataset', 'ImageFolderDataset', 'RepeatAugSampler',
    'ImageReadError', 'PackClsInputs', 'TimmClassificationTransform', 'build_random_erasing',
    'load_image', 'TorchvisionClsDataset', 'TRANSFER_SETS', 'FaultTolerantDataset', 'ResumableBatchSampler',
    'RecordingCollate', 'SampleIndex', 'BadSampleError', 'BAD_SAMPLES_KEY', 'check_image_file'
]
