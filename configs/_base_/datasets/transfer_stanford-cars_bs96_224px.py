# StanfordCars for transfer fine-tuning (configs/_base_/datasets/transfer_bs96_224px.py), read from
# data/stanford_cars/{devkit/, cars_train/, cars_test/, cars_test_annos_withlabels.mat}; 196 classes, train on 'train', evaluate on 'test'.
_base_ = ['./transfer_bs96_224px.py']
train_dataloader = dict(dataset=dict(dataset='StanfordCars', split='train'))
val_dataloader = dict(dataset=dict(dataset='StanfordCars', split='test'))
test_dataloader = val_dataloader
