# The real Fashion-MNIST subset that tools/prepare_demo_data.py writes
# (data/demo/fashion_mnist/{train,val}/<class>/*.png: 4000 training and 1000 validation images,
# 10 classes), with the DeiT augmentation of configs/_base_/datasets/imagenet_bs128_deit.py at
# 32x32 (RandAugment, colour jitter, bicubic; random-resized-crop scale 0.5-1.0), batch 64.
dataset_type = 'ImageFolderDataset'
data_root = 'data/demo/fashion_mnist'
img_size = 32

train_pipeline = [
    dict(type='TimmClassificationTransform', input_size=img_size, is_training=True,
         auto_augment='rand-m9-mstd0.5-inc1', color_jitter=0.4, interpolation='bicubic', scale=(0.5, 1.0)),
    dict(type='PackClsInputs'),
]
test_pipeline = [
    dict(type='TimmClassificationTransform', input_size=img_size, is_training=False, crop_pct=1.0,
         interpolation='bicubic'),
    dict(type='PackClsInputs'),
]
train_dataloader = dict(
    batch_size=64, num_workers=2, persistent_workers=True, pin_memory=False,
    sampler=dict(type='RepeatAugSampler', num_repeats=3, shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type=dataset_type, data_root=data_root, split='train', pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=128, num_workers=2, persistent_workers=True, pin_memory=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type=dataset_type, data_root=data_root, split='val', test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_evaluator = val_evaluator
