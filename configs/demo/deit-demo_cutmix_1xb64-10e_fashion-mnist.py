# The CutMix baseline of the demo: same everything, area target.
_base_ = ['./deit-demo_tla_1xb64-10e_fashion-mnist.py']
model = dict(tl_align=False)
