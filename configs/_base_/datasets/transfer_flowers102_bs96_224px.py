# Flowers102 for transfer fine-tuning (configs/_base_/datasets/transfer_bs96_224px.py), read from
# data/flowers-102/{jpg/, imagelabels.mat, setid.mat}; 102 classes, train on 'trainval', evaluate on 'test'.
_base_ = ['./transfer_bs96_224px.py']
train_dataloader = dict(dataset=dict(dataset='Flowers102', split='trainval'))
val_dataloader = dict(dataset=dict(dataset='Flowers102', split='test'))
test_dataloader = val_dataloader
