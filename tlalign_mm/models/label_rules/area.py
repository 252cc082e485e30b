"""The CutMix / Mixup area target (timm ``mixup_target``): the baseline."""
from __future__ import annotations

from ...align import align_stats
from ...registry import MODELS
from .base import LabelRule, RuleInput, RuleOutput

__all__ = ['AreaRule']


@MODELS.register_module(name='Area')
class AreaRule(LabelRule):
    """The CutMix / Mixup target: the mixing ratio of the pasted area (the baseline).

    On the steps where the classifier carries labels for statistics
    (``align_stats_interval``), the token fluctuation is reported as for TL-Align; the target
    stays the area target.
    """

    def setup(self, model) -> None:
        super().setup(model)
        if model.backbone.carries_labels:
            model.backbone.set_alignment('all', True)   # what the statistics measure

    def forward(self, inp: RuleInput) -> RuleOutput:
        if inp.labels is None:
            return RuleOutput(inp.area)
        row, aligned = self.tl_align_target(inp)
        return RuleOutput(inp.area, align_stats(row, inp.mix.lam, aligned, inp.area))
