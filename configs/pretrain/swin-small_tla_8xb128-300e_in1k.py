_base_ = ['./swin-tiny_tla_8xb128-300e_in1k.py']
model = dict(backbone=dict(arch='small', drop_path_rate=0.3))
