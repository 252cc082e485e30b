"""Label rules: the training target of a mixed batch, one config switch for every rule compared.

``TLAImageClassifier(label_rule=dict(type=...))`` picks how the target of a CutMix / Mixup /
TokenMix batch is built.  Each rule owns its target: it reads a :class:`RuleInput` (the mix, the
smoothed one-hot labels, the area target, the labels the backbone carried, the final tokens) and
returns a :class:`RuleOutput` (the (B, K) soft target, label smoothing included, its statistics
as detached 0-d tensors, and any extra loss terms); after :meth:`LabelRule.setup` it never calls
back into the classifier.  The readout and the statistics are ``tlalign_mm/align/readout.py``'s:

* :class:`AreaRule` (``type='Area'``): ``lam * y_A + (1 - lam) * y_B``, the CutMix / Mixup
  target (timm ``mixup_target``) -- the baseline.
* :class:`TLAlignRule` (``type='TLAlign'``): the paper's aligned target (Xiao et al., ICCV
  2023; ``docs/advanced_guides/method.md``), with its ablations (Table 8): which blocks align, the residual
  average on or off, and the readout (class token or token mean).
* :class:`TransMixRule` (``type='TransMix'``): TransMix (Chen et al., CVPR 2022;
  Beckschen/TransMix ``transmix.py``, ``Mixup_transmix.transmix_label``).
* :class:`DenseTLAlignRule` (``type='DenseTLAlign'``): TL-Align plus a dense loss: every output
  token is trained on its own aligned label through a shared token head (TokenLabeling's dense
  loss, Jiang et al., NeurIPS 2021, with labels from the alignment instead of a teacher).
* :class:`TokenMixRule` (``type='TokenMix'``): TokenMix's target (Liu et al., ECCV 2022;
  Sense-X/TokenMix ``tokenmix.py``): the share of a teacher's class activation map each image
  keeps.

The rules that read attention do it through the backbone's label path
(:meth:`~tlalign_mm.models.backbones.base.TLABackbone.set_alignment`): labels ride in the
blocks' own attention call, so no rule materialises an attention matrix.
"""
from ...align import READOUTS
from .area import AreaRule
from .base import LabelRule, RuleInput, RuleOutput
from .tl_align import DenseTLAlignRule, TLAlignRule
from .tokenmix import (
                       TOKENMIX_CAM_ACTIVATIONS,
                       TOKENMIX_RESIZES,
                       TOKENMIX_SMOOTHINGS,
                       TokenMixRule,
                       check_timm_cam_teacher,
)
from .transmix import TRANSMIX_TOKEN_MASKS, TransMixRule, transmix_attention_share, transmix_initial_labels

__all__ = ['RuleInput', 'RuleOutput', 'LabelRule', 'AreaRule', 'TLAlignRule', 'TransMixRule', 'DenseTLAlignRule',
           'TokenMixRule', 'READOUTS', 'TRANSMIX_TOKEN_MASKS', 'TOKENMIX_SMOOTHINGS', 'TOKENMIX_CAM_ACTIVATIONS',
           'TOKENMIX_RESIZES', 'transmix_initial_labels', 'transmix_attention_share', 'check_timm_cam_teacher']
