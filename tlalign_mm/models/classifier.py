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
from .backbones.base import TLABackbone
from .heads import TLALinearClsHead, fit_head_to, patch_tokens, pool_tokens, store_gt_scores  # noqa: F401  (the default head)
from .label_rules import LabelRule, RuleInput

__all__ = ['TLAImageClassifier']


@MODELS.register_module()
class TLAImageClassifier(BaseModel):
    """Backbone + head, trained on the target of a label rule (TL-Align by default).

    Args:
        backbone: config of a :class:`~tlalign_mm.models.backbones.TLABackbone`
            (``TLAVisionTransformer`` with ``out_type='cls_token'`` or ``'avg_featmap'``,
            ``TLASwinTransformer`` with ``out_indices=(3,)``, ``out_type='avg_featmap'``,
            ``TLAPyramidVisionTransformer`` with ``out_indices=(3,)`` and ``out_type='cls_token'``
            (v1 as released) or ``'avg_featmap'`` (v2)); its ``out_type`` is the pooled feature.
            A rule that reads every token (DenseTLAlign) builds it with
            :meth:`~TLABackbone.all_tokens_out_type` instead and the pooling happens here.
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
        data_preprocessor: config of :class:`TLAClsDataPreprocessor`; its mixer's ``patch_size`` is
            the backbone's (a different one is refused), and ``keep_clean_images`` is set for a rule
            that reads the batch before random erasing (TokenMix).
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
        ValueError: bad option values; a mixer whose ``patch_size`` differs from the backbone's;
            a label rule the backbone cannot serve (the rule's ``setup`` names it).
        TypeError: a backbone that is not a ``TLABackbone``.
    """

    def __init__(self, backbone: dict, head: dict = dict(type='TLALinearClsHead', num_classes=1000),
                 label_rule: Optional[dict] = None, label_smoothing: float = 0.1, align_stats_interval: int = 100,
                 data_preprocessor: Optional[dict] = None, init_cfg=None):
        if int(align_stats_interval) != align_stats_interval or align_stats_interval < 0:
            raise ValueError(f'align_stats_interval must be an integer >= 0, got {align_stats_interval!r}')
        label_rule = dict(label_rule if label_rule is not None else dict(type='TLAlign'))
        rule_cls = MODELS.get(label_rule['type'])
        if not (isinstance(rule_cls, type) and issubclass(rule_cls, LabelRule)):
            raise ValueError(f"label_rule type {label_rule['type']!r} is not a label rule "
                             "(types: 'Area', 'TLAlign', 'TransMix', 'DenseTLAlign', 'TokenMix')")
        # The parts are configured before they are built, from what the backbone declares
        # (TLABackbone's contract) and what the rule needs; nothing is changed after.
        built = MODELS.build(backbone)
        if not isinstance(built, TLABackbone):
            raise TypeError(f'backbone {type(built).__name__} is not a TLABackbone: the classifier reads the '
                            'contract it declares (tlalign_mm.models.backbones.TLABackbone)')
        pool_type = built.out_type
        if pool_type not in ('cls_token', 'avg_featmap'):
            raise ValueError("the classifier needs backbone out_type 'cls_token' or 'avg_featmap', "
                             f'got {pool_type!r}')
        if rule_cls.needs_tokens:   # every token, built so (a second time); the pooling moves here (pool_tokens)
            built = MODELS.build(dict(backbone, out_type=built.all_tokens_out_type(pool_type)))
        super().__init__(data_preprocessor=self._preprocessor_cfg(data_preprocessor, built, rule_cls),
                         init_cfg=init_cfg)
        self.backbone = built
        self.label_smoothing = label_smoothing
        self.num_prefix_tokens = built.num_prefix_tokens
        self.pool_type = pool_type
        self.head = MODELS.build(fit_head_to(head, built))
        self.num_classes = self.head.num_classes
        self.label_rule = MODELS.build(label_rule)
        self.label_rule.setup(self)
        self.align_stats_interval = int(align_stats_interval)
        self._loss_steps = 0  # host-side count of loss-mode calls with a mixed batch

    @staticmethod
    def _preprocessor_cfg(cfg: Optional[dict], backbone: TLABackbone, rule_cls: type) -> dict:
        """The data preprocessor config with the mixer's ``patch_size`` from the backbone (checked when
        the config gives one) and ``keep_clean_images`` for a rule that reads the unerased batch.

        Raises:
            ValueError: the mixer's ``patch_size`` differs from the backbone's (names both).
        """
        cfg = dict(cfg if cfg is not None else dict(type='TLAClsDataPreprocessor'))
        if '.' not in cfg.get('type', '.'):
            cfg['type'] = 'tlalign_mm.' + cfg['type']
        mixer = cfg.get('mixer')
        if mixer is not None:
            mixer = dict(mixer)
            size = mixer.setdefault('patch_size', backbone.patch_size)
            if size != backbone.patch_size:
                raise ValueError(f"data_preprocessor.mixer.patch_size={size} but the backbone's patch_size is "
                                 f'{backbone.patch_size}: the mixer cuts on the backbone\'s token grid (leave it '
                                 'out to take the backbone\'s)')
            cfg['mixer'] = mixer
        if rule_cls.needs_clean_images:
            cfg['keep_clean_images'] = True
        return cfg

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
        return (self.backbone.carries_labels and self.align_stats_interval > 0
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
