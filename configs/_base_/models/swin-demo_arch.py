# The small Swin of the demo chain, written once: pretrained by
# configs/demo/swin-demo_tla_1xb64-10e_fashion-mnist.py and loaded by the demo UperNet and
# Cascade Mask R-CNN, which read it as `arch=dict(_delete_=True, **_base_.swin_demo_arch)`.
swin_demo_arch = dict(embed_dims=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))
