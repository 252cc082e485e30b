_base_ = ['./swin-small_tla_8xb128-300e_in1k.py']
model = dict(tl_align=False)
