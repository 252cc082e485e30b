"""Backbone behaviour: timm parity (features), dense outputs, training switches, bad input."""
import re

import pytest
import timm
import torch

from tlalign_mm.align import initial_source_labels
from tlalign_mm.models.backbones.swin import TLASwinTransformer
from tlalign_mm.models.backbones.vit import TLAVisionTransformer


def _timm_swin_to_ours(sd):
    out = {}
    for k, v in sd.items():
        if k.startswith('head') or 'relative_position_index' in k or 'attn_mask' in k:
            continue
        m = re.match(r'layers\.(\d+)\.downsample\.(.*)', k)
        if m:
            k = f'layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}'
        if k.startswith('norm.'):
            k = 'norm3.' + k[5:]
        out[k] = v
    return out


@pytest.mark.parametrize('name,arch', [('deit_tiny_patch16_224', 'deit-tiny'),
                                       ('deit_small_patch16_224', 'deit-small')])
def test_vit_features_equal_timm(name, arch):
    torch.manual_seed(0)
    ref = timm.create_model(name, pretrained=False).eval()
    model = TLAVisionTransformer(arch, out_type='cls_token').eval()
    sd = {k: v for k, v in ref.state_dict().items() if not k.startswith('head')}
    model.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model(x)[0], ref.forward_features(x)[:, 0], atol=1e-5)


def test_swin_features_equal_timm():
    torch.manual_seed(0)
    ref = timm.create_model('swin_tiny_patch4_window7_224', pretrained=False).eval()
    model = TLASwinTransformer('tiny', out_indices=(3,), out_type='avg_featmap').eval()
    model.load_state_dict(_timm_swin_to_ours(ref.state_dict()), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        want = ref.forward_head(ref.forward_features(x), pre_logits=True)
        assert torch.allclose(model(x)[0], want, atol=1e-5)
        # carrying labels leaves the features as they are
        (got,), lab = model(x, torch.softmax(torch.randn(2, 56 * 56, 2), -1))
        assert torch.allclose(got, want, atol=1e-5)
        assert lab.shape == (2, 49, 2)


def test_param_counts_match_timm():
    for name, model in [('deit_small_patch16_224', TLAVisionTransformer('deit-small')),
                        ('swin_tiny_patch4_window7_224', TLASwinTransformer('tiny', out_indices=(3,)))]:
        ref = timm.create_model(name, pretrained=False)
        n_ref = sum(p.numel() for k, p in ref.named_parameters() if not k.startswith('head'))
        assert sum(p.numel() for p in model.parameters()) == n_ref


def test_vit_dense_outputs_pad_and_resize_pos_embed():
    model = TLAVisionTransformer('deit-tiny', out_indices=(2, 5, 8, 11)).eval()
    model.init_weights()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 250, 170))   # not multiples of 16 -> padded to 256x176
    assert [tuple(o.shape) for o in outs] == [(1, 192, 16, 11)] * 4
    assert all(o.is_contiguous() for o in outs)  # NCHW as mmseg's ViT returns (not a channels-last view)
    assert model.num_tokens((250, 170)) == 1 + 16 * 11


def test_swin_dense_outputs_strides():
    model = TLASwinTransformer('tiny').eval()
    model.init_weights()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 512, 512))
    assert [tuple(o.shape) for o in outs] == [(1, 96, 128, 128), (1, 192, 64, 64), (1, 384, 32, 32),
                                             (1, 768, 16, 16)]
    assert all(o.is_contiguous() for o in outs)  # NCHW as mmseg / mmdet Swin return


def test_with_cp_gives_same_gradients():
    torch.manual_seed(0)
    a = TLASwinTransformer(dict(embed_dims=16, depths=(2, 2), num_heads=(1, 2)), window_size=4,
                           out_indices=(1,), drop_path_rate=0.0)
    a.init_weights()
    b = TLASwinTransformer(dict(embed_dims=16, depths=(2, 2), num_heads=(1, 2)), window_size=4,
                           out_indices=(1,), drop_path_rate=0.0, with_cp=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    y0 = torch.softmax(torch.randn(2, 64, 2), -1)
    (fa,), la = a(x, y0)
    (fb,), lb = b(x, y0)
    fa.square().sum().backward()
    fb.square().sum().backward()
    assert torch.allclose(la, lb)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), n


