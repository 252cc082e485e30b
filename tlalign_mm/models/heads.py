"""The classification head of the pretraining model: logits, loss and predictions.

The split follows mmpretrain's ``LinearClsHead`` (``mmpretrain/models/heads/linear_head.py``):
the classifier builds the training target and stores it in each data sample as ``gt_score``, as
mmpretrain's batch augments do; the head turns pooled features into logits, the loss against
``gt_score`` (or the one-hot ``gt_label`` when no soft target is set), and the predictions.

The loss is a config: any ``torch.nn`` loss of (logits, soft targets) registered in tlalign_mm's
``MODELS``.  timm's ``SoftTargetCrossEntropy`` (DeiT's loss under Mixup / CutMix) is registered here
and is the default; timm's ``BinaryCrossEntropy`` (TokenMix's ``--use-bce``: per-class sigmoid
cross-entropy against the soft target, mean over batch and classes; its ``smoothing`` applies to
hard labels only, so a soft target is used as it is) is registered too.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.structures import BaseDataElement
from timm.loss import BinaryCrossEntropy, SoftTargetCrossEntropy
from torch import Tensor

from ..registry import MODELS

__all__ = ['TLALinearClsHead', 'stack_gt_scores', 'store_gt_scores', 'pool_tokens', 'patch_tokens', 'fit_head_to']

MODELS.register_module(name='SoftTargetCrossEntropy', module=SoftTargetCrossEntropy)
MODELS.register_module(name='BinaryCrossEntropy', module=BinaryCrossEntropy)


def pool_tokens(out: Tensor, pool_type: str, num_prefix_tokens: int) -> Tensor:
    """A backbone's last output -> the pooled (B, C) feature a head reads.

    Args:
        out: (B, C) already pooled; (B, C, H, W) feature map (averaged over H, W); or
            (B, P + N, C) tokens with ``P = num_prefix_tokens`` prefix rows first.
        pool_type: for tokens, ``'cls_token'`` (row 0) or ``'avg_featmap'`` (mean of the N patch
            rows), mmpretrain's ``out_type`` names.
        num_prefix_tokens: P (class / distillation tokens).
    """
    if out.dim() == 2:
        return out
    if out.dim() == 4:
        return out.mean(dim=(2, 3))
    if pool_type == 'cls_token':
        return out[:, 0]
    return out[:, num_prefix_tokens:].mean(dim=1)


def fit_head_to(head: dict, backbone: nn.Module) -> dict:
    """A head config whose ``in_channels`` is the width C of the feature :func:`pool_tokens` gives for
    ``backbone``: its declared ``num_features`` (the last returned stage's channels, timm's meaning;
    :class:`~tlalign_mm.models.backbones.TLABackbone`).

    Args:
        head: head config; ``in_channels`` None (or absent) is filled in, a given one is checked.
        backbone: the built backbone.

    Returns:
        a new dict (``head`` is not modified).

    Raises:
        ValueError: ``head['in_channels']`` is given and differs from C (names both widths).
    """
    width = backbone.num_features
    head = dict(head)
    if head.get('in_channels') is None:
        head['in_channels'] = width
    elif head['in_channels'] != width:
        raise ValueError(f"head.in_channels={head['in_channels']} but the backbone's pooled feature "
                         f'has {width} channels; leave in_channels None to take it from the backbone')
    return head


def patch_tokens(out: Tensor, num_prefix_tokens: int) -> Tensor:
    """A backbone's last output, (B, C, H, W) or (B, P + N, C) -> the (B, N, C) patch tokens
    (row-major over the token grid; prefix rows dropped)."""
    if out.dim() == 4:
        return out.flatten(2).transpose(1, 2)
    return out[:, num_prefix_tokens:]


# The two helpers below loop over Python data samples.  Under ``torch.compile`` they run eagerly
# (one clean graph break each) instead of being traced sample by sample.
@torch.compiler.disable
def store_gt_scores(data_samples, target: Tensor) -> None:
    """Store row ``i`` of ``target`` (B, K) as ``data_samples[i].gt_score`` (mmpretrain's field).

    Raises:
        ValueError: the batch and the target differ in length.
    """
    if len(data_samples) != target.shape[0]:
        raise ValueError(f'{len(data_samples)} data samples for {target.shape[0]} targets')
    for ds, t in zip(data_samples, target):
        ds.set_field(t, 'gt_score')


@torch.compiler.disable
def stack_gt_scores(data_samples, num_classes: int, device=None) -> Tensor:
    """The (B, K) float target of a batch: each sample's ``gt_score``, else its one-hot ``gt_label``.

    Args:
        data_samples: B data samples; each has ``gt_score`` (K,) float or ``gt_label`` (1,) int64.
        num_classes: K.
        device: where the result lives (default: that of the first sample's field).

    Raises:
        ValueError: some samples carry ``gt_score`` and others do not, or a ``gt_score`` is not
            of length K.
    """
    has = ['gt_score' in ds for ds in data_samples]
    if any(has) and not all(has):
        raise ValueError('either every data sample carries gt_score or none does '
                         f'({sum(has)} of {len(has)} do)')
    if all(has) and has:
        target = torch.stack([ds.gt_score for ds in data_samples])
        if target.shape[-1] != num_classes:
            raise ValueError(f'gt_score has {target.shape[-1]} classes, the head {num_classes}')
        return target.to(device) if device is not None else target
    labels = torch.cat([ds.gt_label.reshape(-1) for ds in data_samples])
    if device is not None:
        labels = labels.to(device, non_blocking=True)
    return F.one_hot(labels, num_classes).float()


@MODELS.register_module()
class TLALinearClsHead(BaseModule):
    """A linear layer on the pooled feature, trained on soft targets.

    Args:
        num_classes: K.
        in_channels: C, the width of the pooled feature.  The classifier fills it in from its
            backbone when the config leaves it None.
        loss: config of the loss module, called as ``loss(logits (B, K) float32, target (B, K))``
            and returning a 0-d tensor; default timm's ``SoftTargetCrossEntropy``.
        init_cfg: mmengine init config; default ``TruncNormal`` (std 0.02, bias 0), DeiT's head
            initialisation (``timm.models.vision_transformer._init_weights``).

    ``forward(feats)``: ``feats`` is a (B, C) tensor, or a tuple of stage outputs whose last is
    (B, C) (as backbones return them); gives logits (B, K) in the features' dtype.

    Raises:
        ValueError: ``num_classes`` < 1 or ``in_channels`` not a positive integer.
    """

    def __init__(self, num_classes: int, in_channels: Optional[int] = None,
                 loss: dict = dict(type='SoftTargetCrossEntropy'),
                 init_cfg: Optional[dict] = dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.)):
        super().__init__(init_cfg=init_cfg)
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f'num_classes must be a positive integer, got {num_classes!r}')
        if in_channels is None or int(in_channels) != in_channels or in_channels < 1:
            raise ValueError(f'in_channels must be a positive integer, got {in_channels!r} (the '
                             'classifier sets it from the backbone when the config leaves it None)')
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.fc = nn.Linear(self.in_channels, self.num_classes)
        self.loss_module = MODELS.build(loss) if isinstance(loss, dict) else loss

    @staticmethod
    def pre_logits(feats: Union[Tensor, tuple]) -> Tensor:
        """The (B, C) feature the layer reads: ``feats`` itself, or the last of a tuple."""
        return feats[-1] if isinstance(feats, (tuple, list)) else feats

    def forward(self, feats: Union[Tensor, tuple]) -> Tensor:
        return self.fc(self.pre_logits(feats))

    def loss(self, feats: Union[Tensor, tuple], data_samples) -> dict:
        """``dict(loss=...)``: the loss of the logits against :func:`stack_gt_scores`.

        The logits are taken to float32 first (under autocast the layer runs in half precision;
        the softmax and the loss do not).
        """
        logits = self(feats)
        target = stack_gt_scores(data_samples, self.num_classes, logits.device)
        return dict(loss=self.loss_module(logits.float(), target.float()))

    def predict(self, feats: Union[Tensor, tuple], data_samples=None) -> list:
        """Data samples with ``pred_score`` (K,) float32 softmax and ``pred_label`` (1,) int64.

        ``data_samples=None`` makes new ``BaseDataElement`` s.
        """
        scores = self(feats).float().softmax(dim=-1)
        if data_samples is None:
            data_samples = [BaseDataElement() for _ in range(scores.shape[0])]
        labels = scores.argmax(dim=-1, keepdim=True)
        for ds, s, lab in zip(data_samples, scores, labels):
            ds.set_field(s, 'pred_score')
            ds.set_field(lab, 'pred_label')
        return data_samples
