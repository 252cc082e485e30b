# The CutMix baseline of the demo: same everything, area target.
_base_ = ['./deit-demo_tla_1xb64-10e_fashion-mnist.py']
model = dict(label_rule=dict(_delete_=True, type='Area'))
