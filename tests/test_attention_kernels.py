"""The fused label path's kernels against plain SDPA and the plain TL-Align rule, with autograd on.

What must hold whatever kernel a call takes: the features' output and every gradient (q, k, v
and a learnable mask) equal ``F.scaled_dot_product_attention``'s (the independent reference),
the labels equal ``mean_h(softmax(q k^T * scale + mask)) @ Y`` written out here, and no
gradient reaches or leaves the labels.  The profiler checks which kernel really ran, since the
point of the fused CPU path is to stay on PyTorch's flash kernel and never materialise the
per-head attention.
"""
import pytest
import torch
import torch.nn.functional as F
from torch.profiler import profile

from tlalign_mm.align import fused_attention_with_labels
from tlalign_mm.models.backbones.swin import TLASwinBlock
from tlalign_mm.models.backbones.vit import TLAVisionTransformer

B, H, N, D = 3, 2, 20, 16


def _qkv(seed):
    g = torch.Generator().manual_seed(seed)
    # q, k, v as non-contiguous views of one projection, as the backbones make them
    base = torch.randn(B, N, 3 * H * D, generator=g).requires_grad_()
    q, k, v = base.view(B, N, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
    return base, q, k, v


def _labels(k, seed=5):
    y = torch.rand(B, N, k, generator=torch.Generator().manual_seed(seed))
    return y / y.sum(-1, keepdim=True)


def _mask(kind):
    if kind is None:
        return None
    m = torch.randn(1, H, N, N, generator=torch.Generator().manual_seed(7))
    return m.requires_grad_() if kind == 'learnable' else m


def _ops(fn):
    with profile() as prof:
        fn()
    return {e.name for e in prof.events()}


@pytest.mark.parametrize('mask_kind,kernel', [
    (None, 'aten::_scaled_dot_product_flash_attention_for_cpu_backward'),
    ('fixed', 'aten::_scaled_dot_product_flash_attention_for_cpu_backward'),
    ('learnable', 'aten::_softmax_backward_data'),
])
@pytest.mark.parametrize('n_lab', [1, 2, 40])
def test_fused_matches_sdpa_gradients_and_plain_label_rule(mask_kind, kernel, n_lab):
    scale = 0.3
    g_out = torch.randn(B, H, N, D, generator=torch.Generator().manual_seed(3))
    labels = _labels(n_lab)

    base_r, q, k, v = _qkv(0)
    mask_r = _mask(mask_kind)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_r, scale=scale)
    (ref * g_out).sum().backward()
    with torch.no_grad():
        logits = (q @ k.transpose(-2, -1)) * scale + (0 if mask_r is None else mask_r)
        lab_ref = logits.softmax(-1).mean(1) @ labels

    base, q, k, v = _qkv(0)
    mask = _mask(mask_kind)
    out_lab = {}

    def run():
        out, lab = fused_attention_with_labels(q, k, v, labels, attn_mask=mask, scale=scale)
        (out * g_out).sum().backward()
        out_lab.update(out=out, lab=lab)

    ops = _ops(run)
    out, lab = out_lab['out'], out_lab['lab']
    assert (out - ref).abs().max() <= 1e-5
    assert (base.grad - base_r.grad).abs().max() <= 1e-5
    if mask_kind == 'learnable':
        assert (mask.grad - mask_r.grad).abs().max() <= 1e-5
    assert lab.shape == (B, N, n_lab) and lab.dtype == torch.float32 and not lab.requires_grad
    assert (lab - lab_ref).abs().max() <= 1e-6
    if n_lab * 8 <= D:   # few label channels: the kernel the features take in plain SDPA too
        assert kernel in ops
    # the label rows keep their mass (attention rows sum to 1)
    assert torch.allclose(lab.sum(-1), torch.ones(B, N), atol=1e-5)


def test_flash_path_keeps_sdpa_output_layout():
    # plain SDPA on CPU returns (B, H, N, D) over (B, N, H, D) memory, so the backbones'
    # transpose(1, 2).reshape is free; the fused path must return the same layout
    _, q, k, v = _qkv(1)
    out, _ = fused_attention_with_labels(q, k, v, _labels(2))
    ref = F.scaled_dot_product_attention(q, k, v)
    assert out.stride() == ref.stride()
    assert out.transpose(1, 2).is_contiguous()


def test_fused_labels_are_float32_and_features_follow_autocast():
    _, q, k, v = _qkv(2)
    labels = _labels(2)
    with torch.no_grad():
        lab_ref = ((q @ k.transpose(-2, -1)) * D ** -0.5).softmax(-1).mean(1) @ labels
        out, lab = fused_attention_with_labels(q.bfloat16(), k.bfloat16(), v.bfloat16(), labels)
    assert out.dtype == torch.bfloat16 and lab.dtype == torch.float32
    # only q and k were rounded to bfloat16; the softmax and label product ran in float32
    assert (lab - lab_ref).abs().max() < 2e-2


def _param_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize('attn_impl', ['fused', 'split', 'materialised'])
def test_labels_leave_training_gradients_unchanged(attn_impl):
    """Carrying labels must not change what the features learn: same loss, same gradients."""
    torch.manual_seed(0)
    vit = TLAVisionTransformer(dict(embed_dims=64, num_layers=2, num_heads=2), img_size=32,
                               out_type='cls_token', attn_impl=attn_impl)
    vit.init_weights()
    x = torch.randn(2, 3, 32, 32)
    y0 = _labels(2)[:2, :5]
    swin = TLASwinBlock(32, 2, window_size=4, shift=True, attn_impl=attn_impl)
    torch.nn.init.normal_(swin.attn.relative_position_bias_table, std=0.5)
    t = torch.randn(2, 64, 32)
    ys = torch.softmax(torch.randn(2, 64, 2), -1)
    # a fixed random projection as the loss (a squared norm after the final LayerNorm would
    # have a gradient that cancels to rounding noise)
    r_vit = torch.randn(2, 64)
    r_swin = torch.randn(2, 64, 32)
    for model, run in ((vit, lambda lab: (vit(x, lab)[0][0] if lab is not None else vit(x)[0]) * r_vit),
                       (swin, lambda lab: swin(t, (8, 8), lab)[0] * r_swin)):
        model.train()
        run(None).sum().backward()
        g_plain = _param_grads(model)
        model.zero_grad()
        run(y0 if model is vit else ys).sum().backward()
        g_lab = _param_grads(model)
        model.zero_grad()
        assert g_plain.keys() == g_lab.keys() and len(g_plain) > 5
        for name in g_plain:
            assert (g_plain[name] - g_lab[name]).abs().max() <= 1e-5 * (1 + g_plain[name].abs().max()), name
