# The demo's transMix (Chen et al., CVPR 2022): lam from the last block's attention, blended with the area.
_base_ = ['./deit-demo_tla_1xb64-10e_fashion-mnist.py']
model = dict(label_rule=dict(_delete_=True, type='TransMix'))
