_base_ = ['./deit-small_tla_8xb128-300e_in1k.py']
model = dict(backbone=dict(arch='deit-base', drop_path_rate=0.1))
