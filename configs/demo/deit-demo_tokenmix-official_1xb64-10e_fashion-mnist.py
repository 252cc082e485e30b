# The demo's TokenMix in its own released recipe (configs/pretrain/deit-small_tokenmix-official_8xb128-300e_in1k.py
# at demo size): the rule's release conventions and the recipe values that carry over to a 10-epoch
# run: Mixup 0.8 or TokenMix block masks per batch (switch 0.5; half of the 64 tokens + 4), timm's
# BinaryCrossEntropy, no repeated augmentation. The demo keeps its schedule and leaves out the model
# EMA (decay 0.99996 averages over ~25k steps, 40 times the demo's 630). The teacher is the demo
# TL-Align model, as in deit-demo_tokenmix_1xb64-10e_fashion-mnist.py.
_base_ = ['./deit-demo_tokenmix_1xb64-10e_fashion-mnist.py']

model = dict(
    label_rule=dict(smoothing='tokenmix', cam_topk=5, cam_activation=None, resize='roi_align'),
    head=dict(loss=dict(_delete_=True, type='BinaryCrossEntropy')),
    data_preprocessor=dict(
        mixer=dict(mixup_alpha=0.8, cutmix_alpha=0.0, tokenmix_alpha=1.0, switch_prob=0.5, tokenmix_mask='block',
                   tokenmix_lam=0.5, tokenmix_min_tokens=4)))
train_dataloader = dict(sampler=dict(_delete_=True, type='DefaultSampler', shuffle=True))
