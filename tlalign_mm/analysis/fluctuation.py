"""Token fluctuation: how far the TL-Align target drifts from the plain CutMix target.

For a mixed batch, :func:`aligned_targets`
gives the plain area target ``y_area = lam * y_A + (1 - lam) * y_B`` and the aligned target
``y_al = lam_al * y_A + (1 - lam_al) * y_B`` traced through the network.  Measured here, per
sample:

* ``target_l2 = ||y_al - y_area||_2`` over the K classes (label smoothing included) -- per
  sample, the quantity whose batch mean the classifier logs as ``align/target_l2``.  Since
  ``y_al - y_area = (lam_al - lam) (y_A - y_B)``, it equals ``|lam_al - lam| * (1 - s) * sqrt(2)``
  (s = label smoothing) when A and B have different classes, and 0 when they share a class;
* ``lam`` (area share of A) and ``lam_aligned`` (share of A in the aligned target);
* per block ``l``: ``lam_l``, the share of A in the model's readout (class token for DeiT, mean
  token for Swin) after block ``l``; the per-layer drift is ``mean |lam_l - lam|``.

The labels are always traced with the exact 2-channel source embedding (``docs/advanced_guides/method.md``,
"Two channels instead of K"), whatever ``label_channels`` the model trains with, and whether it trains with
TL-Align or with the CutMix baseline (the targets are computed, not used).

Everything runs without gradients.  :func:`run_fluctuation` puts the model in eval mode (no
dropout / drop-path) but mixes the batches as in training, through the model's data
preprocessor in training mode (random erasing included).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from ..align import align_stats, aligned_target, expand_source_labels, mixed_target, smooth_one_hot
from ..structures import MixResult
from .tracing import block_names, iter_blocks, record_block_labels, source_share_readout

__all__ = ['aligned_targets', 'BatchFluctuation', 'FluctuationResult', 'measure_batch', 'measure_data_batch',
           'run_fluctuation', 'autocast_drift']


def aligned_targets(model, inputs: Tensor, labels: Tensor, mix, carry_labels: Optional[bool] = None,
                    label_channels: Optional[str] = None):
    """Features, the area target and the TL-Align target of a mixed batch of ``model`` (a
    :class:`~tlalign_mm.TLAImageClassifier`).

    The aligned target is TL-Align's, with the backbone's current alignment settings and
    the model's ``label_rule.readout``, whatever rule the model trains with (the readout and the
    statistics are ``tlalign_mm/align/readout.py``'s, as the rules use them).

    Args:
        inputs: (B, 3, H, W) mixed images (``mix.images``).
        labels: (B,) integer classes of the unmixed images, on the inputs' device.
        mix: the :class:`~tlalign_mm.structures.MixResult` of the batch.
        carry_labels: run the backbone with labels; default: whether ``model.label_rule`` is a
            TL-Align rule (:class:`~tlalign_mm.models.label_rules.TLAlignRule`).
        label_channels: 'source' or 'classes'; default: the TL-Align rule's ``label_channels``
            ('source' for any other rule).

    Returns:
        (features (B, C), area target (B, K), aligned target (B, K) or None, statistics:
        a dict of detached 0-d tensors, empty when no labels were carried; the ``align/*`` keys).

    Raises:
        ValueError: labels carried by a backbone that cannot carry them; a mixer whose
            token grid differs from the backbone's.
    """
    from ..models.label_rules import TLAlignRule
    tl_align = isinstance(model.label_rule, TLAlignRule)
    carry_labels = tl_align if carry_labels is None else carry_labels
    label_channels = label_channels or (model.label_rule.label_channels if tl_align else 'source')
    y_a = smooth_one_hot(labels, model.num_classes, model.label_smoothing)
    y_b = y_a[mix.partner]
    area = mixed_target(mix.lam, y_a, y_b)
    if not carry_labels:
        return model.extract_feat(inputs), area, None, {}
    if not model.backbone.carries_labels:
        raise ValueError(f'{type(model.backbone).__name__} cannot carry token labels')
    model.backbone.check_token_grid(mix, inputs.shape[-2:])
    initial_labels = model.backbone.first_stage_mix(mix).source_labels(model.num_prefix_tokens)
    if label_channels == 'classes':
        initial_labels = expand_source_labels(initial_labels, y_a, y_b)
    feat, lab = model.extract_feat(inputs, initial_labels)
    row, aligned = aligned_target(lab, y_a, y_b, model.label_rule.readout, model.num_prefix_tokens, label_channels)
    return feat, area, aligned, align_stats(row, mix.lam, aligned, area)

@dataclass
class BatchFluctuation:
    """Token-fluctuation figures of one mixed batch (all tensors on the CPU, float32).

    Attributes:
        lam: (B,) area share of image A, in [0, 1].
        lam_aligned: (B,) share of A in the aligned target, in [0, 1].
        target_l2: (B,) ``||y_aligned - y_area||_2``, in [0, sqrt(2)].
        layer_lam: (L, B) share of A in the readout after each of the L blocks.
        labels: (B,) class of each image; partner_labels: (B,) class of its partner.
        mode: the mixer's mode for the batch (``MixResult.mode``).
    """
    lam: Tensor
    lam_aligned: Tensor
    target_l2: Tensor
    layer_lam: Tensor
    labels: Tensor
    partner_labels: Tensor
    mode: str


@torch.no_grad()
def measure_batch(model, inputs: Tensor, labels: Tensor, mix: MixResult) -> BatchFluctuation:
    """Fluctuation figures of one already mixed batch.

    Args:
        model: a :class:`~tlalign_mm.models.TLAImageClassifier` (either ``tl_align`` setting).
            Its mode (train / eval) is left as it is.
        inputs: (B, 3, H, W) mixed, normalised images (``mix.images``) on the model's device.
        labels: (B,) integer classes of the (unmixed) images.
        mix: the :class:`~tlalign_mm.structures.MixResult` that produced ``inputs``; an unmixed
            result (mode 'none', ``share_b`` all 0, ``lam`` 1) gives ``target_l2 = 0``.

    Returns:
        :class:`BatchFluctuation` with L = number of blocks (ViT ``num_layers``, Swin
        ``sum(depths)``).
    """
    backbone = model.backbone
    labels = labels.to(inputs.device)
    # the paper's alignment (every block, residual average), whatever rule the model trains with
    with backbone.alignment('all', True), record_block_labels(backbone, inputs.shape[-2:]) as trace:
        _, area, aligned, _ = aligned_targets(model, inputs, labels, mix, carry_labels=True, label_channels='source')
    blocks = iter_blocks(backbone)
    prefix = model.num_prefix_tokens
    layer_lam = torch.stack([source_share_readout(trace.labels[b.index], model.label_rule.readout, prefix)
                             for b in blocks])
    partner = mix.partner.to(labels.device)
    return BatchFluctuation(
        lam=mix.lam.detach().float().cpu(),
        lam_aligned=layer_lam[-1].cpu(),
        target_l2=(aligned.float() - area.float()).square().sum(-1).sqrt().cpu(),
        layer_lam=layer_lam.cpu(),
        labels=labels.cpu(),
        partner_labels=labels[partner].cpu(),
        mode=mix.mode)


@torch.no_grad()
def measure_data_batch(model, data_batch: dict) -> BatchFluctuation:
    """Mix one dataloader batch with the model's data preprocessor (training mode) and measure it.

    Args:
        model: a ``TLAImageClassifier`` whose ``data_preprocessor`` has a mixer.
        data_batch: a collated batch, dict(inputs, data_samples) as the dataloader yields it.

    Raises:
        ValueError: the data preprocessor produced no mix (no mixer configured).
    """
    data = model.data_preprocessor(data_batch, training=True)
    mix = data.get('mix')
    if mix is None:
        raise ValueError('the data preprocessor returned no MixResult: the config has no mixer '
                         '(model.data_preprocessor.mixer), so there is nothing to align')
    labels = model._labels(data['data_samples'])
    return measure_batch(model, data['inputs'], labels, mix)


@dataclass
class FluctuationResult:
    """Per-sample and per-layer figures over several batches.

    Attributes:
        batches: the :class:`BatchFluctuation` of every batch, in order.
        layer_names: L display names of the blocks ('0'.. for ViT, 'stage.block' for Swin).
        readout: 'cls' or 'mean' (what lam_l is read from).
    """
    batches: list[BatchFluctuation] = field(default_factory=list)
    layer_names: list[str] = field(default_factory=list)
    readout: str = 'cls'

    def _cat(self, name: str) -> Tensor:
        return torch.cat([getattr(b, name) for b in self.batches]) if self.batches else torch.zeros(0)

    @property
    def lam(self) -> Tensor:
        """(S,) lam of all S samples."""
        return self._cat('lam')

    @property
    def lam_aligned(self) -> Tensor:
        """(S,) aligned lam of all samples."""
        return self._cat('lam_aligned')

    @property
    def target_l2(self) -> Tensor:
        """(S,) target L2 (L2 distance of the targets) of all samples."""
        return self._cat('target_l2')

    @property
    def layer_lam(self) -> Tensor:
        """(L, S) share of A in the readout after each block."""
        if not self.batches:
            return torch.zeros(len(self.layer_names), 0)
        return torch.cat([b.layer_lam for b in self.batches], dim=1)

    def layer_drift(self) -> tuple[Tensor, Tensor]:
        """(mean, std) over samples of ``|lam_l - lam|``, each (L,)."""
        d = (self.layer_lam - self.lam[None]).abs()
        std = d.std(dim=1, unbiased=False) if d.shape[1] else torch.zeros(d.shape[0])
        return d.mean(dim=1), std

    def summary(self) -> dict:
        """Scalar summary: sample counts, target L2 mean/std, lam / aligned lam means, ``|gap|`` mean/std,
        and the per-layer drift (lists, one entry per block)."""
        lam, lam_aligned, target_l2 = self.lam, self.lam_aligned, self.target_l2
        gap = (lam_aligned - lam).abs()
        n = int(lam.numel())

        def stat(t: Tensor, fn: str) -> float:
            if t.numel() == 0:
                return math.nan
            return float(t.mean()) if fn == 'mean' else float(t.std(unbiased=False))

        mean_d, std_d = self.layer_drift()
        return dict(
            num_batches=len(self.batches), num_samples=n,
            num_mixed=int((lam < 1).sum()),
            target_l2_mean=stat(target_l2, 'mean'), target_l2_std=stat(target_l2, 'std'),
            lam_mean=stat(lam, 'mean'), lam_aligned_mean=stat(lam_aligned, 'mean'),
            lam_gap_mean=stat(gap, 'mean'), lam_gap_std=stat(gap, 'std'),
            readout=self.readout, layers=list(self.layer_names),
            layer_drift_mean=[float(v) for v in mean_d], layer_drift_std=[float(v) for v in std_d],
        )


@torch.no_grad()
def run_fluctuation(model, batches: Iterable[dict], num_batches: int) -> FluctuationResult:
    """Measure ``num_batches`` batches of a dataloader.

    Args:
        model: a ``TLAImageClassifier`` with a mixer; it is put in eval mode (no dropout /
            drop-path) and left there; mixing still runs (preprocessor in training mode).
        batches: an iterable of collated batches (a dataloader); it is re-iterated from the start
            if it ends before ``num_batches``.
        num_batches: N >= 1.

    Returns:
        :class:`FluctuationResult` over N batches.
    """
    if num_batches < 1:
        raise ValueError(f'num_batches must be >= 1, got {num_batches}')
    model.eval()
    result = FluctuationResult(layer_names=block_names(iter_blocks(model.backbone)),
                               readout=model.label_rule.readout)
    for data_batch in _take(batches, num_batches):
        result.batches.append(measure_data_batch(model, data_batch))
    return result


def _take(batches: Iterable[dict], num_batches: int) -> Iterator[dict]:
    """``num_batches`` (>= 1, checked by the callers) batches of ``batches``, re-iterating it from the
    start when it ends early.

    Raises:
        ValueError: ``batches`` yields nothing.
    """
    done = 0
    while done < num_batches:
        got = False
        for data_batch in batches:
            got = True
            yield data_batch
            done += 1
            if done >= num_batches:
                return
        if not got:
            raise ValueError('the dataloader yielded no batch')


@torch.no_grad()
def autocast_drift(model, batches: Iterable[dict], num_batches: int, dtype: torch.dtype) -> dict:
    """How far mixed precision moves the aligned targets: each batch mixed once, measured twice.

    The same mixed batch goes through :func:`measure_batch` in float32 and under
    ``torch.autocast(device_type, dtype)`` (the model's device: CUDA float16 / bfloat16 as AMP
    training runs it; CPU autocast takes both dtypes as well, with its own kernels).  With the
    backbone's default ``label_dtype='auto'`` the labels take the features' low-precision
    attention (their fused call, or the one materialised softmax) and are renormalised in
    float32 (:mod:`tlalign_mm.align.propagate`), so the
    drift comes from the rounded attention weights and label outputs, from the low-precision
    q / k that form the attention, and from the features drifting through the blocks.

    Args:
        model: a ``TLAImageClassifier`` with a mixer; put in eval mode and left there.
        batches: an iterable of collated batches (re-iterated if it ends early).
        num_batches: N >= 1.
        dtype: the autocast dtype; ``torch.float32`` disables autocast (the drift is then 0).

    Returns:
        dict with ``num_samples``, ``dtype``, ``device``, and over all samples:
        ``lam_aligned_absdiff_mean`` / ``_max`` (``|lam_al(amp) - lam_al(fp32)|``),
        ``target_l2_mean`` / ``_max`` (``||y_al(amp) - y_al(fp32)||_2`` over the K classes,
        label smoothing included, as the target L2 above) and ``lam_gap_mean`` (the fluctuation
        ``mean |lam_al - lam|`` in fp32, the scale the drift is to be compared with).

    Raises:
        ValueError: ``num_batches < 1``, an empty dataloader, or a batch without a mix.
    """
    if num_batches < 1:
        raise ValueError(f'num_batches must be >= 1, got {num_batches}')
    device_type = next(model.parameters()).device.type
    model.eval()
    lam, la32, la_amp, differ = [], [], [], []
    for data_batch in _take(batches, num_batches):
        data = model.data_preprocessor(data_batch, training=True)
        mix = data.get('mix')
        if mix is None:
            raise ValueError('the data preprocessor returned no MixResult: the config has no mixer')
        labels = model._labels(data['data_samples'])
        r32 = measure_batch(model, data['inputs'], labels, mix)
        with torch.autocast(device_type=device_type, dtype=dtype, enabled=dtype != torch.float32):
            rlo = measure_batch(model, data['inputs'], labels, mix)
        lam.append(r32.lam)
        la32.append(r32.lam_aligned)
        la_amp.append(rlo.lam_aligned)
        differ.append((r32.labels != r32.partner_labels).float())
    lam, la32, la_amp, differ = (torch.cat(t) for t in (lam, la32, la_amp, differ))
    d = (la_amp - la32).abs()
    # y_al = lam_al y_A + (1 - lam_al) y_B, so ||dy|| = |dlam| ||y_A - y_B|| = |dlam| sqrt(2) (1 - s)
    l2 = d * differ * math.sqrt(2.0) * (1.0 - float(model.label_smoothing))
    return dict(num_samples=int(d.numel()), dtype=str(dtype).replace('torch.', ''), device=device_type,
                lam_aligned_absdiff_mean=float(d.mean()), lam_aligned_absdiff_max=float(d.max()),
                target_l2_mean=float(l2.mean()), target_l2_max=float(l2.max()),
                lam_gap_mean=float((la32 - lam).abs().mean()))
