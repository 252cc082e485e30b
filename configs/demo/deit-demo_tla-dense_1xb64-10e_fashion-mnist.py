# The demo's dense TL-Align: the TL-Align target plus a loss on every token's aligned label (token head).
_base_ = ['./deit-demo_tla_1xb64-10e_fashion-mnist.py']
model = dict(label_rule=dict(_delete_=True, type='DenseTLAlign', dense_weight=0.5))
