# TokenMix (Liu et al., ECCV 2022): TokenMix's block masks (half of the tokens + 14, as its
# tokenmix.py) and its target, the share of a teacher's class activation map each image keeps.
# The teacher is any classifier of this project (config + checkpoint) or a timm model
# (teacher=dict(timm=NAME, checkpoint=CKPT)); the checkpoint must exist when the model is built.
_base_ = ['./deit-small_tla_8xb128-300e_in1k.py']
teacher_checkpoint = 'work_dirs/deit-small_tla_8xb128-300e_in1k/epoch_300.pth'
model = dict(
    label_rule=dict(_delete_=True, type='TokenMix',
                    teacher=dict(config='configs/pretrain/deit-small_tla_8xb128-300e_in1k.py',
                                 checkpoint=teacher_checkpoint)),
    data_preprocessor=dict(mixer=dict(cutmix_alpha=0.0, tokenmix_alpha=1.0, tokenmix_mask='block',
                                      tokenmix_lam=0.5, tokenmix_min_tokens=14)))
