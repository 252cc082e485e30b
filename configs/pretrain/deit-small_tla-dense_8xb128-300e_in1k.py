# Dense TL-Align: the TL-Align target plus a loss on every token's aligned label (token head).
# Same recipe as the TL-Align config; only the label rule differs.
_base_ = ['./deit-small_tla_8xb128-300e_in1k.py']
model = dict(label_rule=dict(_delete_=True, type='DenseTLAlign', dense_weight=0.5))
