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
  2023; ``docs/tl-align.md``), with its ablations (Table 8): which blocks align, the residual
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
from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from ..align import LABEL_CHANNELS, READOUTS, align_stats, aligned_target, expand_source_labels, read_labels
from ..mixing import MixResult
from ..registry import MODELS

__all__ = ['RuleInput', 'RuleOutput', 'LabelRule', 'AreaRule', 'TLAlignRule', 'TransMixRule', 'DenseTLAlignRule',
           'TokenMixRule', 'READOUTS', 'TRANSMIX_TOKEN_MASKS', 'TOKENMIX_SMOOTHINGS', 'TOKENMIX_CAM_ACTIVATIONS',
           'TOKENMIX_RESIZES', 'transmix_initial_labels', 'transmix_attention_share', 'check_timm_cam_teacher']

@dataclass
class RuleInput:
    """What a label rule reads for one mixed batch.

    Attributes:
        mix: the batch's :class:`~tlalign_mm.mixing.MixResult` (``share_b`` as the backbone's
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
        if not model.can_carry_labels:
            raise ValueError(
                f'label rule {type(self).__name__} needs a backbone that carries token labels through '
                'its attention (TLAVisionTransformer, TLASwinTransformer, TLAPyramidVisionTransformer); '
                f'{type(model.backbone).__name__} cannot. Use label_rule=dict(type=\'Area\') with this backbone.')

    def initial_labels(self, mix: MixResult, y_a: Tensor, y_b: Tensor) -> Tensor:
        """(B, N, K) float32 labels the backbone carries (default: TL-Align's 2-channel source
        embedding, :meth:`~tlalign_mm.mixing.MixResult.source_labels`); ``y_a`` / ``y_b`` as
        in :class:`RuleInput`."""
        return mix.source_labels(self.num_prefix_tokens)

    def tl_align_target(self, inp: RuleInput, label_channels: str = 'source') -> tuple[Tensor, Tensor]:
        """(read-out row, target) of TL-Align from ``inp.labels`` at this rule's readout
        (:func:`~tlalign_mm.align.aligned_target`)."""
        return aligned_target(inp.labels, inp.y_a, inp.y_b, self.readout, self.num_prefix_tokens, label_channels)

    @abc.abstractmethod
    def forward(self, inp: RuleInput) -> RuleOutput:
        """The target of a mixed batch (see :class:`RuleInput` / :class:`RuleOutput`)."""


@MODELS.register_module(name='Area')
class AreaRule(LabelRule):
    """The CutMix / Mixup target: the mixing ratio of the pasted area (the baseline).

    On the steps where the classifier carries labels for statistics
    (``align_stats_interval``), the token fluctuation is reported as for TL-Align; the target
    stays the area target.
    """

    def setup(self, model) -> None:
        super().setup(model)
        if model.can_carry_labels:
            model.backbone.set_alignment('all', True)   # what the statistics measure

    def forward(self, inp: RuleInput) -> RuleOutput:
        if inp.labels is None:
            return RuleOutput(inp.area)
        row, aligned = self.tl_align_target(inp)
        return RuleOutput(inp.area, align_stats(row, inp.mix.lam, aligned, inp.area))


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
            code's way); both give the same target (``docs/tl-align.md``).

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
        r0 = mix.source_labels(self.num_prefix_tokens)
        return expand_source_labels(r0, y_a, y_b) if self.label_channels == 'classes' else r0

    def forward(self, inp: RuleInput) -> RuleOutput:
        row, aligned = self.tl_align_target(inp, self.label_channels)
        return RuleOutput(aligned, align_stats(row, inp.mix.lam, aligned, inp.area))


#: Values of ``TransMix(token_mask=...)``.
TRANSMIX_TOKEN_MASKS = ('nearest', 'area')


def _check_choice(rule: str, option: str, value, allowed: tuple):
    if value not in allowed:
        raise ValueError(f'{rule} {option} must be one of {allowed}, got {value!r}')
    return value


def transmix_initial_labels(mask: Tensor, num_prefix_tokens: int) -> Tensor:
    """TransMix's labels: patch token j carries ``[s_j, 1 - s_j, 0]`` (``s_j`` its partner mask
    value, (B, N) in [0, 1]), each prefix token ``[0, 0, 1]``; (B, P + N, 3) float32."""
    s = mask.float()
    patches = torch.stack([s, 1.0 - s, torch.zeros_like(s)], dim=-1)
    if num_prefix_tokens == 0:
        return patches
    prefix = patches.new_tensor([0.0, 0.0, 1.0]).expand(s.shape[0], num_prefix_tokens, 3)
    return torch.cat([prefix, patches], dim=1)


def transmix_attention_share(row: Tensor) -> Tensor:
    """(B, 3) read-out TransMix labels -> (B,) ``lam1 = c0 / (c0 + c1)``: the attention the
    readout gives to the partner's tokens over that to all patch tokens."""
    return row[:, 0] / (row[:, 0] + row[:, 1]).clamp_min(1e-12)


