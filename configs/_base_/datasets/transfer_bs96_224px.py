# The transfer sets for fine-tuning with DeiT's recipe (facebookresearch/deit issue #45): images
# resized to 224 px with ImageNet's augmentation and evaluation crop (inherited from
# imagenet_bs128_deit.py), batch 96 per GPU, read by torchvision's classes (download=False)
# under data/.  The per-set bases name the set and its splits.
_base_ = ['./imagenet_bs128_deit.py']
dataset_type = 'TorchvisionClsDataset'
data_root = 'data'
train_dataloader = dict(
    batch_size=96, num_workers=8,
    dataset=dict(type=dataset_type, dataset='CIFAR10', data_root=data_root, split='train'))
val_dataloader = dict(
    batch_size=96, num_workers=8,
    dataset=dict(type=dataset_type, dataset='CIFAR10', data_root=data_root, split='test'))
test_dataloader = val_dataloader
