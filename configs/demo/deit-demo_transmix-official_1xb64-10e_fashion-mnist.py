# The demo's TransMix in its own released recipe (configs/pretrain/deit-small_transmix-official_8xb32-300e_in1k.py
# at demo size): the rule's release conventions and the recipe values that carry over to a 10-epoch
# run: pixel Mixup 0.8 / CutMix 1.0 switched per batch with probability 0.5 (TransMix on the CutMix
# batches, the area target on the Mixup ones), no random erasing, no repeated augmentation, random
# train interpolation, weight decay 0.03. The demo keeps its schedule (lr 1e-3 at batch 64, 1 warm-up
# epoch, 10 epochs) and leaves out the model EMA: decay 0.99996 averages over ~25k steps, 40 times
# the demo's 630.
_base_ = ['./deit-demo_transmix_1xb64-10e_fashion-mnist.py']

model = dict(
    label_rule=dict(token_mask='nearest', area_weight=0.5),
    data_preprocessor=dict(
        mixer=dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, cutmix_mode='pixel', correct_lam=True),
        random_erasing=None))
train_pipeline = [
    dict(type='TimmClassificationTransform', input_size=32, is_training=True,
         auto_augment='rand-m9-mstd0.5-inc1', color_jitter=0.4, interpolation='random', scale=(0.5, 1.0)),
    dict(type='PackClsInputs'),
]
train_dataloader = dict(sampler=dict(_delete_=True, type='DefaultSampler', shuffle=True),
                        dataset=dict(pipeline=train_pipeline))
optim_wrapper = dict(optimizer=dict(weight_decay=0.03))
