# The TL-Align pretraining classifier, whatever its backbone: head, label rule, label smoothing,
# token-fluctuation logging and the data preprocessor with the TL-Align reference recipe's mixing
# (token-aligned CutMix alpha 1.0, no Mixup, label smoothing 0.1, K = 2 source labels) and DeiT's
# random erasing. tla_deit-small.py, tla_swin-tiny.py and tla_pvt-small.py add the backbone and
# its token grid.
model = dict(
    type='TLAImageClassifier',
    # logits, loss and predictions; in_channels None: the backbone's pooled width
    head=dict(type='TLALinearClsHead', num_classes=1000, in_channels=None,
              loss=dict(type='SoftTargetCrossEntropy')),
    # the training target (tlalign_mm/models/label_rules/); the sibling configs switch it in one line:
    # 'Area' (the CutMix baseline), 'TransMix', 'TokenMix', 'DenseTLAlign'; TLAlign's ablations are its options
    label_rule=dict(type='TLAlign',
                    blocks='all',            # 'last' or a list of block indices: the paper's Table 8
                    residual=True,           # False: A Y instead of (Y + A Y) / 2
                    readout='auto',          # the pooled feature's: class token (DeiT, PVT v1) or token mean
                    label_channels='source'),  # 'classes': carry K = num_classes labels (same target)
    label_smoothing=0.1,
    # token fluctuation (paper Fig. 3) as align/* log keys: every step for TL-Align (free), every
    # 100th step for the CutMix baseline (label_rule 'Area'), which carries the labels only then
    align_stats_interval=100,
    data_preprocessor=dict(
        type='TLAClsDataPreprocessor',
        mixer=dict(cutmix_alpha=1.0, mixup_alpha=0.0, prob=1.0, switch_prob=0.5,
                   cutmix_mode='token', correct_lam=True),
        random_erasing=dict(re_prob=0.25, re_mode='pixel', re_count=1)),
)
