_base_ = ['./deit-tiny_tla_8xb128-300e_in1k.py']
model = dict(tl_align=False)
