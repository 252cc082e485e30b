# PVT-Small (v1, Wang et al., ICCV 2021) classifier trained with TL-Align on token-aligned CutMix.
# The labels follow every spatial-reduction attention (the keys carry the mean label of the tokens
# they reduce) and are pooled by each stage's patch embedding (tlalign_mm/align/reduction.py).
# v1 as released (whai362/PVT classification/pvt.py): a class token joins the tokens in stage 4 and
# the head reads it; its label row enters there as [lam, 1 - lam] (DeiT's class-token convention)
# and the target is read from it.  The v2 configs set out_type='avg_featmap' (pvt_v2.py: token mean).
_base_ = ['./tla_classifier.py']
model = dict(
    backbone=dict(type='TLAPyramidVisionTransformer', arch='small', img_size=224, out_indices=(3,),
                  out_type='cls_token', drop_path_rate=0.1,
                  # labels ride in each block's own attention call (see tla_deit-small.py)
                  label_dtype='auto'),
    data_preprocessor=dict(
        # the TL-Align recipe's token CutMix (PVT's release trains with pixel Mixup 0.8 / CutMix 1.0:
        # configs/pretrain/pvt-{small,v2-b2}_cutmix-official_8xb128-300e_in1k.py);
        # boxes on the 32-px grid of the last stage, so that v1's patch embeddings pool tokens of
        # one source until then; shares reported on the 4-px grid of the first stage (v2's
        # overlapping 7x7 stride-4 embedding pools the pixel mask itself: return_mask stays True)
        mixer=dict(patch_size=4, token_grid_size=32)),
)
