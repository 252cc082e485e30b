"""ImageNet pretraining with TL-Align as an mmengine model.

``TLAImageClassifier`` runs a label-carrying backbone on the batch its data preprocessor
(:class:`~tlalign_mm.models.data_preprocessor.TLAClsDataPreprocessor`) normalised, erased and
mixed, has its label rule (:mod:`tlalign_mm.models.label_rules`: TL-Align and its ablations, the
CutMix / Mixup area target, TransMix, TokenMix, dense TL-Align) build the training target,
stores it in the data samples as ``gt_score`` and leaves logits, loss and predictions to its head
(:class:`~tlalign_mm.models.heads.TLALinearClsHead`), as mmpretrain's ``ImageClassifier`` /
``LinearClsHead`` split does.  Paper: Xiao et al., "Token-Label Alignment for Vision
Transformers", ICCV 2023; reference training loop: Euphoria16/TL-Align ``engine.py``.
"""
from __future__ import annotations

from typing import Optional

import torch
from mmengine.model import BaseModel
from torch import Tensor

from ..align import mixed_target, smooth_one_hot
from ..registry import FUNCTIONS, MODELS
from ..structures import MixResult
from .heads import TLALinearClsHead, fit_head_to, patch_tokens, pool_tokens, store_gt_scores  # noqa: F401  (the default head)
from .label_rules import LabelRule, RuleInput

__all__ = ['TLAImageClassifier']


