# TransMix (Chen et al., CVPR 2022): lam from the last block's attention, blended with the area.
# Same recipe as the TL-Align config; only the label rule differs.
_base_ = ['./swin-tiny_tla_8xb128-300e_in1k.py']
model = dict(label_rule=dict(_delete_=True, type='TransMix'))
