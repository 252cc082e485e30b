# TokenMix (Liu et al., ECCV 2022): TokenMix's block masks (its tokenmix.py draws half of
# DeiT's 14 x 14 tokens + 14; here half of Swin's 7 x 7 cells of 32 px + 4) and its target, the
# share of a teacher's class activation map each image keeps.
# The teacher is any classifier of this project (config + checkpoint) or a timm model
# (teacher=dict(timm=NAME, checkpoint=CKPT)); the checkpoint must exist when the model is built.
_base_ = ['./swin-tiny_tla_8xb128-300e_in1k.py']
teacher_checkpoint = 'work_dirs/swin-tiny_tla_8xb128-300e_in1k/epoch_300.pth'
model = dict(
    label_rule=dict(_delete_=True, type='TokenMix',
                    teacher=dict(config='configs/pretrain/swin-tiny_tla_8xb128-300e_in1k.py',
                                 checkpoint=teacher_checkpoint)),
    data_preprocessor=dict(mixer=dict(cutmix_alpha=0.0, tokenmix_alpha=1.0, tokenmix_mask='block',
                                      tokenmix_lam=0.5, tokenmix_min_tokens=4, token_grid_size=32)))
