"""How each label rule reads the mixing ratio, layer by layer (the TL-Align paper's Fig. 4).

For a mixed batch and a (trained) classifier, the share of image A in the target, ``lam_A``, as
each rule would give it if it read the network at block ``l``:

* ``area`` (CutMix / Mixup): the pasted-area ratio, the same at every block;
* ``tl_align``: the labels aligned through blocks ``0..l`` (the paper's rule: every block,
  residual average), read where the classifier reads its feature (class token / token mean);
* ``transmix``: TransMix's ratio taken from block ``l``'s attention alone (the reference uses the
  last block): the readout's attention share of A's tokens, blended half and half with the area
  ratio (:class:`~tlalign_mm.models.label_rules.TransMixRule`);
* ``tokenmix`` (with a TokenMix rule, i.e. a teacher): the share of A's teacher CAM the mix
  keeps, which does not depend on the block.

TL-Align's figure shows that the share an image keeps moves from block to block, which one
fixed reading (the area, or one layer's attention) cannot follow.  :func:`rule_lambdas` returns
the curves of a batch; :func:`most_fluctuating` picks the samples whose TL-Align share moves
most (``tools/analysis/rule_lambdas.py`` writes the CSV and the picture, through
``tools/analysis/plotting.py``).
Nothing here changes the model: the backbone's alignment settings are restored afterwards.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .tracing import iter_blocks, record_block_labels, source_share_readout

__all__ = ['RULES', 'rule_lambdas', 'most_fluctuating']

#: The curves :func:`rule_lambdas` can return, in plotting order.
RULES = ('area', 'tl_align', 'transmix', 'tokenmix')


@torch.no_grad()
def rule_lambdas(model, inputs: Tensor, labels: Tensor, mix, tokenmix_rule=None) -> dict[str, Tensor]:
    """Per rule, the (L, B) share of image A in the target, read at each of the L blocks.

    Args:
        model: a :class:`~tlalign_mm.TLAImageClassifier` whose backbone carries labels.
        inputs: (B, 3, H, W) mixed images (``mix.images``) on the model's device.
        labels: (B,) int64 classes of the unmixed images.
        mix: the batch's :class:`~tlalign_mm.structures.MixResult`.
        tokenmix_rule: a set-up :class:`~tlalign_mm.models.label_rules.TokenMixRule` (its
            teacher gives the ``tokenmix`` curve), or None.

    Returns:
        ``{rule: (L, B) float32 on the CPU}`` for ``area``, ``tl_align``, ``transmix`` (and
        ``tokenmix``); values in [0, 1] (TokenMix's weights need not sum to 1).

    Raises:
        ValueError: a backbone that cannot carry labels.
    """
    from ..align import read_labels
    from ..models.label_rules import TransMixRule, transmix_attention_share, transmix_initial_labels
    if not model.backbone.carries_labels:
        raise ValueError(f'{type(model.backbone).__name__} cannot carry token labels')
    backbone = model.backbone
    readout = model.label_rule.readout
    prefix = model.num_prefix_tokens
    num_blocks = len(iter_blocks(backbone))
    lam = mix.lam.float()
    out = {'area': lam.expand(num_blocks, -1).cpu()}
    start = model.backbone.first_stage_mix(mix)           # the share the first stage sees (PVT v2: its window)
    with backbone.alignment('all', True), record_block_labels(backbone, inputs.shape[-2:]) as trace:
        backbone(inputs, start.source_labels(prefix))
    out['tl_align'] = torch.stack([source_share_readout(trace.labels[b.index], readout, prefix)
                                   for b in iter_blocks(backbone)]).cpu()
    transmix = TransMixRule()                 # the release's options; not set up: only its formulas are read
    initial_labels = transmix_initial_labels(transmix.token_mask_of(start), prefix)
    rows = []
    for layer in range(num_blocks):
        with backbone.alignment([layer], False):
            _, lab = backbone(inputs, initial_labels)
        share_b = transmix_attention_share(read_labels(lab, readout, prefix))
        lam0 = mix.share_b.float().mean(1)      # the pasted area, as the rule reads it
        rows.append(1.0 - (transmix.area_weight * lam0 + (1.0 - transmix.area_weight) * share_b))
    out['transmix'] = torch.stack(rows).cpu()
    if tokenmix_rule is not None:
        cam = tokenmix_rule.teacher_cam(mix.source_images, labels.to(inputs.device), tuple(mix.token_grid))
        w_a = ((1.0 - mix.share_b.float()) * cam).sum(1)
        out['tokenmix'] = w_a.expand(num_blocks, -1).cpu()
    return out


def most_fluctuating(curves: dict[str, Tensor], k: int) -> list[int]:
    """Indices of the ``k`` samples whose TL-Align share moves most from the area share
    (``max_l |lam_l - lam|``), largest first."""
    gap = (curves['tl_align'] - curves['area']).abs().max(dim=0).values
    return gap.argsort(descending=True)[:k].tolist()
