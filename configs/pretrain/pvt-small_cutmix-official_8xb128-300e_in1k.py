# PVT-Small (v1) in PVT's own released recipe (whai362/PVT classification/main.py defaults with
# configs/pvt/pvt_small.py): DeiT's recipe with pixel Mixup 0.8 / CutMix 1.0 switched per batch with
# probability 0.5 and the area target, i.e. the release's training. The _tla_ / _cutmix_ pair runs
# the TL-Align recipe (token CutMix only; only the target differs between them).
_base_ = ['./pvt-small_cutmix_8xb128-300e_in1k.py']
model = dict(data_preprocessor=dict(mixer=dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5,
                                               cutmix_mode='pixel', token_grid_size=None)))
