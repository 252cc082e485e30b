# Flowers102 for transfer fine-tuning (DeiT's recipe: images resized to 224 px, ImageNet's
# augmentation; facebookresearch/deit issue #45), read by torchvision's class (download=False) from
# data/flowers-102/{jpg/, imagelabels.mat, setid.mat}; 102 classes, train on 'trainval', evaluate on 'test'.
dataset_type = 'TorchvisionClsDataset'
data_root = 'data'
img_size = 224
train_pipeline = [
    dict(type='TimmClassificationTransform', input_size=img_size, is_training=True,
         auto_augment='rand-m9-mstd0.5-inc1', color_jitter=0.4, interpolation='bicubic'),
    dict(type='PackClsInputs'),
]
test_pipeline = [
    dict(type='TimmClassificationTransform', input_size=img_size, is_training=False, crop_pct=0.875,
         interpolation='bicubic'),
    dict(type='PackClsInputs'),
]
train_dataloader = dict(
    batch_size=96, num_workers=8, persistent_workers=True, pin_memory=True,
    sampler=dict(type='RepeatAugSampler', num_repeats=3, shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type=dataset_type, dataset='Flowers102', data_root=data_root, split='trainval', pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=96, num_workers=8, persistent_workers=True, pin_memory=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type=dataset_type, dataset='Flowers102', data_root=data_root, split='test', test_mode=True,
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_evaluator = val_evaluator
