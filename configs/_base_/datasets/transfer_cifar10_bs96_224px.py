# CIFAR10 for transfer fine-tuning (configs/_base_/datasets/transfer_bs96_224px.py), read from
# data/cifar-10-batches-py/ (the python version); 10 classes, train on 'train', evaluate on 'test'.
_base_ = ['./transfer_bs96_224px.py']
train_dataloader = dict(dataset=dict(dataset='CIFAR10', split='train'))
val_dataloader = dict(dataset=dict(dataset='CIFAR10', split='test'))
test_dataloader = val_dataloader
