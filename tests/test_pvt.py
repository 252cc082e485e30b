"""The label-carrying PVT (tlalign_mm/models/backbones/pvt.py).

* the spatial-reduction label rule against a per-token reference written with explicit loops,
  with sharpened (trained-like) attention;
* label mass conserved through every block and stage, v1 and v2 (overlapping patch embeddings);
* the official (whai362/PVT) and mmdet layouts load through the strict loader; without labels the
  features equal mmdet's ``PyramidVisionTransformer(V2)``;
* bad input: a stage map the reduction ratio does not divide names the stage and the sizes;
* the classifier trains on a PVT with every label rule that reads attention;
* v2's first stage: token shares pooled from the pixel mask over the 7x7 stride-4 padding-3 window,
  against a per-pixel loop, and end to end on a v2-b0;
* v1 as released: the stage-4 class token, its label row, and a release checkpoint (random weights
  in the official key layout) giving the logits of a forward written here from the release's
  conventions (whai362/PVT ``classification/pvt.py``);
* the head loader refuses a head trained on another readout; a class-token model refuses a
  checkpoint without ``cls_token``;
* checkpoints in the flat names (``block{i}.{j}``: the release's, and ours before the per-stage
  modules) load strictly, through ``init_cfg``, mmengine's ``load_checkpoint`` and the classifier's
  loader, and give the outputs of the model that saved them.
"""
import os
import re
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tlalign_mm  # noqa: E402,F401
from tlalign_mm.align import read_labels  # noqa: E402
from tlalign_mm.analysis import aligned_targets  # noqa: E402
from tlalign_mm.checkpoint import detect_layout, load_backbone_checkpoint  # noqa: E402
from tlalign_mm.checkpoint.layouts import load_head_state  # noqa: E402
from tlalign_mm.models import TLAPyramidVisionTransformer  # noqa: E402
from tlalign_mm.registry import MODELS  # noqa: E402

ARCH = dict(embed_dims=(16, 32, 32, 64), depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4))


