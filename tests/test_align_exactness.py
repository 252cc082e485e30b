"""Exactness of the TL-Align label path against independent references.

* DeiT: the reference code's algorithm (Euphoria16/TL-Align ``vision_transformer.py``:
  per-head softmax attention, mean over heads, ``(Y + Y_att) / 2`` per block, class-token
  target) written plainly here with torch functional ops and the same weights.
* Swin: a per-window reference with explicit Python loops over windows and an explicitly built
  region mask, compared with the vectorised block.
* Linearity: K = 2 source embedding expanded == K = num_classes propagated.
"""
import pytest
import torch
import torch.nn.functional as F

from tlalign_mm.align import (
    expand_source_labels,
    initial_class_labels,
    initial_source_labels,
    merge_patch_labels,
    smooth_one_hot,
)
from tlalign_mm.models.backbones.swin import TLASwinBlock, TLASwinTransformer
from tlalign_mm.models.backbones.vit import TLAAttention, TLAVisionTransformer

TOL = 1e-5


def _random_mix(b, grid, generator):
    """Token-aligned box of the partner on a (gh, gw) grid; returns share_b (B, N), lam (B,)."""
    gh, gw = grid
    share = torch.zeros(b, gh, gw)
    y0, x0 = torch.randint(0, gh // 2, (2,), generator=generator).tolist()
    share[:, y0:y0 + gh // 2, x0:x0 + gw // 2 + 1] = 1.0
    share = share.flatten(1)
    return share, 1.0 - share.mean(1)


def _reference_deit_targets(model, x, y0):
    """TL-Align reference algorithm for DeiT, written plainly (no tlalign_mm modules)."""
    b = x.shape[0]
    t = F.conv2d(x, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=16)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([model.cls_token.expand(b, -1, -1), t], 1) + model.pos_embed
    y = y0.clone()
    for blk in model.blocks:
        c = t.shape[-1]
        nh = blk.attn.num_heads
        h = F.layer_norm(t, (c,), blk.norm1.weight, blk.norm1.bias, 1e-6)
        qkv = F.linear(h, blk.attn.qkv.weight, blk.attn.qkv.bias)
        q, k, v = qkv.reshape(b, -1, 3, nh, c // nh).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (c // nh) ** -0.5).softmax(-1)
        y_att = attn.mean(1) @ y                       # mean over heads, then @ labels
        y = (y_att + y) / 2.0                          # residual average
        a = (attn @ v).transpose(1, 2).reshape(b, -1, c)
        t = t + F.linear(a, blk.attn.proj.weight, blk.attn.proj.bias)
        h = F.layer_norm(t, (c,), blk.norm2.weight, blk.norm2.bias, 1e-6)
        h = F.linear(F.gelu(F.linear(h, blk.mlp.fc1.weight, blk.mlp.fc1.bias)), blk.mlp.fc2.weight, blk.mlp.fc2.bias)
        t = t + h
    return y[:, 0]


@pytest.mark.parametrize('attn_impl', ['fused', 'split', 'materialised'])
def test_deit_matches_reference_algorithm_k1000_and_k2(attn_impl):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = TLAVisionTransformer(dict(embed_dims=96, num_layers=4, num_heads=3), img_size=64,
                                 out_type='cls_token', attn_impl=attn_impl)
    model.init_weights()
    model.eval()
    b, num_classes = 4, 1000
    x = torch.randn(b, 3, 64, 64)
    share, lam = _random_mix(b, (4, 4), g)
    labels = torch.randint(0, num_classes, (b,), generator=g)
    y_a = smooth_one_hot(labels, num_classes, 0.1)
    y_b = y_a.flip(0)
    y0_k = initial_class_labels(share, lam, y_a, y_b)            # (B, 17, 1000)
    with torch.no_grad():
        ref = _reference_deit_targets(model, x, y0_k)
        _, lab_k = model(x, y0_k)
        _, lab_2 = model(x, initial_source_labels(share, lam))
    ours_k = lab_k[:, 0]
    ours_2 = expand_source_labels(lab_2[:, 0], y_a, y_b)
    assert (ours_k - ref).abs().max() <= TOL
    assert (ours_2 - ref).abs().max() <= TOL
    # The aligned target really moved away from the area target (the test is not vacuous).
    area = lam[:, None] * y_a + (1 - lam[:, None]) * y_b
    assert (ref - area).abs().max() > 1e-3
    assert torch.allclose(ref.sum(-1), torch.ones(b), atol=1e-5)


def test_features_unchanged_by_labels_and_no_grad_through_labels():
    torch.manual_seed(0)
    model = TLAVisionTransformer(dict(embed_dims=64, num_layers=2, num_heads=2), img_size=32,
                                 out_type='cls_token')
    model.init_weights()
    x = torch.randn(2, 3, 32, 32)
    y0 = initial_source_labels(torch.rand(2, 4), torch.tensor([0.3, 0.6]))
    (f1,) = model(x)
    (f2,), lab = model(x, y0)
    # the fused call uses a wider value tensor: same math, float rounding may differ
    assert torch.allclose(f1, f2, atol=1e-5)
    assert not lab.requires_grad and lab.dtype == torch.float32
    f2.sum().backward()  # gradients flow through features only


def _reference_swin_block(blk, x, hw, labels, ws, s):
    """Per-window loops: explicit partition (windows of ``ws``, cyclic shift ``s``, given here, not read
    from the block), bias, region mask and label step; the block's weights only."""
    h, w = hw
    b, _, c = x.shape
    nh = blk.attn.num_heads
    if h <= ws:  # single window, no shift (square maps in this test)
        ws, s = h, 0
    xn = F.layer_norm(x, (c,), blk.norm1.weight, blk.norm1.bias, 1e-5).view(b, h, w, c)
    lab = labels.view(b, h, w, -1)
    # region id of every (shifted) position, built from the original coordinates
    region = torch.zeros(h, w, dtype=torch.long)
    if s:
        rows = torch.arange(h)
        cols = torch.arange(w)
        rr = (rows >= h - ws).long() + (rows >= h - s).long()
        cc = (cols >= w - ws).long() + (cols >= w - s).long()
        region = rr[:, None] * 3 + cc[None, :]
    xs = torch.roll(xn, (-s, -s), (1, 2))
    ls = torch.roll(lab, (-s, -s), (1, 2))
    out = torch.zeros_like(xs)
    lout = torch.zeros_like(ls)
    table = blk.attn.relative_position_bias_table
    tw = blk.window_size
    for i in range(0, h, ws):
        for j in range(0, w, ws):
            tok = xs[:, i:i + ws, j:j + ws].reshape(b, ws * ws, c)
            ltok = ls[:, i:i + ws, j:j + ws].reshape(b, ws * ws, -1)
            reg = region[i:i + ws, j:j + ws].reshape(-1)
            coords = [(p // ws, p % ws) for p in range(ws * ws)]
            bias = torch.empty(nh, ws * ws, ws * ws)
            for p, (pi, pj) in enumerate(coords):
                for q_, (qi, qj) in enumerate(coords):
                    bias[:, p, q_] = table[(pi - qi + tw - 1) * (2 * tw - 1) + (pj - qj + tw - 1)]
            maskw = torch.where(reg[:, None] == reg[None, :], 0.0, -100.0)
            qkv = F.linear(tok, blk.attn.qkv.weight, blk.attn.qkv.bias)
            q, k, v = qkv.reshape(b, -1, 3, nh, c // nh).permute(2, 0, 3, 1, 4)
            attn = ((q @ k.transpose(-2, -1)) * (c // nh) ** -0.5 + bias + maskw).softmax(-1)
            a = (attn @ v).transpose(1, 2).reshape(b, -1, c)
            out[:, i:i + ws, j:j + ws] = F.linear(a, blk.attn.proj.weight, blk.attn.proj.bias).view(b, ws, ws, c)
            lout[:, i:i + ws, j:j + ws] = (attn.mean(1) @ ltok).view(b, ws, ws, -1)
    out = torch.roll(out, (s, s), (1, 2)).reshape(b, h * w, c)
    lout = torch.roll(lout, (s, s), (1, 2)).reshape(b, h * w, -1)
    x = x + out
    hn = F.layer_norm(x, (c,), blk.norm2.weight, blk.norm2.bias, 1e-5)
    x = x + F.linear(F.gelu(F.linear(hn, blk.mlp.fc1.weight, blk.mlp.fc1.bias)), blk.mlp.fc2.weight, blk.mlp.fc2.bias)
    return x, (labels + lout) / 2


@pytest.mark.parametrize('shift', [False, True])
@pytest.mark.parametrize('attn_impl', ['fused', 'split', 'materialised'])
def test_swin_block_matches_per_window_loop_reference(shift, attn_impl):
    torch.manual_seed(0)
    blk = TLASwinBlock(32, 2, window_size=4, shift=shift, attn_impl=attn_impl).eval()
    torch.nn.init.normal_(blk.attn.relative_position_bias_table, std=0.5)
    x = torch.randn(2, 8 * 8, 32)
    labels = torch.rand(2, 64, 5)
    labels = labels / labels.sum(-1, keepdim=True)
    with torch.no_grad():
        x_ref, l_ref = _reference_swin_block(blk, x, (8, 8), labels, 4, 2 if shift else 0)   # Swin: shift ws // 2
        x_out, l_out = blk(x, (8, 8), labels)
    assert (x_out - x_ref).abs().max() <= 1e-5
    assert (l_out - l_ref).abs().max() <= TOL
    assert torch.allclose(l_out.sum(-1), torch.ones(2, 64), atol=1e-5)


def test_swin_single_window_without_shift_is_the_vit_rule():
    torch.manual_seed(0)
    blk = TLASwinBlock(32, 4, window_size=7, shift=True).eval()  # 7x7 map -> one window, no shift
    attn = TLAAttention(32, 4, attn_impl='materialised').eval()
    attn.qkv.load_state_dict(blk.attn.qkv.state_dict())
    attn.proj.load_state_dict(blk.attn.proj.state_dict())
    x = torch.randn(3, 49, 32)
    labels = torch.softmax(torch.randn(3, 49, 2), -1)
    with torch.no_grad():
        _, l_swin = blk(x, (7, 7), labels)
        _, l_att = attn(blk.norm1(x), labels)
    assert torch.allclose(l_swin, (labels + l_att) / 2, atol=TOL)


def test_swin_label_mass_conserved_every_block_and_merge():
    torch.manual_seed(0)
    model = TLASwinTransformer(dict(embed_dims=32, depths=(2, 2, 2), num_heads=(2, 2, 4)), window_size=4,
                               out_indices=(2,), out_type='avg_featmap').eval()
    model.init_weights()
    sums = []
    for m in model.modules():
        if isinstance(m, TLASwinBlock):
            m.register_forward_hook(lambda mod, args, out: sums.append(out[1].sum(-1)))
    x = torch.randn(2, 3, 64, 64)
    y0 = initial_source_labels(torch.rand(2, 256).round(), torch.tensor([0.5, 0.5]), num_prefix_tokens=0)
    with torch.no_grad():
        _, lab = model(x, y0)
    assert len(sums) == 6
    for s in sums + [lab.sum(-1)]:
        assert torch.allclose(s, torch.ones_like(s), atol=1e-5)
    assert lab.shape == (2, 4 * 4, 2)


def test_merge_rule_sums_children_and_ignores_zero_mass_padding():
    lab = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]).view(1, 2, 2, 2)
    merged = merge_patch_labels(lab)
    assert torch.allclose(merged.view(2), torch.tensor([0.75, 0.25]))
    padded = torch.zeros(1, 2, 2, 2)
    padded[0, 0, 0] = torch.tensor([0.2, 0.8])   # three children are padding (zero mass)
    assert torch.allclose(merge_patch_labels(padded).view(2), torch.tensor([0.2, 0.8]))


def test_swin_k2_equals_k_classes():
    torch.manual_seed(0)
    model = TLASwinTransformer(dict(embed_dims=32, depths=(2, 2), num_heads=(2, 4)), window_size=4,
                               out_indices=(1,), out_type='avg_featmap').eval()
    model.init_weights()
    b, k = 2, 50
    share = torch.zeros(b, 16, 16)
    share[:, 3:11, 5:13] = 1
    share = share.flatten(1)
    lam = 1 - share.mean(1)
    y_a = smooth_one_hot(torch.tensor([3, 7]), k, 0.1)
    y_b = y_a.flip(0)
    x = torch.randn(b, 3, 64, 64)
    with torch.no_grad():
        _, l2 = model(x, initial_source_labels(share, lam, 0))
        _, lk = model(x, initial_class_labels(share, lam, y_a, y_b, 0))
    assert (expand_source_labels(l2.mean(1), y_a, y_b) - lk.mean(1)).abs().max() <= TOL


def test_fused_and_materialised_agree_on_features_and_labels():
    torch.manual_seed(0)
    kw = dict(arch=dict(embed_dims=32, depths=(2, 2), num_heads=(2, 4)), window_size=4, out_indices=(0, 1))
    a = TLASwinTransformer(attn_impl='fused', **kw).eval()
    a.init_weights()
    b = TLASwinTransformer(attn_impl='materialised', **kw).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 64, 64)
    y0 = torch.softmax(torch.randn(2, 256, 2), -1)
    with torch.no_grad():
        fa, la = a(x, y0)
        fb, lb = b(x, y0)
    for u, v in zip(fa, fb):
        assert (u - v).abs().max() < 1e-4
    assert (la - lb).abs().max() <= TOL


def test_labels_stay_float32_under_autocast_and_move_little():
    torch.manual_seed(0)
    model = TLAVisionTransformer(dict(embed_dims=64, num_layers=3, num_heads=2), img_size=32,
                                 out_type='cls_token').eval()
    model.init_weights()
    x = torch.randn(2, 3, 32, 32)
    y0 = initial_source_labels(torch.tensor([[1.0, 0, 0, 1], [0, 0, 1, 1]]), torch.tensor([0.5, 0.5]))
    with torch.no_grad():
        _, ref = model(x, y0)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            _, low = model(x, y0)
    assert low.dtype == torch.float32
    # q/k come from bf16 linears; the label path itself runs in float32
    assert (low - ref).abs().max() < 2e-2
