"""TokenMix (Liu et al., ECCV 2022; Sense-X/TokenMix ``tokenmix.py``) as released, with an online teacher."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from ...align import align_stats
from ...registry import FUNCTIONS, MODELS
from ..heads import patch_tokens
from .base import LabelRule, RuleInput, RuleOutput, check_choice

__all__ = ['TokenMixRule', 'TOKENMIX_SMOOTHINGS', 'TOKENMIX_CAM_ACTIVATIONS', 'TOKENMIX_RESIZES',
           'check_timm_cam_teacher']


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
        tokens = feats[:, teacher.num_prefix_tokens:]                  # timm's ViT family declares it
        side = int(round(tokens.shape[1] ** 0.5))
        hw = (side, tokens.shape[1] // side)
    return teacher.get_classifier()(tokens), hw


def check_timm_cam_teacher(teacher: nn.Module, name: str, img_hw: Sequence[int]) -> None:
    """Refuse a timm teacher whose class activation map is not defined.

    TokenMix's map is the teacher's classifier at every location; it is the class activation map
    (Zhou et al., CVPR 2016) only when the logits are a linear classifier of the globally
    average-pooled features: ``logits == mean_locations(classifier(feature_location))``.  This is
    checked on a random ``(2, 3, *img_hw)`` input with the teacher's own weights.  ResNet, EfficientNet,
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
    * the target puts ``eps / K`` on every class plus ``w_A - eps / 2`` on A's class and
      ``w_B - eps / 2`` on B's (``smoothing='tokenmix'``, the default: its ``on_value`` /
      ``off_value`` per class, ``eps`` the label smoothing); ``smoothing='weighted'`` takes
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
        tlalign_mm.checkpoint.CheckpointFileError: a teacher checkpoint that cannot be read (a
            ``pickle.UnpicklingError``).
        RuntimeError: a timm model name timm does not know, or a checkpoint whose keys or shapes do
            not fit the teacher (``load_state_dict(strict=True)``'s message).
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
        self.smoothing = check_choice('TokenMix', 'smoothing', smoothing, TOKENMIX_SMOOTHINGS)
        self.cam_activation = check_choice('TokenMix', 'cam_activation', cam_activation, TOKENMIX_CAM_ACTIVATIONS)
        self.resize = check_choice('TokenMix', 'resize', resize, TOKENMIX_RESIZES)
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
            # the teacher's class map reads every token: its backbone returns them (the declared contract)
            teacher.backbone.out_type = teacher.backbone.all_tokens_out_type(teacher.backbone.out_type)
            classes = teacher.num_classes
        else:
            import timm

            name = cfg.pop('timm')
            teacher = timm.create_model(name, pretrained=False, num_classes=model.num_classes, **cfg)
            ckpt = FUNCTIONS.get('load_checkpoint_file')(path)   # tlalign_mm.checkpoint's (weights_only)
            sd = ckpt.get('state_dict', ckpt.get('model', ckpt))
            teacher.load_state_dict(sd, strict=True)
            teacher.eval()
            check_timm_cam_teacher(teacher, name, model.backbone.img_size)
            classes = model.num_classes
        if classes != model.num_classes:
            raise ValueError(f'TokenMix teacher has {classes} classes, the student {model.num_classes}')
        teacher.eval().requires_grad_(False)
        self.__dict__['_teacher'] = teacher     # not a submodule: no parameters, no checkpoint keys
        self._teacher_is_ours = bool(cfg.get('config'))

    def _class_map(self, cam: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, 1, h, w) maps -> (B, N) float32 weights on the ``grid`` summing to 1 (see class doc)."""
        if self.resize == 'roi_align':
            from torchvision.ops import roi_align
            b, _, h, w = cam.shape
            boxes = cam.new_full((b, 5), -0.5)      # (index, x1, y1, x2, y2), made on cam's device
            boxes[:, 0], boxes[:, 3], boxes[:, 4] = torch.arange(b, device=cam.device), w - 0.5, h - 0.5
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
        if self._teacher_is_ours:                                      # a classifier of ours
            last = t.backbone(images)[-1]
            tokens = patch_tokens(last, t.num_prefix_tokens)          # (B, n, C)
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
            cam = self.teacher_cam(mix.source_images, cls, tuple(mix.token_grid))
            s = mix.share_b.float()
            w_a = ((1.0 - s) * cam).sum(1)
            w_b = (s * cam[mix.partner]).sum(1)
            if self.normalize:
                total = (w_a + w_b).clamp_min(1e-12)
                w_a, w_b = w_a / total, w_b / total
            if self.smoothing == 'tokenmix':
                eps, k = float(inp.label_smoothing), y_a.shape[-1]
                one_a = torch.nn.functional.one_hot(cls, k).float()
                target = (eps / k + (w_a - eps / 2)[:, None] * one_a
                          + (w_b - eps / 2)[:, None] * one_a[mix.partner])
            else:
                target = w_a[:, None] * y_a + w_b[:, None] * y_b
        return RuleOutput(target, align_stats(None, mix.lam, target, inp.area, lam_aligned=w_a))