def _sharpen(blocks, factor=12.0):
    """Scale queries and keys: trained-like peaked attention instead of near-uniform rows."""
    with torch.no_grad():
        for blk in blocks:
            blk.attn.q.weight.mul_(factor)
            blk.attn.kv.weight[:blk.attn.kv.weight.shape[0] // 2].mul_(factor)


def _pvt(version=1, seed=0, **kw):
    torch.manual_seed(seed)
    if version == 'cls':                        # v1 with the release's stage-4 class token
        version, kw = 1, dict(kw, out_indices=(3,), out_type='cls_token')
    m = TLAPyramidVisionTransformer(dict(ARCH, version=version), img_size=64, drop_path_rate=0.0, **kw)
    m.init_weights()
    _sharpen(m.label_blocks())
    return m.eval()


def _unit_labels(b, n, k=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(b, n, k, generator=g) ** 3
    return y / y.sum(-1, keepdim=True)


def _flat_name(key):
    """Our key -> its flat name (the release's, and this backbone's own before its stages), written
    here independently of the code under test: ``stages.{i}.patch_embed`` / ``pos_embed`` /
    ``blocks`` / ``norm`` -> ``patch_embed{i+1}`` / ``pos_embed{i+1}`` / ``block{i+1}`` /
    ``norm{i+1}``; ``cls_token`` and the final ``norm`` as they are."""
    m = re.fullmatch(r'stages\.(\d+)\.(patch_embed|pos_embed|blocks|norm)(\..*)?', key)
    if m is None:
        return key
    flat = {'patch_embed': 'patch_embed', 'pos_embed': 'pos_embed', 'blocks': 'block', 'norm': 'norm'}[m.group(2)]
    return f'{flat}{int(m.group(1)) + 1}{m.group(3) or ""}'


def test_sra_label_rule_matches_per_token_loops():
    """One block: query i's label is sum_m mean_h A[h, i, m] * Y_m, where key m reduces an
    sr x sr cell and carries the mean label of its tokens; then (Y + A Y) / 2."""
    m = _pvt()
    blk = m.stages[0].blocks[0]
    attn = blk.attn
    b, hw, sr = 2, (16, 16), attn.sr_ratio
    x = torch.randn(b, hw[0] * hw[1], 16)
    y = _unit_labels(b, hw[0] * hw[1])
    with torch.no_grad():
        _, got = blk(x, hw, y, 1)
        h = blk.norm1(x)
        q = attn.q(h).reshape(b, -1, attn.num_heads, attn.head_dim).transpose(1, 2)
        xr = attn.norm(attn.sr(h.transpose(1, 2).reshape(b, 16, *hw)).flatten(2).transpose(1, 2))
        k = attn.kv(xr)[..., :16].reshape(b, -1, attn.num_heads, attn.head_dim).transpose(1, 2)
        a = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(-1).mean(1)            # (B, N, M)
    assert a.max() > 0.5                                                             # peaked rows
    gh, gw = hw[0] // sr, hw[1] // sr
    want = torch.zeros_like(y)
    for bi in range(b):
        key_label = []
        for r in range(gh):
            for c in range(gw):
                cell = [y[bi, (r * sr + dr) * hw[1] + c * sr + dc] for dr in range(sr) for dc in range(sr)]
                key_label.append(sum(cell) / len(cell))
        for i in range(hw[0] * hw[1]):
            moved = sum(a[bi, i, mi] * key_label[mi] for mi in range(gh * gw))
            want[bi, i] = (y[bi, i] + moved) / 2
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize('version', [1, 2, 'cls'])
def test_label_mass_is_conserved_through_every_block_and_stage(version):
    m = _pvt(version)
    x = torch.randn(2, 3, 64, 64)
    y = _unit_labels(2, m.num_tokens((64, 64)))
    seen = []
    hooks = [blk.register_forward_hook(lambda mod, args, out: seen.append(out[1])) for blk in m.label_blocks()]
    with torch.no_grad():
        outs, lab = m(x, y)
    for h in hooks:
        h.remove()
    assert len(seen) == sum(ARCH['depths']) and lab.shape == (2, 4 + m.num_prefix_tokens, 2)
    for s in seen:
        torch.testing.assert_close(s.sum(-1), torch.ones_like(s[..., 0]), atol=1e-5, rtol=0)
    # labels change (stage 1's second block moves what its first one gave it) but stay in [0, 1]
    assert seen[1].shape == seen[2].shape and (seen[2] - seen[1]).abs().max() > 1e-2
    assert (lab >= -1e-6).all() and (lab <= 1 + 1e-6).all()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(outs, m(x)))       # labels never touch features


def test_overlapping_patch_embedding_pools_labels_by_area():
    """v2's stage-2 embedding (kernel 3, stride 2, padding 1): each new token's label is the mean
    of the real tokens under its 3x3 window (corner windows hold 4, edge windows 6)."""
    from tlalign_mm.align import pool_token_labels
    y = _unit_labels(1, 16)                                   # a 4 x 4 map
    got, hw = pool_token_labels(y, (4, 4), 3, 2, 1)
    assert hw == (2, 2)
    grid = y[0].view(4, 4, 2)
    torch.testing.assert_close(got[0, 0], grid[0:2, 0:2].reshape(-1, 2).mean(0))        # corner: 2x2 real
    torch.testing.assert_close(got[0, 1], grid[0:2, 1:4].reshape(-1, 2).mean(0))        # edge: 2x3 real
    torch.testing.assert_close(got[0, 3], grid[1:4, 1:4].reshape(-1, 2).mean(0))        # inside: 3x3


def test_bad_stage_size_names_the_stage_and_sizes():
    m = _pvt()
    x = torch.randn(1, 3, 72, 72)                              # stage 1: 18 x 18, not divisible by 8
    y = _unit_labels(1, m.num_tokens((72, 72)))
    with pytest.raises(ValueError, match=r'stage 1: the 18x18 token map is not divisible by the spatial-reduction '
                                         r'ratio sr_ratio=8'):
        m(x, y)
    m(x)                                                       # features alone: mmdet's behaviour (no error)


def test_bad_arch_names_what_to_fix():
    """A fifth stage (PVT has strides 4, 2, 2, 2) or a version that is not 1 or 2 is a ValueError naming the
    arch, not an IndexError or int()'s message."""
    five = {k: v + v[-1:] for k, v in ARCH.items()} | dict(sr_ratios=(8, 4, 2, 1, 1), mlp_ratios=(8, 8, 4, 4, 4))
    with pytest.raises(ValueError, match=r'one entry per stage, 1 to 4 stages \(strides 4, 2, 2, 2\)'):
        TLAPyramidVisionTransformer(five, img_size=64)
    for version in ('two', 3):
        with pytest.raises(ValueError, match=rf"PVT arch version must be 1 or 2, got {version!r}"):
            TLAPyramidVisionTransformer(dict(ARCH, version=version), img_size=64)


def test_official_layout_loads_and_drops_the_class_token():
    src = _pvt(seed=3)
    sd = {_flat_name(k): v.clone() for k, v in src.state_dict().items()}
    sd['cls_token'] = torch.zeros(1, 1, 64)
    sd['pos_embed4'] = torch.cat([torch.zeros(1, 1, 64), sd['pos_embed4']], dim=1)     # 1 + 2 x 2 rows
    sd['head.weight'], sd['head.bias'] = torch.zeros(1000, 64), torch.zeros(1000)
    assert detect_layout(sd) == 'official-pvt'
    dst = _pvt(seed=4)
    report = load_backbone_checkpoint(dst, {'model': sd})
    assert report.layout == 'official-pvt' and report.num_matched_params == report.num_params
    assert sorted(report.ignored) == ['cls_token', 'head.bias', 'head.weight']
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


@pytest.mark.mm
@pytest.mark.parametrize('version', [1, 2])
def test_features_equal_mmdet_pvt_and_its_layout_loads(version):
    from mmdet.models.backbones.pvt import PyramidVisionTransformer, PyramidVisionTransformerV2
    torch.manual_seed(0)
    cls = PyramidVisionTransformerV2 if version == 2 else PyramidVisionTransformer
    mm = cls(embed_dims=16, num_layers=list(ARCH['depths']), num_heads=list(ARCH['num_heads']),
             pretrain_img_size=64, drop_path_rate=0.0)
    mm.init_weights()
    for p in mm.parameters():
        p.data.normal_(0, 0.2)
    mm.eval()
    ours = TLAPyramidVisionTransformer(dict(ARCH, version=version), img_size=64, drop_path_rate=0.0).eval()
    report = load_backbone_checkpoint(ours, {'state_dict': mm.state_dict()})
    assert report.layout == 'mm-pvt' and not report.unexpected
    # v1's final norm is ours only (mmdet drops the classifier's norm)
    assert report.missing == ([] if version == 2 else ['norm.weight', 'norm.bias'])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(mm(x), ours(x)):
            # LayerNorm eps: patch embedding and reduction norms 1e-5 (the release) vs mmdet's 1e-6
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


@pytest.mark.mm
def test_pvt_builds_in_mmdet_and_mmseg_configs():
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG
    cfg = dict(type='tlalign_mm.TLAPyramidVisionTransformer', arch='v2-b0', out_indices=(0, 1, 2, 3))
    for registry in (DET, SEG):
        m = registry.build(cfg)
        assert isinstance(m, TLAPyramidVisionTransformer)
    with torch.no_grad():
        outs = m(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [32, 64, 160, 256]


def _classifier(version=2, rule='TLAlign', num_classes=5, arch=None, img_size=64, **kw):
    """A TLAImageClassifier on a small PVT: v2 / v1 token mean ('avg_featmap'), or 'cls' (v1 with
    the release's class token)."""
    out_type = 'cls_token' if version == 'cls' else 'avg_featmap'
    v = 1 if version == 'cls' else version
    return MODELS.build(dict(
        type='TLAImageClassifier', head=dict(type='TLALinearClsHead', num_classes=num_classes),
        label_rule=dict(type=rule),
        backbone=dict(type='TLAPyramidVisionTransformer', arch=arch or dict(ARCH, version=v), img_size=img_size,
                      out_indices=(3,), out_type=out_type, drop_path_rate=0.0),
        data_preprocessor=dict(type='TLAClsDataPreprocessor', seed=0,
                               mixer=dict(cutmix_alpha=1.0, patch_size=4, token_grid_size=32)), **kw))


@pytest.mark.parametrize('version,rule', [(2, 'TLAlign'), (2, 'TransMix'), (2, 'Area'), ('cls', 'TLAlign'),
                                          ('cls', 'TransMix'), ('cls', 'DenseTLAlign')])
def test_classifier_trains_on_pvt(version, rule):
    torch.manual_seed(0)
    model = _classifier(version, rule)
    model.init_weights()
    from tlalign_mm.structures import ClsDataSample
    batch = dict(inputs=torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8),
                 data_samples=[ClsDataSample().set_gt_label(i) for i in range(4)])
    data = model.data_preprocessor(batch, training=True)
    out = model(**data, mode='loss')
    out['loss'].backward()
    assert torch.isfinite(out['loss']) and model.backbone.stages[0].blocks[0].attn.q.weight.grad is not None
    assert model.label_rule.readout == ('cls' if version == 'cls' else 'mean')
    if version == 'cls':
        assert model.backbone.cls_token.grad is not None
    if rule != 'Area':
        assert 'align/lam_aligned' in out


# -- v2's first stage: the pixel mask pooled over the 7x7 stride-4 padding-3 window ------------
def _box_masks(h, w):
    """(2, H, W) structured, non-uniform pixel shares of image B: CutMix boxes whose edges are not
    on the 4-px grid, one clipped at the border, and a Mixup-like fractional region."""
    mask = torch.zeros(2, h, w)
    mask[0, 3:22, 5:27] = 1.0
    mask[0, 40:h, 33:50] = 0.35
    mask[1, 0:17, w - 23:w] = 1.0
    mask[1, 29:58, 2:13] = 0.8
    return mask


def _window_share_loop(mask, kernel=7, stride=4, padding=3):
    """Per-pixel reference: token (i, j) averages the mask over the pixels of rows
    [s*i - p, s*i - p + k) and columns [s*j - p, s*j - p + k) that lie inside the image."""
    b, h, w = mask.shape
    gh, gw = (h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1
    rows = mask.tolist()
    out = torch.zeros(b, gh * gw)
    for bi in range(b):
        for i in range(gh):
            for j in range(gw):
                total, count = 0.0, 0
                for r in range(stride * i - padding, stride * i - padding + kernel):
                    for c in range(stride * j - padding, stride * j - padding + kernel):
                        if 0 <= r < h and 0 <= c < w:
                            total += rows[bi][r][c]
                            count += 1
                out[bi, i * gw + j] = total / count
    return out


def test_v2_first_stage_share_pools_the_pixel_mask_like_a_per_pixel_loop():
    from tlalign_mm.align import token_share_from_mask
    v2, v1 = _pvt(2), _pvt(1)
    mask = _box_masks(64, 60)
    got = v2.token_share(mask)
    assert got.shape == (2, v2.num_tokens((64, 60))) and got.dtype == torch.float32
    torch.testing.assert_close(got, _window_share_loop(mask), atol=1e-6, rtol=0)
    assert (got - token_share_from_mask(mask, 4)).abs().max() > 0.1        # not the 4x4 cells
    # v1's first embedding is its 4 x 4 patch: the mixer's own share
    torch.testing.assert_close(v1.token_share(mask), token_share_from_mask(mask, 4), atol=1e-6, rtol=0)
    assert v2.share_from_mask and not v1.share_from_mask
    with pytest.raises(ValueError, match=r'mask must be a \(B, H, W\) floating-point'):
        v2.token_share(mask[0])


def test_v2_b0_aligned_share_moves_with_the_first_stage_window():
    """End to end on PVTv2-B0 at 224 px, a pixel CutMix box off the 4-px grid: the classifier
    (loss and aligned_targets) starts the labels from the 7x7-window shares, and the aligned
    share of image A moves from the old 4x4-cell result by ~1e-3."""
    from tlalign_mm.align import partner_index, token_share_from_mask
    from tlalign_mm.structures import ClsDataSample, MixResult
    torch.manual_seed(0)
    model = _classifier(2, 'TLAlign', num_classes=10, arch='v2-b0', img_size=224)
    model.init_weights()
    model.eval()
    _sharpen(model.backbone.label_blocks(), 4.0)
    b, h = 2, 224
    imgs = torch.randn(b, 3, h, h)
    mask = torch.zeros(b, h, h)
    mask[:, 10:113, 10:113] = 1.0
    mixed = torch.where(mask.bool()[:, None], imgs.flip(0), imgs)
    mix = MixResult(images=mixed, share_b=token_share_from_mask(mask, 4), lam=1.0 - mask.mean((1, 2)),
                    partner=partner_index(b), mode='cutmix', mask=mask, patch_size=4, token_grid=(56, 56),
                    source_images=imgs)
    with torch.no_grad():
        _, old = model.backbone(mixed, mix.source_labels(0))                   # the 4x4 cells
        _, new = model.backbone(mixed, initial := model.backbone.first_stage_mix(mix).source_labels(0))
        _, _, _, stats = aligned_targets(model, mixed, torch.tensor([0, 1]), mix)
        loss = model(mixed, [ClsDataSample().set_gt_label(i) for i in range(b)], mode='loss', mix=mix)
    torch.testing.assert_close(initial[..., 1], model.backbone.token_share(mask))
    lam_old, lam_new = old[..., 0].mean(1), new[..., 0].mean(1)
    torch.testing.assert_close(stats['align/lam_aligned'], lam_new.mean())
    torch.testing.assert_close(loss['align/lam_aligned'], lam_new.mean())
    moved = (lam_new - lam_old).abs()
    assert ((moved > 3e-4) & (moved < 5e-3)).all(), moved
    mix.mask = None
    with pytest.raises(ValueError, match='build the mixer with return_mask=True'):
        model.backbone.first_stage_mix(mix)


# -- v1 as released: the stage-4 class token ---------------------------------------------------
V1_SR, V1_MLP = (8, 4, 2, 1), (8, 8, 4, 4)


def _release_v1_state(img=64, num_classes=7, seed=5, with_head=True):
    """Random weights in the release's key layout (classification/pvt.py ``PyramidVisionTransformer``
    at ``patch_size=4``): ``pos_embed4`` has the class token's row first, ``cls_token``, ``head``."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, mean=0.0, std=0.1):
        return torch.randn(*shape, generator=g) * std + mean

    sd, in_ch, stride = {}, 3, 1
    for i, (c, depth) in enumerate(zip(ARCH['embed_dims'], ARCH['depths'])):
        k = 4 if i == 0 else 2
        stride *= k
        hidden = c * V1_MLP[i]
        sd[f'patch_embed{i + 1}.proj.weight'], sd[f'patch_embed{i + 1}.proj.bias'] = rand(c, in_ch, k, k), rand(c)
        sd[f'patch_embed{i + 1}.norm.weight'], sd[f'patch_embed{i + 1}.norm.bias'] = rand(c, mean=1.0), rand(c)
        sd[f'pos_embed{i + 1}'] = rand(1, (img // stride) ** 2 + (i == 3), c)
        for j in range(depth):
            pre = f'block{i + 1}.{j}.'
            shapes = {'norm1': None, 'norm2': None, 'attn.q': (c, c), 'attn.kv': (2 * c, c), 'attn.proj': (c, c),
                      'mlp.fc1': (hidden, c), 'mlp.fc2': (c, hidden)}
            if V1_SR[i] > 1:
                shapes.update({'attn.sr': (c, c, V1_SR[i], V1_SR[i]), 'attn.norm': None})
            for name, shape in shapes.items():
                sd[pre + name + '.weight'] = rand(c, mean=1.0) if shape is None else rand(*shape, std=0.3)
                sd[pre + name + '.bias'] = rand(shape[0] if shape else c)
        in_ch = c
    c = ARCH['embed_dims'][-1]
    sd['norm.weight'], sd['norm.bias'] = rand(c, mean=1.0), rand(c)
    sd['cls_token'] = rand(1, 1, c)
    if with_head:
        sd['head.weight'], sd['head.bias'] = rand(num_classes, c), rand(num_classes)
    return sd


def _release_v1_forward(sd, x, with_cls=True):
    """The release's forward, restated from its conventions: stride-4/2 patch embeddings with a
    LayerNorm (eps 1e-5), position embeddings added, blocks ``x + SRA(LN(x))``, ``x + MLP(LN(x))``
    (eps 1e-6; the reduction's LayerNorm eps 1e-5; GELU), the class token prepended in stage 4
    with pos_embed4's row 0, the final norm (eps 1e-6) and the head on the class token.

    Returns (logits (B, K) or None, the four stage maps (B, C_i, H_i, W_i) without the class
    token).  ``with_cls=False``: mmdet's dense model (no class token, pos_embed4 without row 0)."""
    b = x.shape[0]
    maps = []
    for i, (c, depth, heads) in enumerate(zip(ARCH['embed_dims'], ARCH['depths'], ARCH['num_heads'])):
        pe = f'patch_embed{i + 1}.'
        x = F.conv2d(x, sd[pe + 'proj.weight'], sd[pe + 'proj.bias'], stride=4 if i == 0 else 2)
        h, w = x.shape[-2:]
        x = F.layer_norm(x.flatten(2).transpose(1, 2), (c,), sd[pe + 'norm.weight'], sd[pe + 'norm.bias'], 1e-5)
        pos = sd[f'pos_embed{i + 1}']
        if i == 3 and with_cls:
            x = torch.cat([sd['cls_token'].expand(b, -1, -1), x], dim=1)
        elif i == 3:
            pos = pos[:, 1:]
        x = x + pos
        for j in range(depth):
            def p(name, pre=f'block{i + 1}.{j}.'):
                return sd[pre + name + '.weight'], sd[pre + name + '.bias']
            n = x.shape[1]
            y = F.layer_norm(x, (c,), *p('norm1'), 1e-6)
            q = F.linear(y, *p('attn.q')).reshape(b, n, heads, c // heads).transpose(1, 2)
            kv_in = y
            if V1_SR[i] > 1:
                kv_in = F.conv2d(y.transpose(1, 2).reshape(b, c, h, w), *p('attn.sr'), stride=V1_SR[i])
                kv_in = F.layer_norm(kv_in.flatten(2).transpose(1, 2), (c,), *p('attn.norm'), 1e-5)
            kv = F.linear(kv_in, *p('attn.kv')).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
            attn = (q @ kv[0].transpose(-2, -1) * (c // heads) ** -0.5).softmax(-1)
            x = x + F.linear((attn @ kv[1]).transpose(1, 2).reshape(b, n, c), *p('attn.proj'))
            y = F.gelu(F.linear(F.layer_norm(x, (c,), *p('norm2'), 1e-6), *p('mlp.fc1')))
            x = x + F.linear(y, *p('mlp.fc2'))
        maps.append(x[:, x.shape[1] - h * w:].transpose(1, 2).reshape(b, c, h, w))
        if i < 3:
            x = maps[-1]
    if not with_cls:
        return None, maps
    cls = F.layer_norm(x, (x.shape[-1],), sd['norm.weight'], sd['norm.bias'], 1e-6)[:, 0]
    return F.linear(cls, sd['head.weight'], sd['head.bias']), maps


def test_release_v1_checkpoint_gives_the_release_logits(tmp_path):
    """An official v1 checkpoint ({'model': ...} with cls_token, pos_embed4 with the class row,
    head) loads into the class-token classifier, head included, and gives the release's logits;
    the dense backbone (mmdet's model) loads it without the class token and gives its maps."""
    sd = _release_v1_state()
    path = tmp_path / 'pvt_tiny_release.pth'
    torch.save({'model': sd}, path)
    model = _classifier('cls', num_classes=7, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    model.eval()
    assert model.backbone.stages[3].pos_embed.shape == (1, 1 + 2 * 2, 64) and model.label_rule.readout == 'cls'
    torch.testing.assert_close(model.head.fc.weight, sd['head.weight'], atol=0, rtol=0)
    x = torch.randn(2, 3, 64, 64)
    want, _ = _release_v1_forward(sd, x)
    with torch.no_grad():
        got = model(x, mode='tensor')
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    # another input size: the grid rows of every pos_embed are resized, the class row kept
    x96 = torch.randn(1, 3, 96, 96)
    sd96 = dict(sd)
    for i, side in enumerate((24, 12, 6, 3)):                 # the release's _get_pos_embed
        pos, g = sd[f'pos_embed{i + 1}'], 16 // 2 ** i          # stored for 64 px: 16, 8, 4, 2
        grid = pos[:, -g * g:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(side, side), mode='bilinear').flatten(2).transpose(1, 2)
        sd96[f'pos_embed{i + 1}'] = torch.cat([pos[:, :-g * g], grid], dim=1)    # class row (stage 4) first
    with torch.no_grad():
        torch.testing.assert_close(model(x96, mode='tensor'), _release_v1_forward(sd96, x96)[0], atol=1e-4, rtol=0)
    # dense use: no class token (as mmdet's PyramidVisionTransformer); the stage maps are mmdet's
    dense = TLAPyramidVisionTransformer(dict(ARCH, version=1), img_size=64, drop_path_rate=0.0).eval()
    report = load_backbone_checkpoint(dense, str(path))
    assert dense.cls_token is None and 'cls_token' in report.ignored and not report.missing
    with torch.no_grad():
        for got_map, want_map in zip(dense(x), _release_v1_forward(sd, x, with_cls=False)[1]):
            torch.testing.assert_close(got_map, want_map, atol=1e-4, rtol=0)


def test_class_token_label_row_enters_at_stage_4():
    """The class token's label: row 0 of token_labels, held until the class token joins the
    tokens in stage 4; the classifier gives it [lam, 1 - lam] (DeiT's prefix convention) and
    reads the target from it."""
    m = _pvt('cls')
    n = m.num_tokens((64, 64))
    assert m.num_prefix_tokens == 1 and n == 1 + 16 * 16
    y = _unit_labels(2, n)
    seen = {}
    hook = m.stages[3].blocks[0].register_forward_pre_hook(lambda mod, args: seen.update(labels=args[2]))
    with torch.no_grad():
        (feat,), lab = m(torch.randn(2, 3, 64, 64), y)
    hook.remove()
    assert feat.shape == (2, 64) and lab.shape == (2, 1 + 4, 2)
    torch.testing.assert_close(seen['labels'][:, 0], y[:, 0], atol=0, rtol=0)
    assert not torch.allclose(lab[:, 0], y[:, 0])                   # stage 4's attention moved it
    # the classifier: prefix row [lam, 1 - lam], target read at row 0
    from tlalign_mm.structures import ClsDataSample
    model = _classifier('cls')
    model.init_weights()
    batch = dict(inputs=torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8),
                 data_samples=[ClsDataSample().set_gt_label(i) for i in range(4)])
    data = model.data_preprocessor(batch, training=True)
    r0 = model.backbone.first_stage_mix(data['mix']).source_labels(model.num_prefix_tokens)
    torch.testing.assert_close(r0[:, 0], torch.stack([data['mix'].lam, 1 - data['mix'].lam], -1))
    with torch.no_grad():
        _, lab = model.backbone(data['inputs'], r0)
        torch.testing.assert_close(read_labels(lab, model.label_rule.readout, model.num_prefix_tokens), lab[:, 0])


def test_class_token_options_are_checked():
    with pytest.raises(ValueError, match="PVT v2 has no class token.*out_type='avg_featmap'"):
        TLAPyramidVisionTransformer(dict(ARCH, version=2), img_size=64, out_indices=(3,), out_type='cls_token')
    with pytest.raises(ValueError, match=r'set out_indices=\(3,\), got \(2, 3\)'):
        TLAPyramidVisionTransformer(dict(ARCH, version=1), img_size=64, out_indices=(2, 3), out_type='cls_token')
    with pytest.raises(ValueError, match='sr_ratios\\[-1\\] must be 1'):
        TLAPyramidVisionTransformer(dict(ARCH, version=1, sr_ratios=(8, 4, 2, 2)), img_size=64, out_indices=(3,),
                                    out_type='cls_token')
    m = _pvt('cls')
    with pytest.raises(ValueError, match=r'token_labels must have shape \(B=1, N=257, K\)'):
        m(torch.randn(1, 3, 64, 64), _unit_labels(1, 256))                 # the class token's row is missing


# -- the head loader never puts a head onto a feature it was not trained on ---------------------
def test_release_head_is_refused_by_a_token_mean_classifier(tmp_path):
    path = tmp_path / 'release.pth'
    sd = _release_v1_state()
    torch.save({'model': sd}, path)
    model = _classifier(1, num_classes=7, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(ValueError, match=r"head was trained on the class token \(the checkpoint has 'cls_token'\) but "
                                         r"this model's pooled feature is the token mean \(backbone "
                                         r"out_type='avg_featmap'\)"):
        model.init_weights()
    for ours, name in (('stages.0.patch_embed.proj.weight', 'patch_embed1.proj.weight'),       # refused before
                       ('stages.3.blocks.0.attn.q.weight', 'block4.0.attn.q.weight')):         # loading
        assert not torch.equal(model.backbone.state_dict()[ours], sd[name]), name
    # a head of another class count is not loaded, so nothing is refused
    other = _classifier(1, num_classes=5)
    assert load_head_state(other, _release_v1_state()) == 'the head is newly initialised (its shape differs)'


def test_checkpoint_without_cls_token_is_refused_by_a_class_token_model(tmp_path):
    sd = _release_v1_state()
    del sd['cls_token']
    sd['pos_embed4'] = sd['pos_embed4'][:, 1:]
    # with a head: it was trained on the token mean
    torch.save({'model': sd}, tmp_path / 'mean.pth')
    model = _classifier('cls', num_classes=7, init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'mean.pth')))
    with pytest.raises(ValueError, match=r"trained on the token mean \(the checkpoint has no 'cls_token'\) but this "
                                         r"model's pooled feature is the class token"):
        model.init_weights()
    # without a head (a dense export, mmdet's layout): the backbone loader names the missing key
    backbone_only = {k: v for k, v in sd.items() if not k.startswith('head.')}
    with pytest.raises(ValueError, match=r"missing key 'cls_token'.*out_type='cls_token'"):
        load_backbone_checkpoint(_pvt('cls'), {'state_dict': backbone_only})
    # the dense and token-mean models take it as it is
    report = load_backbone_checkpoint(_pvt(1), {'state_dict': backbone_only})
    assert not report.missing and report.num_matched_params == report.num_params


# -- checkpoints in the flat names: ours before the stages (stages.{i}.blocks.{j} was block{i+1}.{j}) --
@pytest.mark.parametrize('version', [1, 2, 'cls'])
def test_flat_state_dict_loads_strictly_and_gives_the_same_outputs(version, tmp_path):
    """A state dict in the flat names loads with ``load_state_dict(strict=True)``, as a backbone's
    ``init_cfg=dict(type='Pretrained')`` and through mmengine's ``load_checkpoint`` under a
    ``backbone.`` prefix (a detector's ``load_from``), and every tensor and output (features and
    labels) is the saving model's."""
    from mmengine.runner.checkpoint import load_checkpoint
    src = _pvt(version, seed=3)
    flat = {_flat_name(k): v.clone() for k, v in src.state_dict().items()}
    assert not any(k.startswith('stages.') for k in flat) and 'block2.1.attn.q.weight' in flat
    assert ('pos_embed4' in flat) == (version != 2) and ('norm4.weight' in flat) == (version == 2)
    x = torch.randn(2, 3, 64, 64)
    y = _unit_labels(2, src.num_tokens((64, 64)))
    with torch.no_grad():
        want, want_labels = src(x, y)

    def same_as_src(m):
        for k, v in src.state_dict().items():
            assert torch.equal(m.state_dict()[k], v), k
        with torch.no_grad():
            got, got_labels = m.eval()(x, y)
        assert all(torch.equal(a, b) for a, b in zip(got, want)) and torch.equal(got_labels, want_labels)

    dst = _pvt(version, seed=4)
    dst.load_state_dict(flat, strict=True)
    same_as_src(dst)
    assert not any(k.startswith('stages.') for k in flat)                  # the caller's dict is left as it was
    path = tmp_path / 'backbone.pth'
    torch.save({'state_dict': flat, 'meta': {'layout': 'tlalign'}}, path)
    kw = dict(out_indices=(3,), out_type='cls_token') if version == 'cls' else {}
    pretrained = TLAPyramidVisionTransformer(dict(ARCH, version=2 if version == 2 else 1), img_size=64,
                                             drop_path_rate=0.0, init_cfg=dict(type='Pretrained', checkpoint=str(path)),
                                             **kw)
    pretrained.init_weights()
    same_as_src(pretrained)
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in flat.items()}}, tmp_path / 'detector.pth')
    detector = torch.nn.Module()
    detector.backbone = _pvt(version, seed=5)
    load_checkpoint(detector, str(tmp_path / 'detector.pth'), strict=True)
    same_as_src(detector.backbone)


@pytest.mark.parametrize('version', [2, 'cls'])
def test_flat_classifier_checkpoint_loads(version, tmp_path):
    """A pretraining checkpoint of the classifier saved before the stages (``backbone.block1.0...``,
    ``head.fc.*``, DenseTLAlign's training-only ``label_rule.*``) loads through
    ``init_cfg=dict(type='Pretrained')`` (tlalign_mm/checkpoint/layouts.py): every tensor and the logits
    are the saving model's, into the same rule or into one without ``label_rule`` parameters."""
    torch.manual_seed(0)
    src = _classifier(version, 'DenseTLAlign')
    src.init_weights()
    src.eval()
    sd = {('backbone.' + _flat_name(k[len('backbone.'):]) if k.startswith('backbone.') else k): v
          for k, v in src.state_dict().items()}
    assert 'backbone.block1.0.attn.q.weight' in sd and any(k.startswith('label_rule.') for k in sd)
    path = tmp_path / 'epoch_3.pth'
    torch.save({'state_dict': sd, 'meta': {'epoch': 3}}, path)
    x = torch.randn(2, 3, 64, 64)
    for rule in ('DenseTLAlign', 'TLAlign'):
        torch.manual_seed(1)
        dst = _classifier(version, rule, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
        dst.init_weights()
        dst.eval()
        for k, v in dst.state_dict().items():
            assert torch.equal(v, src.state_dict()[k]), k
        with torch.no_grad():
            assert torch.equal(dst(x, mode='tensor'), src(x, mode='tensor')), rule
