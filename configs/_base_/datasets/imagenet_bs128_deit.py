# ImageNet-1k, DeiT augmentation (timm create_transform), 128 images per GPU.
# Layout: data/imagenet/{train,val}/<wnid>/*.JPEG (or ann_file lists `path label`).
dataset_type = 'ImageNetDataset'
data_root = 'data/imagenet'
img_size = 224

train_pipeline = [
    dict(type='TimmClassificationTransform', input_size=img_size, is_training=True,
         auto_augment='rand-m9-mstd0.5-inc1', color_jitter=0.4, interpolation='bicubic'),
    dict(type='PackClsInputs'),
]
test_pipeline = [
    # resize 256 (crop_pct 0.875), centre crop 224, bicubic
    dict(type='TimmClassificationTransform', input_size=img_size, is_training=False,
         crop_pct=0.875, interpolation='bicubic'),
    dict(type='PackClsInputs'),
]

train_dataloader = dict(
    batch_size=128,
    num_workers=10,
    persistent_workers=True,
    pin_memory=True,
    # DeiT's repeated augmentation (3 repeats)
    sampler=dict(type='RepeatAugSampler', num_repeats=3, shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type=dataset_type, data_root=data_root, split='train', pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=128,
    num_workers=10,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type=dataset_type, data_root=data_root, split='val', test_mode=True,
                 pipeline=test_pipeline),
)
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_dataloader = val_dataloader
test_evaluator = val_evaluator
