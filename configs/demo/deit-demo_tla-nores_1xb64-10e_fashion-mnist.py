# The demo's tL-Align ablation (paper Table 8): no residual average, Y <- A Y in every block.
_base_ = ['./deit-demo_tla_1xb64-10e_fashion-mnist.py']
model = dict(label_rule=dict(residual=False))
