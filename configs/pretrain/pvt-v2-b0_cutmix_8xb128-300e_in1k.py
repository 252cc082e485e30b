# CutMix baseline: same recipe, area target.
_base_ = ['./pvt-v2-b0_tla_8xb128-300e_in1k.py']
model = dict(label_rule=dict(_delete_=True, type='Area'))