@MODELS.register_module(name='TransMix')
class TransMixRule(LabelRule):
    """TransMix: the partner's share is the attention the readout gives to its tokens in the last
    block, blended with the area share.

    The release (Beckschen/TransMix ``transmix.py``, ``Mixup_transmix.transmix_label``; called in
    ``train.py`` on CutMix batches only):

    * ``attn`` is the last block's class-token attention to the patch tokens, averaged over heads;
    * ``mask`` is the pixel box taken to the token grid by ``nn.Upsample(size=grid)`` (nearest):
      a token counts as pasted iff its **top-left pixel** is in the box (``token_mask='nearest'``,
      the default).  ``token_mask='area'`` uses each token's pasted-area share instead
      (``MixResult.share_b``); both agree for boxes on the token grid (token CutMix, TokenMix);
    * ``lam1 = sum(mask * attn) / sum(attn)``; ``lam0`` is the box's **pixel area** share
      ``(yh - yl)(xh - xl) / (H W)`` whatever ``correct_lam`` says (here: the mean of the
      partner's pixel share, ``share_b.mean(1)``);
    * ``lam = (lam0 + lam1) / 2``, target ``(1 - lam) y_A + lam y_B``;
    * Mixup batches keep the area target ``lam y_A + (1 - lam) y_B`` (the release passes them
      through ``mixup_target``).

    Here the one attention row is never formed: labels ride in the last block's own attention
    call (:meth:`~tlalign_mm.models.backbones.base.TLABackbone.set_alignment` with
    ``blocks='last', residual=False``; earlier blocks pass them on unchanged).  Patch token j
    carries ``[s_j, 1 - s_j, 0]`` (``s_j`` its mask value) and each prefix token ``[0, 0, 1]``.
    The class token's output ``[sum_j a_j s_j, sum_j a_j (1 - s_j), a_cls]`` gives
    ``lam1 = c0 / (c0 + c1)``, the release's ratio.

    Backbones without a class token (Swin; PVT): the public TransMix code has DeiT only.  This
    rule reads the token mean instead, the readout the classifier pools:
    ``lam1 = mean_i sum_j A_ij s_j`` over the last block's (window) attention, i.e. the attention
    the pooled feature gives to the partner's tokens.  The mask is taken on the patch-embedding
    grid (nearest: each patch's top-left pixel) and pooled by patch merging between stages, as
    TL-Align's labels are.

    Args:
        area_weight: weight of ``lam0`` in the blend, 0.5 in the release (``ratio=0.5``).
        token_mask: 'nearest' (the release) or 'area'.

    Raises:
        ValueError: ``area_weight`` outside [0, 1] or an unknown ``token_mask`` (the message names
            the option and its values); at build time, a backbone that cannot carry labels, or
            ``token_mask='nearest'`` with a mixer built with ``return_mask=False``.
    """

    carries_labels = True

    def __init__(self, area_weight: float = 0.5, token_mask: str = 'nearest'):
        super().__init__()
        if not 0.0 <= area_weight <= 1.0:
            raise ValueError(f'TransMix area_weight must be in [0, 1], got {area_weight!r}')
        self.area_weight = float(area_weight)
        self.token_mask = _check_choice('TransMix', 'token_mask', token_mask, TRANSMIX_TOKEN_MASKS)

    def setup(self, model) -> None:
        self._require_labels(model)
        super().setup(model)
        model.backbone.set_alignment('last', False)
        mixer = getattr(model.data_preprocessor, 'mixer', None)
        if self.token_mask == 'nearest' and mixer is not None and not mixer.return_mask:
            raise ValueError("TransMix token_mask='nearest' reads the mixer's pixel mask: build the "
                             "data_preprocessor's mixer with return_mask=True, or use token_mask='area'")

    def token_mask_of(self, mix) -> Tensor:
        """(B, N) float32 mask of the partner on the patch grid: the pixel share at each patch's
        top-left pixel ('nearest', ``nn.Upsample`` nearest as the release) or the patch's pasted
        area share ('area').

        Raises:
            ValueError: 'nearest' on a :class:`~tlalign_mm.mixing.MixResult` without a pixel mask.
        """
        if self.token_mask == 'area':
            return mix.share_b.float()
        if mix.mask is None:
            raise ValueError("TransMix token_mask='nearest' needs the mixer's pixel mask "
                             '(BatchMixer(return_mask=True))')
        p = mix.patch_size
        return mix.mask[:, ::p, ::p].reshape(mix.mask.shape[0], -1).float()

    def initial_labels(self, mix, y_a, y_b) -> Tensor:
        return transmix_initial_labels(self.token_mask_of(mix), self.num_prefix_tokens)

    def forward(self, inp: RuleInput) -> RuleOutput:
        mix = inp.mix
        if mix.mode == 'mixup':                      # the release: Mixup keeps the area target
            target, lam_b = inp.area, 1.0 - mix.lam
        else:
            lam_attn = transmix_attention_share(read_labels(inp.labels, self.readout, self.num_prefix_tokens))
            lam0 = mix.share_b.float().mean(1)       # the box's pixel area (not the Beta draw)
            lam_b = self.area_weight * lam0 + (1.0 - self.area_weight) * lam_attn
            target = (1.0 - lam_b)[:, None] * inp.y_a + lam_b[:, None] * inp.y_b
        return RuleOutput(target, align_stats(None, mix.lam, target, inp.area, lam_aligned=1.0 - lam_b))


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
        dense = -(token_labels * torch.log_softmax(logits, dim=-1)).sum(-1).mean()
        return RuleOutput(out.target, out.stats, dict(out.losses, loss_dense=self.dense_weight * dense))


