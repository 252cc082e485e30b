# The demo's tL-Align ablation (paper Table 8): only the last block's attention aligns the labels.
_base_ = ['./deit-demo_tla_1xb64-10e_fashion-mnist.py']
model = dict(label_rule=dict(blocks='last'))