@MODELS.register_module()
class TLAImageClassifier(BaseModel):
    """Backbone + head, trained on the target of a label rule (TL-Align by default).

    Args:
        backbone: config of a label-carrying backbone (``TLAVisionTransformer`` with
            ``out_type='cls_token'`` or ``'avg_featmap'``, ``TLASwinTransformer`` with
            ``out_indices=(3,)``, ``out_type='avg_featmap'``, ``TLAPyramidVisionTransformer``
            with ``out_indices=(3,)`` and ``out_type='cls_token'`` (v1 as released) or
            ``'avg_featmap'`` (v2)).
        head: config of the head (default :class:`~tlalign_mm.models.heads.TLALinearClsHead`);
            ``num_classes`` (K) is required, ``in_channels`` is the backbone's pooled width when
            left None (the last returned stage of a hierarchical backbone).
        label_rule: config of the label rule (:mod:`tlalign_mm.models.label_rules`):
            ``dict(type='TLAlign')`` (default; options ``blocks``, ``residual``, ``readout``,
            ``label_channels``), ``'Area'`` (the CutMix baseline), ``'TransMix'``, ``'TokenMix'``,
            ``'DenseTLAlign'``.  The rule checks at build time that the backbone has what it
            needs.
        label_smoothing: smoothing of the one-hot labels before mixing (DeiT: 0.1).
        align_stats_interval: a rule that carries no labels (``'Area'``) carries them on
            every ``align_stats_interval``-th mixed training step (one label pass each) to
            report the token fluctuation; 0 never.  A TL-Align model reports it on every
            step at no extra cost.
        data_preprocessor: config of :class:`TLAClsDataPreprocessor`.
        init_cfg: mmengine init config (``Pretrained`` with ``prefix='backbone.'`` etc.).

    ``forward(inputs, data_samples, mode, mix)``:

    * ``mode='loss'``: the target of each sample is stored in its data sample as ``gt_score``
      (K,) float32 and the head's loss is returned, dict(loss=...), with, on steps that carried
      labels, the token-fluctuation statistics of the batch as detached 0-d tensors (logged, not
      optimised; reading them is left to the logger, so the step never waits for the device):

      - ``align/lam``: mean area share of image A;
      - ``align/lam_aligned``: mean aligned share of image A (K = 2 source labels only);
      - ``align/lam_gap``: mean ``|lam_aligned - lam|``, the paper's Fig. 3 quantity (K = 2);
      - ``align/target_l2``: mean over samples of ``||y_aligned - y_area||_2`` (class space,
        label smoothing included).
    * ``mode='predict'``: the data samples with ``pred_score`` (B, K) softmax and
      ``pred_label`` set.
    * ``mode='tensor'``: logits (B, K).

    Raises:
        ValueError: bad option values; a mixer whose token grid differs from the backbone's.
    """

    def __init__(self, backbone: dict, head: dict = dict(type='TLALinearClsHead', num_classes=1000),
                 label_rule: Optional[dict] = None, label_smoothing: float = 0.1, align_stats_interval: int = 100,
                 data_preprocessor: Optional[dict] = None, init_cfg=None):
        if data_preprocessor is None:
            data_preprocessor = dict(type='TLAClsDataPreprocessor')
        if isinstance(data_preprocessor, dict) and '.' not in data_preprocessor.get('type', '.'):
            data_preprocessor = dict(data_preprocessor, type='tlalign_mm.' + data_preprocessor['type'])
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if int(align_stats_interval) != align_stats_interval or align_stats_interval < 0:
            raise ValueError(f'align_stats_interval must be an integer >= 0, got {align_stats_interval!r}')
        self.backbone = MODELS.build(backbone)
        self.can_carry_labels = all(hasattr(self.backbone, a) for a in ('num_tokens', 'token_grid', 'set_alignment'))
        self.label_smoothing = label_smoothing
        self.num_prefix_tokens = getattr(self.backbone, 'num_prefix_tokens', 0)
        # how the backbone's last output becomes the pooled feature (a rule that needs every
        # token, DenseTLAlign, switches the backbone to return them and the pooling moves here)
        self.pool_type = getattr(self.backbone, 'out_type', 'avg_featmap')
        if self.pool_type not in ('cls_token', 'avg_featmap'):
            raise ValueError("the classifier needs backbone out_type 'cls_token' or 'avg_featmap', "
                             f'got {self.pool_type!r}')
        self.head = MODELS.build(fit_head_to(head, self.backbone))
        self.num_classes = self.head.num_classes
        self.label_rule = MODELS.build(label_rule if label_rule is not None else dict(type='TLAlign'))
        if not isinstance(self.label_rule, LabelRule):
            raise ValueError(f'label_rule builds {type(self.label_rule).__name__}, not a label rule '
                             "(types: 'Area', 'TLAlign', 'TransMix', 'DenseTLAlign', 'TokenMix')")
        self.label_rule.setup(self)
        if self.label_rule.needs_clean_images and hasattr(self.data_preprocessor, 'keep_clean_images'):
            self.data_preprocessor.keep_clean_images = True
        if self.label_rule.needs_tokens:
            self.backbone.out_type = 'raw' if self.num_prefix_tokens else 'featmap'
        self.align_stats_interval = int(align_stats_interval)
        self._loss_steps = 0  # host-side count of loss-mode calls with a mixed batch

    def init_weights(self):
        """Initialise, then load ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` strictly through
        :func:`tlalign_mm.checkpoint.load_classifier_checkpoint` (its docstring lists what is
        accepted and raised), never through mmengine's non-strict ``PretrainedInit``."""
        cfg = self.init_cfg if isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained' else None
        if cfg is not None:
            self.init_cfg = None           # mmengine would load it again, non-strictly
        try:
            super().init_weights()
        finally:
            if cfg is not None:
                self.init_cfg = cfg
        if cfg is not None:
            FUNCTIONS.get('load_classifier_checkpoint')(self, cfg['checkpoint'])   # tlalign_mm.checkpoint's

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _labels(data_samples) -> Tensor:
        return torch.cat([ds.gt_label.reshape(-1) for ds in data_samples])

    def _run_backbone(self, inputs: Tensor, token_labels: Optional[Tensor] = None):
        """(last output, labels or None)."""
        if token_labels is None:
            return self.backbone(inputs)[-1], None
        outs, labels = self.backbone(inputs, token_labels)
        return outs[-1], labels

    def extract_feat(self, inputs: Tensor, token_labels: Optional[Tensor] = None):
        """Pooled features (B, C), or ``(features, labels)`` when ``token_labels`` is given."""
        last, labels = self._run_backbone(inputs, token_labels)
        feat = pool_tokens(last, self.pool_type, self.num_prefix_tokens)
        return feat if token_labels is None else (feat, labels)

    @torch.compiler.disable
    def _carry_labels_now(self) -> bool:
        """Whether this mixed training step carries labels (counted on the host; under
        ``torch.compile`` the count stays out of the graph, leaving two compiled variants)."""
        step, self._loss_steps = self._loss_steps, self._loss_steps + 1
        if self.label_rule.carries_labels:
            return True
        return (self.can_carry_labels and self.align_stats_interval > 0
                and step % self.align_stats_interval == 0)

    # -- forward -----------------------------------------------------------------------------
    def forward(self, inputs: Tensor, data_samples=None, mode: str = 'tensor',
                mix: Optional[MixResult] = None):
        if mode == 'tensor':
            return self.head(self.extract_feat(inputs))
        if mode == 'loss':
            return self.loss(inputs, data_samples, mix)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    def loss(self, inputs: Tensor, data_samples, mix: Optional[MixResult] = None) -> dict:
        """The head's loss on the target of the label rule (:mod:`tlalign_mm.models.label_rules`).

        Each sample's target (K,) is stored in its data sample as ``gt_score`` (label smoothing
        included; an unmixed batch gets the smoothed one-hot label).

        Returns:
            dict(loss=0-d tensor), the rule's extra losses (``loss_dense``), and the ``align/*``
            statistics on steps that carried labels.
        """
        labels = self._labels(data_samples).to(inputs.device, non_blocking=True)
        stats, extra = {}, {}
        if mix is None or not mix.mixed:
            target = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
            feat = self.extract_feat(inputs)
        else:
            y_a = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
            y_b = y_a[mix.partner]
            area = mixed_target(mix.lam, y_a, y_b)
            rule = self.label_rule
            initial_labels = None
            if self._carry_labels_now():
                self.backbone.check_token_grid(mix, inputs.shape[-2:])
                initial_labels = rule.initial_labels(self.backbone.first_stage_mix(mix), y_a, y_b)
            last, carried = self._run_backbone(inputs, initial_labels)
            feat = pool_tokens(last, self.pool_type, self.num_prefix_tokens)
            tokens = patch_tokens(last, self.num_prefix_tokens) if rule.needs_tokens else None
            out = rule(RuleInput(mix, y_a, y_b, area, carried, tokens, self.label_smoothing))
            target, stats, extra = out.target, out.stats, out.losses
        store_gt_scores(data_samples, target)
        return dict(**self.head.loss(feat, data_samples), **extra, **stats)

    def predict(self, inputs: Tensor, data_samples=None) -> list:
        """Data samples with ``pred_score`` (K,) softmax and ``pred_label`` (1,) (see the head)."""
        return self.head.predict(self.extract_feat(inputs), data_samples)
