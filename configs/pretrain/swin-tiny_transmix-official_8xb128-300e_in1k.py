# TransMix on Swin-T in the recipe TransMix trains Swin with: Swin's own (microsoft/Swin-Transformer
# config.py: pixel Mixup 0.8 / CutMix 1.0 switched per batch with probability 0.5, random erasing
# 0.25, no repeated augmentation, AdamW 1e-3 at 1024, 20 warm-up epochs, grad clip 5), with the
# TransMix rule on the CutMix batches and the area target on the Mixup ones. The released TransMix
# code has DeiT only; on Swin the rule reads the token mean of the last block's window attention,
# with the token mask sampled nearest on the patch-4 grid and pooled by patch merging
# (tlalign_mm/models/label_rules/transmix.py). swin-tiny_transmix_8xb128-300e_in1k.py keeps the TL-Align
# recipe (token CutMix only: the paper's setting, only the target differs).
_base_ = ['./swin-tiny_transmix_8xb128-300e_in1k.py']

model = dict(
    label_rule=dict(token_mask='nearest', area_weight=0.5),
    data_preprocessor=dict(
        mixer=dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, cutmix_mode='pixel', correct_lam=True,
                   token_grid_size=None)))
# Swin's loader is a plain DistributedSampler (no repeated augmentation)
train_dataloader = dict(sampler=dict(_delete_=True, type='DefaultSampler', shuffle=True))
