# TokenMix in its own released recipe (Sense-X/TokenMix exp/deit_small/run.sh and main.py's
# defaults): the TokenMix rule with the release's conventions (the rule's defaults: top-5 maps, its per-class
# smoothing, no ReLU on the map, roi_align resizing; int cell count in the mixer) and every value
# of the recipe that differs from the DeiT recipe of deit-small_tla_8xb128-300e_in1k.py.
# deit-small_tokenmix_8xb128-300e_in1k.py keeps the DeiT / TL-Align recipe (TokenMix masks on
# every batch, soft-target cross-entropy).
# The release reads ReLabel-style label maps an NFNet-F6 computed offline (--label_dir
# label_top5_train_nfnet); here the teacher runs online on the clean crop. Any teacher with a
# class activation map plugs in, e.g. a timm NFNet-F6:
#   model.label_rule.teacher=dict(timm='dm_nfnet_f6', checkpoint='checkpoints/dm_nfnet_f6.pth')
_base_ = ['./deit-small_tokenmix_8xb128-300e_in1k.py']

model = dict(
    label_rule=dict(smoothing='tokenmix', cam_topk=5, cam_activation=None, resize='roi_align'),
    # --use-bce: timm's BinaryCrossEntropy on the soft targets
    head=dict(loss=dict(_delete_=True, type='BinaryCrossEntropy')),
    data_preprocessor=dict(
        # --mixup 0.8 --cutmix 1.0: Mixup (alpha 0.8) or TokenMix per batch, --mixup-switch-prob 0.5;
        # a TokenMix batch ignores its Beta draw (lam_constant 0.5) and masks int(0.5 * 196) + 14
        # cells in blocks (--mask-type block, minimum_tokens 14)
        mixer=dict(mixup_alpha=0.8, cutmix_alpha=0.0, tokenmix_alpha=1.0, switch_prob=0.5, tokenmix_mask='block',
                   tokenmix_lam=0.5, tokenmix_min_tokens=14)))
# main.py: parser.set_defaults(repeated_aug=False): no repeated augmentation
train_dataloader = dict(sampler=dict(_delete_=True, type='DefaultSampler', shuffle=True))

# main.py: model_ema defaults to True, decay 0.99996 (timm ModelEma); mmengine's momentum is 1 - decay
custom_hooks = [
    dict(type='NonFiniteLossHook'),
    dict(type='BackboneExportHook', filename='backbone.pth', at_checkpoint=False),
    dict(type='EMAHook', ema_type='ExponentialMovingAverage', momentum=4e-5, priority='ABOVE_NORMAL'),
]