def test_frozen_stages():
    vit = TLAVisionTransformer('deit-tiny', frozen_stages=2)
    vit.train()
    assert not vit.patch_embed.proj.weight.requires_grad and not vit.pos_embed.requires_grad
    assert not any(p.requires_grad for p in vit.blocks[1].parameters())
    assert all(p.requires_grad for p in vit.blocks[2].parameters())
    swin = TLASwinTransformer('tiny', frozen_stages=1)
    swin.train()
    assert not any(p.requires_grad for p in swin.layers[0].parameters())
    assert not swin.norm0.weight.requires_grad
    assert all(p.requires_grad for p in swin.layers[1].parameters())
    assert not swin.layers[0].training and swin.layers[1].training


def test_drop_path_is_active_in_train_only():
    torch.manual_seed(0)
    m = TLAVisionTransformer(dict(embed_dims=32, num_layers=2, num_heads=2), img_size=32,
                             drop_path_rate=0.9, out_type='cls_token')
    m.init_weights()
    x = torch.randn(4, 3, 32, 32)
    m.train()
    a, b = m(x)[0], m(x)[0]
    assert not torch.allclose(a, b)
    m.eval()
    assert torch.equal(m(x)[0], m(x)[0])


def test_bad_input_errors():
    with pytest.raises(ValueError, match='unknown arch'):
        TLAVisionTransformer('deit-huge')
    with pytest.raises(ValueError, match='unknown arch'):
        TLASwinTransformer('giant')
    with pytest.raises(ValueError, match='out_type'):
        TLAVisionTransformer('deit-tiny', out_type='pooled')
    m = TLAVisionTransformer(dict(embed_dims=32, num_layers=1, num_heads=2), img_size=32)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r'token_labels must have shape \(B=2, N=5'):
        m(x, torch.rand(2, 4, 2))
    with pytest.raises(TypeError, match='floating-point'):
        m(x, torch.ones(2, 5, 2, dtype=torch.long))
    s = TLASwinTransformer(dict(embed_dims=16, depths=(2,), num_heads=(1,)), window_size=7, out_indices=(0,))
    with pytest.raises(ValueError, match='window_size'):
        s(torch.randn(1, 3, 40, 40), initial_source_labels(torch.zeros(1, 100), 1.0, 0))


@pytest.mark.parametrize('family', ['vit', 'swin', 'pvt'])
def test_out_indices_come_back_in_depth_order_once_and_feature_info_says_so(family):
    """``out_indices`` in any order, with repeats and negative ones, returns each index once in depth
    order, as mmseg's / mmdet's backbones do, and ``feature_info`` lists exactly what ``forward``
    returns; none, or one out of range, is a ValueError naming it."""
    from tlalign_mm.models import TLAPyramidVisionTransformer
    build = {
        'vit': lambda oi: TLAVisionTransformer(dict(embed_dims=32, num_layers=3, num_heads=2), img_size=32,
                                               patch_size=8, out_indices=oi),
        'swin': lambda oi: TLASwinTransformer(dict(embed_dims=16, depths=(2, 2), num_heads=(1, 2)), window_size=4,
                                              out_indices=oi),
        'pvt': lambda oi: TLAPyramidVisionTransformer(
            dict(version=2, embed_dims=(8, 16, 24, 32), num_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1),
                 sr_ratios=(8, 4, 2, 1), mlp_ratios=(2, 2, 2, 2)), img_size=32, out_indices=oi)}[family]
    n = {'vit': 3, 'swin': 2, 'pvt': 4}[family]
    m = build([n - 1, 0, -1, 0]).eval()
    assert list(m.out_indices) == [0, n - 1]
    with torch.no_grad():
        outs = m(torch.randn(1, 3, 32, 32))
    assert len(outs) == len(m.feature_info) == 2
    assert [o.shape[1] for o in outs] == [f.num_chs for f in m.feature_info]
    assert [32 // o.shape[-1] for o in outs] == [f.reduction for f in m.feature_info]
    with pytest.raises(ValueError, match='out_indices is empty'):
        build([])
    with pytest.raises(ValueError, match=rf'out_indices {n} is out of range for {n} '):
        build([0, n])
