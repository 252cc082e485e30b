# TL-Align ablation (paper Table 8): only the last block's attention aligns the labels.
# Same recipe as the TL-Align config; only the label rule differs.
_base_ = ['./swin-tiny_tla_8xb128-300e_in1k.py']
model = dict(label_rule=dict(blocks='last'))
