"""TL-Align (Xiao et al., ICCV 2023) and its ablations; dense TL-Align (TokenLabeling's dense loss on
the aligned token labels)."""
from __future__ import annotations

from typing import Optional

import torch.nn as nn
from timm.loss import SoftTargetCrossEntropy
from torch import Tensor

from ...align import LABEL_CHANNELS, READOUTS, align_stats, expand_source_labels
from ...registry import MODELS
from .base import LabelRule, RuleInput, RuleOutput

__all__ = ['TLAlignRule', 'DenseTLAlignRule']


@MODELS.register_module(name='TLAlign')
class TLAlignRule(LabelRule):
    """Token-Label Alignment: the labels follow the attention block by block; the target is the
    final label embedding read out where the classifier reads its feature.

    Args:
        blocks: the blocks that align: 'all' (the paper), 'last' (one layer's attention), or a
            list of block indices (Swin: counted over all stages in order).  Table 8 of the paper.
        residual: average each block's aligned labels with its input, ``(Y + A Y) / 2`` (the
            paper; the reference ``Block.forward``), or take ``A Y`` alone.
        readout: 'auto' (class token for a DeiT whose feature is its class token, else the mean
            over patch tokens), 'cls' or 'mean'.
        label_channels: 'source' (K = 2: the share of each image, expanded to classes at the
            end; exact and cheap) or 'classes' (K = num_classes labels carried, the reference
            code's way); both give the same target (``docs/advanced_guides/method.md``).

    Raises:
        ValueError: a bad option value; at build time, a backbone that cannot carry labels or a
            'cls' readout without a class token.
    """

    carries_labels = True

    def __init__(self, blocks='all', residual: bool = True, readout: str = 'auto',
                 label_channels: str = 'source'):
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f'TLAlign readout must be one of {READOUTS}, got {readout!r}')
        if label_channels not in LABEL_CHANNELS:
            raise ValueError(f'TLAlign label_channels must be one of {LABEL_CHANNELS}, got {label_channels!r}')
        self.blocks = blocks
        self.residual = bool(residual)
        self.readout = readout
        self.label_channels = label_channels

    def setup(self, model) -> None:
        self._require_labels(model)
        super().setup(model)
        model.backbone.set_alignment(self.blocks, self.residual)

    def initial_labels(self, mix, y_a, y_b) -> Tensor:
        source = mix.source_labels(self.num_prefix_tokens)
        return expand_source_labels(source, y_a, y_b) if self.label_channels == 'classes' else source

    def forward(self, inp: RuleInput) -> RuleOutput:
        row, aligned = self.tl_align_target(inp, self.label_channels)
        return RuleOutput(aligned, align_stats(row, inp.mix.lam, aligned, inp.area))


@MODELS.register_module(name='DenseTLAlign')
class DenseTLAlignRule(TLAlignRule):
    """TL-Align, plus a dense loss on every output token's own aligned label.

    A shared token head (a linear layer, C -> K) maps each final patch token to logits; the
    loss ``dense_weight * mean_tokens SoftTargetCE(token_logits, y_aligned_token)`` is added to
    the classifier's loss as ``loss_dense`` (TokenLabeling's dense loss, with the token labels of
    the alignment instead of a teacher's label maps).  The head trains on the pooled target as
    in :class:`TLAlignRule`.  Inference never runs the token head.

    Args:
        dense_weight: weight of the dense loss (TokenLabeling: 0.5).
        token_head_init_std: std of the token head's truncated-normal weight init (bias 0).
        blocks, residual, readout, label_channels: as :class:`TLAlignRule`.

    Raises:
        ValueError: ``dense_weight`` < 0, or as :class:`TLAlignRule`.
    """

    needs_tokens = True

    def __init__(self, dense_weight: float = 0.5, token_head_init_std: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        if not dense_weight >= 0.0:
            raise ValueError(f'DenseTLAlign dense_weight must be >= 0, got {dense_weight!r}')
        self.dense_weight = float(dense_weight)
        self.token_head_init_std = token_head_init_std
        self.token_head: Optional[nn.Linear] = None
        self.dense_loss = SoftTargetCrossEntropy()            # timm's, the head's loss too

    def setup(self, model) -> None:
        super().setup(model)
        from timm.layers import trunc_normal_
        self.token_head = nn.Linear(model.head.in_channels, model.num_classes)
        trunc_normal_(self.token_head.weight, std=self.token_head_init_std)
        nn.init.zeros_(self.token_head.bias)

    def forward(self, inp: RuleInput) -> RuleOutput:
        out = super().forward(inp)
        token_labels = inp.labels[:, self.num_prefix_tokens:]
        if self.label_channels == 'source':
            token_labels = expand_source_labels(token_labels, inp.y_a, inp.y_b)
        logits = self.token_head(inp.tokens).float()
        dense = self.dense_loss(logits, token_labels)      # (B, N, K): the mean over samples and tokens
        return RuleOutput(out.target, out.stats, dict(out.losses, loss_dense=self.dense_weight * dense))
