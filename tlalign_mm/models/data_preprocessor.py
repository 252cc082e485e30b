"""The pretraining data preprocessor: normalise, erase and mix a classification batch on the device.

Normalisation and random erasing after it follow DeiT (``main.py``: timm ``create_transform``
with ``re_prob``; here the erasing runs on the device, on the normalised batch); mixing is the
:class:`~tlalign_mm.mixing.BatchMixer`'s.  The output's ``mix`` (a
:class:`~tlalign_mm.structures.MixResult`) is what the classifier and its label rule read.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Optional

import torch
from mmengine.model import BaseDataPreprocessor

from ..mixing import BatchMixer
from ..registry import MODELS
from ..structures import MixResult

__all__ = ['TLAClsDataPreprocessor', 'IMAGENET_MEAN', 'IMAGENET_STD']

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@MODELS.register_module()
class TLAClsDataPreprocessor(BaseDataPreprocessor):
    """Normalise, erase and mix a classification batch on the device.

    Args:
        mean, std: per-channel statistics in the input's units (0..255 for the uint8 tensors
            the dataset pipeline produces).
        mixer: kwargs of :class:`~tlalign_mm.mixing.BatchMixer` (token CutMix by default in the
            TL-Align configs), or None for no mixing.  ``patch_size`` must equal the backbone's.
        random_erasing: kwargs of :func:`tlalign_mm.datasets.build_random_erasing`
            (``re_prob``, ``re_mode``, ``re_count``), or None.  Applied to the normalised batch
            before mixing, in training only.
        seed: optional seed of the mixer's private generator (reproducible mixing).  The
            host-side ``random.Random`` of training batch ``t`` is seeded with ``seed + t``
            (``t`` counted on the host and saved with the model as the ``mix_step`` buffer), so
            a run resumed from a checkpoint continues the same sequence of mixes instead of
            replaying it.  Without a seed the mixer draws from Python's global ``random``.
            Either way nothing is read back from the device.
        non_blocking: copy the batch to the device asynchronously (mmengine's
            ``BaseDataPreprocessor`` option; with the dataloader's ``pin_memory=True`` the host
            does not wait for the copy, as DeiT's ``samples.to(device, non_blocking=True)``).
        keep_clean_images: hand the label rule the normalised batch *before* random erasing
            as ``MixResult.source_images`` (one extra copy of the batch when erasing is on).
            The classifier sets it for rules that look at the unmixed images
            (``needs_clean_images``: TokenMix's teacher sees the clean crop, as the release's
            label maps are of the unerased image); otherwise ``source_images`` is the erased
            batch the mixer received.

    Input ``data``: dict with ``inputs`` (B, 3, H, W) uint8/float tensor or a list of
    (3, H, W) tensors of one size, and ``data_samples`` (list of ``ClsDataSample``).
    Output: dict(inputs (B, 3, H, W) float32 normalised, data_samples, mix) where ``mix`` is a
    :class:`~tlalign_mm.structures.MixResult` in training with a mixer, else None.
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 mixer: Optional[dict] = None, random_erasing: Optional[dict] = None,
                 seed: Optional[int] = None, non_blocking: bool = True, keep_clean_images: bool = False):
        super().__init__(non_blocking=non_blocking)
        self.keep_clean_images = bool(keep_clean_images)
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(-1, 1, 1), False)
        self.mixer = BatchMixer(**mixer) if mixer is not None else None
        self.random_erasing = None
        if random_erasing is not None:
            from ..datasets import build_random_erasing
            self.random_erasing = build_random_erasing(**random_erasing)
        self._seed = seed
        # The step lives on the host; the buffer only carries it into checkpoints (written
        # with fill_, which never waits for the device) and back (_load_from_state_dict).
        self._mix_step = 0
        self.register_buffer('mix_step', torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        step = state_dict.get(prefix + 'mix_step')
        if step is not None:
            self._mix_step = int(step)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _rng(self) -> Optional[random.Random]:
        if self._seed is None:
            return None
        rng = random.Random(self._seed + self._mix_step)
        self._mix_step += 1
        self.mix_step.fill_(self._mix_step)
        return rng

    # Mixing draws host-side random numbers for every batch; under ``torch.compile`` (mmengine's
    # ``compile=True`` compiles ``train_step``) it runs eagerly, so that those numbers do not
    # make dynamo recompile the model for every batch.
    @torch.compiler.disable
    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        inputs = data['inputs']
        if isinstance(inputs, (list, tuple)):
            shapes = {tuple(t.shape) for t in inputs}
            if len(shapes) != 1:
                raise ValueError(f'images in a batch must share one size to be mixed, got {sorted(shapes)}')
            inputs = torch.stack(list(inputs))
        x = (inputs.float() - self.mean) / self.std
        mix: Optional[MixResult] = None
        if training:
            clean = x
            if self.random_erasing is not None:
                x = self.random_erasing(x.clone() if self.keep_clean_images else x)   # erases in place
            if self.mixer is not None:
                mix = self.mixer(x, rng=self._rng())
                if self.keep_clean_images:
                    mix.source_images = clean
                x = mix.images
        return dict(inputs=x, data_samples=data.get('data_samples'), mix=mix)
