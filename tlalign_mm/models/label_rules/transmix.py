"""TransMix (Chen et al., CVPR 2022; Beckschen/TransMix ``transmix.py``) as released."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...align import align_stats, read_labels
from ...registry import MODELS
from ..data_preprocessor import TLAClsDataPreprocessor
from .base import LabelRule, RuleInput, RuleOutput, check_choice

__all__ = ['TransMixRule', 'TRANSMIX_TOKEN_MASKS', 'transmix_initial_labels', 'transmix_attention_share']


#: Values of ``TransMix(token_mask=...)``.
TRANSMIX_TOKEN_MASKS = ('nearest', 'area')


def transmix_initial_labels(mask: Tensor, num_prefix_tokens: int) -> Tensor:
    """TransMix's labels: patch token j carries ``[s_j, 1 - s_j, 0]`` (``s_j`` its partner mask
    value, (B, N) in [0, 1]), each prefix token ``[0, 0, 1]``; (B, P + N, 3) float32."""
    s = mask.float()
    patches = torch.stack([s, 1.0 - s, torch.zeros_like(s)], dim=-1)
    if num_prefix_tokens == 0:
        return patches
    prefix = F.pad(s.new_ones(s.shape[0], num_prefix_tokens, 1), (2, 0))   # [0, 0, 1], made on s's device
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
        self.token_mask = check_choice('TransMix', 'token_mask', token_mask, TRANSMIX_TOKEN_MASKS)

    def setup(self, model) -> None:
        self._require_labels(model)
        super().setup(model)
        model.backbone.set_alignment('last', False)
        prep = model.data_preprocessor
        mixer = prep.mixer if isinstance(prep, TLAClsDataPreprocessor) else None
        if self.token_mask == 'nearest' and mixer is not None and not mixer.return_mask:
            raise ValueError("TransMix token_mask='nearest' reads the mixer's pixel mask: build the "
                             "data_preprocessor's mixer with return_mask=True, or use token_mask='area'")

    def token_mask_of(self, mix) -> Tensor:
        """(B, N) float32 mask of the partner on the patch grid: the pixel share at each patch's
        top-left pixel ('nearest', ``nn.Upsample`` nearest as the release) or the patch's pasted
        area share ('area').

        Raises:
            ValueError: 'nearest' on a :class:`~tlalign_mm.structures.MixResult` without a pixel mask.
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
