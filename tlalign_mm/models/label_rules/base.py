"""What every label rule shares: :class:`RuleInput`, :class:`RuleOutput`, :class:`LabelRule`."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Optional

import torch.nn as nn
from torch import Tensor

from ...align import aligned_target
from ...structures import MixResult

__all__ = ['RuleInput', 'RuleOutput', 'LabelRule', 'check_choice']


def check_choice(rule: str, option: str, value, allowed: tuple):
    if value not in allowed:
        raise ValueError(f'{rule} {option} must be one of {allowed}, got {value!r}')
    return value


@dataclass
class RuleInput:
    """What a label rule reads for one mixed batch.

    Attributes:
        mix: the batch's :class:`~tlalign_mm.structures.MixResult` (``share_b`` as the backbone's
            first stage sees it).
        y_a, y_b: (B, K) float32 smoothed one-hot targets of each image and of its partner.
        area: (B, K) float32 area target ``lam * y_A + (1 - lam) * y_B``.
        labels: (B, N, K') float32 labels the backbone carried (prefix rows first), or None on a
            step that carried none.
        tokens: (B, N_patch, C) final patch-token features, only for rules with ``needs_tokens``.
        label_smoothing: the smoothing in ``y_a`` / ``y_b``, in [0, 1).
    """
    mix: MixResult
    y_a: Tensor
    y_b: Tensor
    area: Tensor
    labels: Optional[Tensor] = None
    tokens: Optional[Tensor] = None
    label_smoothing: float = 0.0


@dataclass
class RuleOutput:
    """What a label rule returns: the (B, K) float32 ``target``, its ``stats`` (``align/*``,
    detached 0-d tensors, logged) and extra ``losses`` (0-d tensors, added to the loss)."""
    target: Tensor
    stats: dict = field(default_factory=dict)
    losses: dict = field(default_factory=dict)


class LabelRule(nn.Module, metaclass=abc.ABCMeta):
    """Base class of the label rules: each owns its target, from a :class:`RuleInput` to a
    :class:`RuleOutput`.

    Class attributes:
        carries_labels: the backbone carries token labels on every mixed training step.
        needs_tokens: the rule reads the final patch tokens (``RuleInput.tokens``).
        needs_clean_images: the rule reads the batch before random erasing
            (``MixResult.source_images``).

    :meth:`setup` runs once, when the classifier is built: it checks that the model has what
    the rule needs, configures the backbone's alignment and records what the rule reads later
    (``num_prefix_tokens``, the resolved ``readout``).  After it the rule never calls back into
    the classifier.  Subclasses implement :meth:`forward` and may override
    :meth:`initial_labels`.
    """

    carries_labels = False
    needs_tokens = False
    needs_clean_images = False

    def __init__(self):
        super().__init__()
        self.readout = 'auto'
        self.num_prefix_tokens = 0
        self.pooled_readout = 'mean'

    def setup(self, model) -> None:
        """Record the model's prefix tokens and pooled readout, resolve ``self.readout``.

        Raises:
            ValueError: a 'cls' readout for a backbone without a class token (names the rule).
        """
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.pooled_readout = 'cls' if (self.num_prefix_tokens and model.pool_type == 'cls_token') else 'mean'
        if self.readout == 'auto':
            self.readout = self.pooled_readout
        elif self.readout == 'cls' and not self.num_prefix_tokens:
            raise ValueError(f"{type(self).__name__}: readout 'cls' needs a backbone with a class token; "
                             f"{type(model.backbone).__name__} has none (use readout='mean')")

    def _require_labels(self, model) -> None:
        if not model.backbone.carries_labels:
            raise ValueError(
                f'label rule {type(self).__name__} needs a backbone that carries token labels through '
                'its attention (TLAVisionTransformer, TLASwinTransformer, TLAPyramidVisionTransformer); '
                f'{type(model.backbone).__name__} cannot. Use label_rule=dict(type=\'Area\') with this backbone.')

    def initial_labels(self, mix: MixResult, y_a: Tensor, y_b: Tensor) -> Tensor:
        """(B, N, K) float32 labels the backbone carries (default: TL-Align's 2-channel source
        embedding, :meth:`~tlalign_mm.structures.MixResult.source_labels`); ``y_a`` / ``y_b`` as
        in :class:`RuleInput`."""
        return mix.source_labels(self.num_prefix_tokens)

    def tl_align_target(self, inp: RuleInput, label_channels: str = 'source') -> tuple[Tensor, Tensor]:
        """(read-out row, target) of TL-Align from ``inp.labels`` at this rule's readout
        (:func:`~tlalign_mm.align.aligned_target`)."""
        return aligned_target(inp.labels, inp.y_a, inp.y_b, self.readout, self.num_prefix_tokens, label_channels)

    @abc.abstractmethod
    def forward(self, inp: RuleInput) -> RuleOutput:
        """The target of a mixed batch (see :class:`RuleInput` / :class:`RuleOutput`)."""