#: Values of ``TokenMix(smoothing=...)``, ``cam_activation=...`` and ``resize=...``.
TOKENMIX_SMOOTHINGS = ('tokenmix', 'weighted')
TOKENMIX_CAM_ACTIVATIONS = (None, 'relu')
TOKENMIX_RESIZES = ('roi_align', 'bilinear')


def _timm_location_logits(teacher: nn.Module, feats: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """A timm model's classifier applied at every location of its ``forward_features`` output.

    ``feats`` is (B, C, h, w) (CNNs), (B, h, w, C) (timm's Swin-style NHWC maps) or (B, P + n, C)
    (ViT-style tokens, ``P = num_prefix_tokens``, a square grid).  Returns ((B, n, K) logits,
    (h, w)).
    """
    c = teacher.num_features
    if feats.dim() == 4:
        if feats.shape[1] == c:                                        # (B, C, h, w)
            hw = tuple(feats.shape[-2:])
            tokens = feats.flatten(2).transpose(1, 2)
        else:                                                          # (B, h, w, C)
            hw = tuple(feats.shape[1:3])
            tokens = feats.flatten(1, 2)
    else:
        tokens = feats[:, getattr(teacher, 'num_prefix_tokens', 0):]
        side = int(round(tokens.shape[1] ** 0.5))
        hw = (side, tokens.shape[1] // side)
    return teacher.get_classifier()(tokens), hw


def check_timm_cam_teacher(teacher: nn.Module, name: str, img_hw: Sequence[int]) -> None:
    """Refuse a timm teacher whose class activation map is not defined.

    TokenMix's map is the teacher's classifier at every location; it is the class activation map
    (Zhou et al., CVPR 2016) only when the logits are a linear classifier of the globally
    average-pooled features: ``logits == mean_locations(classifier(feature_location))``.  This is
    checked on a random (2, 3, *img_hw) input with the teacher's own weights.  ResNet, EfficientNet,
    RegNet, NFNet and ViTs with ``global_pool='avg', fc_norm=False`` pass; heads with a layer
    between the pooling and the classifier (MobileNetV3's ``conv_head``, ConvNeXt's head norm, a
    ViT's class token) do not.

    Raises:
        ValueError: naming the model and why its map is not a CAM.
    """
    x = torch.randn(2, 3, *img_hw, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            feats = teacher.forward_features(x)
            logits = teacher.forward_head(feats).float()
            per_location, _ = _timm_location_logits(teacher, feats)
            pooled = per_location.float().mean(1)
        ok = pooled.shape == logits.shape and torch.allclose(
            pooled, logits, rtol=1e-4, atol=1e-4 * max(1.0, float(logits.abs().max())))
        why = 'its logits are not the spatial mean of the per-location logits'
    except (RuntimeError, ValueError, TypeError, AttributeError) as e:
        ok, why = False, f'its classifier does not apply per location ({type(e).__name__}: {e})'
    if not ok:
        raise ValueError(
            f'TokenMix teacher timm {name!r} has no class activation map: {why}, i.e. its head is not '
            'global average pooling followed by a linear classifier (a layer between them, such as '
            "MobileNetV3's conv_head, ConvNeXt's head norm or a ViT's class token, makes the per-location "
            'map differ from what the head scores). Use a teacher such as a ResNet, EfficientNet, RegNet or '
            "NFNet, a ViT built with global_pool='avg', fc_norm=False, or a classifier of this project "
            '(teacher=dict(config=..., checkpoint=...))')


@MODELS.register_module(name='TokenMix')
class TokenMixRule(LabelRule):
    """TokenMix's target: each image weighs what the mix keeps of its teacher's activation map.

    The release (Liu et al., ECCV 2022; github Sense-X/TokenMix ``tokenmix.py``,
    ``Mixup.__call__``), on a TokenMix batch:

    * the map of each image is the teacher's score map of its ground-truth class as TokenLabeling
      stores it (``generate_label.py``: the classifier as a 1x1 convolution on the final feature
      map, the **top-5** logits kept per location, every other class 0; ``cam_topk=5``), resized
      to the student's token grid with torchvision's ``roi_align`` over the whole map (box corners at
      ``-0.5`` and ``size - 0.5``, ``aligned=False``; ``resize='roi_align'``, the default; or
      ``'bilinear'``), **not** passed through a ReLU, divided by its sum ``+ 1e-8``
      (``cam_activation=None``, the default; ``'relu'`` clips at 0 and takes a uniform map when
      nothing is positive);
    * ``w_A`` is A's map on the tokens kept from A, ``w_B`` the partner's map on the tokens pasted
      from it; neither is renormalised (``normalize=True`` divides by ``w_A + w_B``);
    * the target puts ``ls / K`` on every class plus ``w_A - ls / 2`` on A's class and
      ``w_B - ls / 2`` on B's (``smoothing='tokenmix'``, the default: its ``on_value`` /
      ``off_value`` per class, ``ls`` the label smoothing); ``smoothing='weighted'`` takes
      ``w_A y_A + w_B y_B`` of the smoothed one-hots instead;
    * Mixup batches keep the area target ``lam y_A + (1 - lam) y_B`` (the release's
      ``mixup_target``); the teacher does not run on them.

    The release reads ReLabel-style label maps an NFNet-F6 computed offline on the whole image
    (``--label_dir label_top5_train_nfnet``), cut to the crop by ``roi_align``.  Here the teacher
    runs online on the augmented crop **before random erasing** (the classifier hands it the clean
    batch, ``needs_clean_images``), so any teacher can be plugged in:

    * ``teacher=dict(config=PATH, checkpoint=CKPT)``: a classifier config of this project and
      its checkpoint (loaded strictly).  Its map is the head applied to every final patch token
      (exactly the CAM for token-mean models such as Swin; for a class-token DeiT it reads the
      patch tokens through the class-token head);
    * ``teacher=dict(timm=NAME, checkpoint=CKPT, **kwargs)``: ``timm.create_model(NAME,
      num_classes=K, **kwargs)`` and a timm state dict; its map is ``get_classifier()`` applied
      to ``forward_features`` at every location.  Only teachers whose map is a class activation
      map are accepted (:func:`check_timm_cam_teacher`, at build time).

    The teacher runs in eval mode, without gradient, on the student's device and on the
    student's normalised input; it is not part of the model's parameters or checkpoints.  The
    mask types of TokenMix are the mixer's ``tokenmix_mask='block'`` / ``'random'``.

    Args:
        teacher: see above.
        normalize: divide the weights by their sum.
        smoothing: 'tokenmix' (the release) or 'weighted'.
        cam_activation: None (the release) or 'relu'.
        resize: 'roi_align' (the release) or 'bilinear'.
        cam_topk: keep the true class's logit only where it is among the location's top
            ``cam_topk`` classes, else 0 (the release's label maps hold the top 5); None keeps
            every location.  Without it, an unclipped map of raw logits can sum to about 0 and
            make the weights explode (a weak teacher's map takes both signs).

    Raises:
        ValueError: no teacher, or one without ``checkpoint`` or with neither ``config`` nor
            ``timm`` (the message names the rule and what is missing); an unknown option value
            (named with its allowed values); a teacher whose class count differs from the
            student's; a timm teacher without a class activation map.
        FileNotFoundError: a config or checkpoint that does not exist.
    """

    needs_clean_images = True

    def __init__(self, teacher: Optional[dict] = None, normalize: bool = False, smoothing: str = 'tokenmix',
                 cam_activation: Optional[str] = None, resize: str = 'roi_align', cam_topk: Optional[int] = 5):
        super().__init__()
        if not isinstance(teacher, dict) or not teacher.get('checkpoint') \
                or not (teacher.get('config') or teacher.get('timm')):
            raise ValueError('label rule TokenMix needs a teacher: teacher=dict(config=CONFIG, checkpoint=CKPT) '
                             '(a classifier of this project) or teacher=dict(timm=NAME, checkpoint=CKPT); '
                             f'got teacher={teacher!r}')
        self.teacher_cfg = dict(teacher)
        self.normalize = bool(normalize)
        self.smoothing = _check_choice('TokenMix', 'smoothing', smoothing, TOKENMIX_SMOOTHINGS)
        self.cam_activation = _check_choice('TokenMix', 'cam_activation', cam_activation, TOKENMIX_CAM_ACTIVATIONS)
        self.resize = _check_choice('TokenMix', 'resize', resize, TOKENMIX_RESIZES)
        if cam_topk is not None and (int(cam_topk) != cam_topk or cam_topk < 1):
            raise ValueError(f'TokenMix cam_topk must be a positive integer or None, got {cam_topk!r}')
        self.cam_topk = None if cam_topk is None else int(cam_topk)

    @property
    def teacher(self) -> nn.Module:
        return self.__dict__['_teacher']

    def setup(self, model) -> None:
        super().setup(model)
        cfg = dict(self.teacher_cfg)
        path = cfg.pop('checkpoint')
        if cfg.get('config'):
            import os

            from mmengine.config import Config
            if not os.path.isfile(cfg['config']):
                raise FileNotFoundError(f"TokenMix teacher config not found: {cfg['config']!r}")
            if not os.path.isfile(path):
                raise FileNotFoundError(f'TokenMix teacher checkpoint not found: {path!r}')
            tcfg = Config.fromfile(cfg['config']).model
            tcfg['init_cfg'] = dict(type='Pretrained', checkpoint=path)   # the classifier's strict loader
            tcfg['label_rule'] = dict(type='Area')
            teacher = MODELS.build(tcfg)
            teacher.init_weights()
            teacher.backbone.out_type = 'raw' if teacher.num_prefix_tokens else 'featmap'
            classes = teacher.num_classes
        else:
            import timm

            from ..utils.checkpoint_io import load_checkpoint_file
            name = cfg.pop('timm')
            teacher = timm.create_model(name, pretrained=False, num_classes=model.num_classes, **cfg)
            ckpt = load_checkpoint_file(path)
            sd = ckpt.get('state_dict', ckpt.get('model', ckpt))
            teacher.load_state_dict(sd, strict=True)
            teacher.eval()
            check_timm_cam_teacher(teacher, name, getattr(model.backbone, 'img_size', (224, 224)))
            classes = model.num_classes
        if classes != model.num_classes:
            raise ValueError(f'TokenMix teacher has {classes} classes, the student {model.num_classes}')
        teacher.eval().requires_grad_(False)
        self.__dict__['_teacher'] = teacher     # not a submodule: no parameters, no checkpoint keys

    def _class_map(self, cam: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, 1, h, w) maps -> (B, N) float32 weights on the ``grid`` summing to 1 (see class doc)."""
        if self.resize == 'roi_align':
            from torchvision.ops import roi_align
            b, _, h, w = cam.shape
            boxes = cam.new_tensor([-0.5, -0.5, w - 0.5, h - 0.5]).expand(b, 4)
            boxes = torch.cat([torch.arange(b, device=cam.device, dtype=cam.dtype)[:, None], boxes], 1)
            cam = roi_align(cam, boxes, output_size=tuple(grid), spatial_scale=1.0, sampling_ratio=-1,
                            aligned=False)
        elif tuple(cam.shape[-2:]) != tuple(grid):
            cam = torch.nn.functional.interpolate(cam, size=grid, mode='bilinear', align_corners=False)
        cam = cam.flatten(1)
        if self.cam_activation is None:                              # the release: no ReLU
            return cam / (cam.sum(1, keepdim=True) + 1e-8)
        cam = cam.clamp_min(0.0)
        mass = cam.sum(1, keepdim=True)
        return torch.where(mass > 0, cam / mass.clamp_min(1e-12), torch.full_like(cam, 1.0 / cam.shape[1]))

    @torch.no_grad()
    def teacher_cam(self, images: Tensor, labels: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, h*w) float32 map of each image's class on the student's token grid, summing to 1
        (up to the release's ``+ 1e-8``).

        Args:
            images: (B, 3, H, W) unmixed, normalised images (the clean crop, before erasing).
            labels: (B,) int64 ground-truth classes.
            grid: the student's patch-token grid (h, w).
        """
        t = self.teacher
        if next(t.parameters()).device != images.device:
            t.to(images.device)
        if hasattr(t, 'label_rule'):                                   # a classifier of ours
            last = t.backbone(images)[-1]
            tokens = t.patch_tokens(last)                             # (B, n, C)
            fmap_hw = last.shape[-2:] if last.dim() == 4 else t.backbone.token_grid(images.shape[-2:])
            logits = t.head.fc(tokens)                                 # (B, n, K)
        else:
            logits, fmap_hw = _timm_location_logits(t, t.forward_features(images))
        logits = logits.float()
        cam = logits.gather(2, labels.view(-1, 1, 1).expand(-1, logits.shape[1], 1))[..., 0]   # (B, n)
        if self.cam_topk is not None and self.cam_topk < logits.shape[-1]:
            kth = logits.topk(self.cam_topk, dim=-1).values[..., -1]                          # (B, n)
            cam = torch.where(cam >= kth, cam, torch.zeros_like(cam))       # TokenLabeling's top-k maps
        return self._class_map(cam.view(-1, 1, *fmap_hw), grid)

    def forward(self, inp: RuleInput) -> RuleOutput:
        mix, y_a, y_b = inp.mix, inp.y_a, inp.y_b
        if mix.mode == 'mixup':                    # the release: Mixup keeps the area target
            w_a, w_b, target = mix.lam, 1.0 - mix.lam, inp.area
        else:
            cls = y_a.argmax(-1)
            cam = self.teacher_cam(mix.source_images, cls, tuple(mix.grid_size))
            s = mix.share_b.float()
            w_a = ((1.0 - s) * cam).sum(1)
            w_b = (s * cam[mix.partner]).sum(1)
            if self.normalize:
                total = (w_a + w_b).clamp_min(1e-12)
                w_a, w_b = w_a / total, w_b / total
            if self.smoothing == 'tokenmix':
                ls, k = float(inp.label_smoothing), y_a.shape[-1]
                one_a = torch.nn.functional.one_hot(cls, k).float()
                target = (ls / k + (w_a - ls / 2)[:, None] * one_a
                          + (w_b - ls / 2)[:, None] * one_a[mix.partner])
            else:
                target = w_a[:, None] * y_a + w_b[:, None] * y_b
        return RuleOutput(target, align_stats(None, mix.lam, target, inp.area, lam_aligned=w_a))
