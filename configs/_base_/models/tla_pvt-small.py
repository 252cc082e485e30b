# PVT-Small (v1, Wang et al., ICCV 2021) classifier trained with TL-Align on token-aligned CutMix.
# The labels follow every spatial-reduction attention (the keys carry the mean label of the tokens
# they reduce) and are pooled by each stage's patch embedding (tlalign_mm/align/reduction.py).
# v1 as released (whai362/PVT classification/pvt.py): a class token joins the tokens in stage 4 and
# the head reads it; its label row enters there as [lam, 1 - lam] (DeiT's class-token convention)
# and the target is read from it.  The v2 configs set out_type='avg_featmap' (pvt_v2.py: token mean).
model = dict(
    type='TLAImageClassifier',
    backbone=dict(type='TLAPyramidVisionTransformer', arch='small', img_size=224, out_indices=(3,),
                  out_type='cls_token', drop_path_rate=0.1,
                  # labels ride in each block's own attention call (see tla_deit-small.py)
                  label_dtype='auto'),
    # logits, loss and predictions; in_channels None: the backbone's pooled width
    head=dict(type='TLALinearClsHead', num_classes=1000, in_channels=None,
              loss=dict(type='SoftTargetCrossEntropy')),
    # the training target (tlalign_mm/models/label_rules.py); the sibling configs switch it in one line
    label_rule=dict(type='TLAlign', blocks='all', residual=True, readout='auto', label_channels='source'),
    label_smoothing=0.1,
    align_stats_interval=100,
    data_preprocessor=dict(
        type='TLAClsDataPreprocessor',
        # the TL-Align recipe's token CutMix (PVT's release trains with pixel Mixup 0.8 / CutMix 1.0:
        # configs/pretrain/pvt-{small,v2-b2}_cutmix-official_8xb128-300e_in1k.py);
        # boxes on the 32-px grid of the last stage, so that v1's patch embeddings pool tokens of
        # one source until then; shares reported on the 4-px grid of the first stage (v2's
        # overlapping 7x7 stride-4 embedding pools the pixel mask itself: return_mask stays True)
        mixer=dict(cutmix_alpha=1.0, mixup_alpha=0.0, prob=1.0, switch_prob=0.5,
                   cutmix_mode='token', correct_lam=True, patch_size=4, token_grid_size=32),
        random_erasing=dict(re_prob=0.25, re_mode='pixel', re_count=1)),
)
