"""Label rules (tlalign_mm/models/label_rules/) against references written out here.

Every reference recomputes each block's attention from the block's own weights and the input
the block saw (captured with a forward hook), as the reference codes do
(``softmax(q k^T / sqrt(d))``, mean over heads), and applies the rule's formula by hand:

* TL-Align and its ablations (paper Table 8): ``Y <- (Y + A Y) / 2`` or ``A Y`` on the chosen
  blocks, identity elsewhere, read at the class token;
* TransMix (Beckschen/TransMix ``transmix.py``): class-token attention to the patch tokens,
  ``lam1 = sum(mask * attn) / sum(attn)``, ``lam = (lam0 + lam1) / 2``;
* dense TL-Align: each patch token's aligned label against the token head's logits.

The attention is made trained-like first (``structure_attention_``): near-uniform attention
at random init would make every rule return almost the area target and hide errors.
"""
import os
import re
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from structured_attention import structure_attention_  # noqa: E402  (tools/analysis/structured_attention.py)

from tlalign_mm.align import smooth_one_hot  # noqa: E402
from tlalign_mm.models.label_rules import TLAlignRule  # noqa: E402
from tlalign_mm.registry import MODELS  # noqa: E402
from tlalign_mm.structures import ClsDataSample  # noqa: E402

K = 5
SMOOTH = 0.1


def _model(rule, arch='vit', seed=0):
    torch.manual_seed(seed)
    if arch == 'vit':
        bb = dict(type='TLAVisionTransformer', arch=dict(embed_dims=32, num_layers=3, num_heads=4),
                  img_size=32, patch_size=8, out_type='cls_token')
        mixer = dict(cutmix_alpha=1.0, patch_size=8)
    else:
        bb = dict(type='TLASwinTransformer', arch=dict(embed_dims=16, depths=(2, 2), num_heads=(2, 4)),
                  window_size=4, out_indices=(1,), out_type='avg_featmap')
        mixer = dict(cutmix_alpha=1.0, patch_size=4, token_grid_size=8)
    m = MODELS.build(dict(type='TLAImageClassifier', backbone=bb, head=dict(type='TLALinearClsHead', num_classes=K),
                          label_rule=rule, label_smoothing=SMOOTH,
                          data_preprocessor=dict(type='TLAClsDataPreprocessor', seed=3, mixer=mixer)))
    m.init_weights()
    structure_attention_(m.backbone, seed=seed)
    return m.eval()


def _batch(b=6, size=32):
    g = torch.Generator().manual_seed(11)
    imgs = torch.randint(0, 256, (b, 3, size, size), generator=g, dtype=torch.uint8)
    return dict(inputs=imgs, data_samples=[ClsDataSample().set_gt_label(i % K) for i in range(b)])


def _mixed(m):
    data = m.data_preprocessor(_batch(), training=True)
    assert data['mix'].mixed and 0.05 < float(data['mix'].lam.mean()) < 0.95
    return data


def _vit_attention(m, inputs):
    """Per block: (B, N, N) head-mean attention, recomputed from the captured block inputs."""
    seen = []
    hooks = [blk.attn.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach()))
             for blk in m.backbone.blocks]
    with torch.no_grad():
        m.backbone(inputs)
    for h in hooks:
        h.remove()
    maps = []
    for blk, x in zip(m.backbone.blocks, seen):
        a = blk.attn
        b, n, c = x.shape
        q, k, _ = a.qkv(x).reshape(b, n, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        maps.append(((q @ k.transpose(-2, -1)) * a.head_dim ** -0.5).softmax(-1).mean(1))
    return maps


def _targets(m, data):
    labels = torch.tensor([ds.gt_label.item() for ds in data['data_samples']])
    y_a = smooth_one_hot(labels, K, SMOOTH)
    return y_a, y_a[data['mix'].partner]


def _loss_with_target(m, data):
    with torch.no_grad():
        out = m(**data, mode='loss')
    return out, torch.stack([ds.gt_score for ds in data['data_samples']])


@pytest.mark.parametrize('blocks,residual', [('all', True), ('last', False), ('last', True), ([0, 2], False),
                                             ([-2], True)])
def test_tl_align_ablations_match_the_written_out_propagation(blocks, residual):
    m = _model(dict(type='TLAlign', blocks=blocks, residual=residual))
    data = _mixed(m)
    mix = data['mix']
    maps = _vit_attention(m, data['inputs'])
    chosen = {'all': [0, 1, 2], 'last': [2]}[blocks] if isinstance(blocks, str) else [i % 3 for i in blocks]
    y = mix.source_labels(1)
    for i, a in enumerate(maps):
        if i in chosen:
            y = (y + a @ y) / 2 if residual else a @ y
    y_a, y_b = _targets(m, data)
    want = y[:, 0, :1] * y_a + y[:, 0, 1:] * y_b
    out, got = _loss_with_target(m, data)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=0)
    # the rule changes the target: it is not the area target, nor the other ablations'
    area = mix.lam[:, None] * y_a + (1 - mix.lam[:, None]) * y_b
    assert (got - area).abs().max() > 1e-2
    assert torch.allclose(out['align/lam_aligned'], y[:, 0, 0].mean(), atol=2e-6)


def test_tl_align_ablations_differ_from_each_other():
    targets = {}
    for name, rule in {'all': dict(type='TLAlign'), 'last': dict(type='TLAlign', blocks='last'),
                       'nores': dict(type='TLAlign', residual=False),
                       'mean': dict(type='TLAlign', readout='mean')}.items():
        m = _model(rule)
        targets[name] = _loss_with_target(m, _mixed(m))[1]
    names = list(targets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert (targets[a] - targets[b]).abs().max() > 1e-3, (a, b)


def test_tl_align_mean_readout_is_the_patch_token_mean():
    m = _model(dict(type='TLAlign', readout='mean'))
    data = _mixed(m)
    y = data['mix'].source_labels(1)
    for a in _vit_attention(m, data['inputs']):
        y = (y + a @ y) / 2
    share = y[:, 1:].mean(1)
    y_a, y_b = _targets(m, data)
    torch.testing.assert_close(_loss_with_target(m, data)[1], share[:, :1] * y_a + share[:, 1:] * y_b,
                               atol=2e-6, rtol=0)


@pytest.mark.parametrize('area_weight', [0.5, 0.0])
def test_transmix_matches_the_reference_formula(area_weight):
    m = _model(dict(type='TransMix', area_weight=area_weight))
    data = _mixed(m)
    mix = data['mix']
    attn = _vit_attention(m, data['inputs'])[-1][:, 0, 1:]           # class token -> patches, head mean
    mask = mix.share_b                                               # the pasted tokens (partner's)
    lam0 = 1 - mix.lam                                               # the pasted area
    w1, w2 = ((1 - mask) * attn).sum(1), (mask * attn).sum(1)
    lam = area_weight * lam0 + (1 - area_weight) * w2 / (w1 + w2)
    y_a, y_b = _targets(m, data)
    want = y_a * (1 - lam)[:, None] + y_b * lam[:, None]
    out, got = _loss_with_target(m, data)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=0)
    area = mix.lam[:, None] * y_a + (1 - mix.lam[:, None]) * y_b
    assert (got - area).abs().max() > 1e-2 * (1 - area_weight)
    assert torch.allclose(out['align/lam_aligned'], (1 - lam).mean(), atol=2e-6)


def _pixel_box(mask):
    """(yl, yh, xl, xh) of the 0/1 pixel box in an (H, W) mask."""
    rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _transmix_pixel_model(token_mask='nearest', seed=0, **mixer):
    m = _model(dict(type='TransMix', token_mask=token_mask), seed=seed)
    from tlalign_mm.mixing import BatchMixer
    m.data_preprocessor.mixer = BatchMixer(**dict(dict(cutmix_alpha=1.0, cutmix_mode='pixel', correct_lam=False,
                                                       patch_size=8), **mixer))
    return m


def test_transmix_reads_the_pixel_box_as_the_release_does():
    """Pixel CutMix (the release's recipe): the token mask is the box sampled nearest on the token
    grid (nn.Upsample(size=grid): a token is pasted iff its top-left pixel is), lam0 the box's pixel
    area whatever correct_lam says, lam = (lam0 + lam1) / 2 (Beckschen/TransMix transmix.py)."""
    import torch.nn as nn
    m = _transmix_pixel_model()
    for _ in range(20):                         # a batch whose box cuts through patches
        data = _mixed(m)
        mix = data['mix']
        yl, yh, xl, xh = _pixel_box(mix.mask[0])
        if any(v % 8 for v in (yl, yh, xl, xh)):
            break
    assert mix.mode == 'cutmix' and any(v % 8 for v in (yl, yh, xl, xh))
    # the release's mask and area, from the box alone
    box = torch.zeros(32, 32)
    box[yl:yh, xl:xh] = 1
    mask = nn.Upsample(size=4)(box[None, None]).int().view(1, -1).float()
    torch.testing.assert_close(mask.view(4, 4), box[::8, ::8])      # nearest = the top-left pixel
    lam0 = (yh - yl) * (xh - xl) / (32 * 32)
    assert abs(lam0 - (1 - float(mix.lam[0]))) > 1e-3                # correct_lam=False: lam is the Beta draw
    attn = _vit_attention(m, data['inputs'])[-1][:, 0, 1:]
    w1, w2 = ((1 - mask) * attn).sum(1), (mask * attn).sum(1)
    lam = (lam0 + w2 / (w1 + w2)) / 2
    y_a, y_b = _targets(m, data)
    out, got = _loss_with_target(m, data)
    # the middle sample of no pair: B = 6 is even, every sample is mixed with the same box
    torch.testing.assert_close(got, y_a * (1 - lam)[:, None] + y_b * lam[:, None], atol=2e-6, rtol=0)
    # the area-share mask ('area') reads the same box differently
    m_area = _transmix_pixel_model('area')
    m_area.load_state_dict(m.state_dict())
    _, got_area = _loss_with_target(m_area, data)
    assert (got - got_area).abs().max() > 1e-4


def test_transmix_keeps_the_area_target_on_mixup_batches():
    m = _transmix_pixel_model(mixup_alpha=0.8, cutmix_alpha=0.0)
    data = _mixed(m)
    mix = data['mix']
    assert mix.mode == 'mixup'
    y_a, y_b = _targets(m, data)
    out, got = _loss_with_target(m, data)
    torch.testing.assert_close(got, mix.lam[:, None] * y_a + (1 - mix.lam[:, None]) * y_b, atol=0, rtol=0)
    assert float(out['align/lam_gap']) == 0


def test_transmix_bad_token_mask_options():
    with pytest.raises(ValueError, match=r"TransMix token_mask must be one of \('nearest', 'area'\), got 'box'"):
        _model(dict(type='TransMix', token_mask='box'))

    def build(token_mask):
        return MODELS.build(dict(
            type='TLAImageClassifier', head=dict(type='TLALinearClsHead', num_classes=K),
            backbone=dict(type='TLAVisionTransformer', arch=dict(embed_dims=32, num_layers=1, num_heads=2),
                          img_size=32, patch_size=8, out_type='cls_token'),
            label_rule=dict(type='TransMix', token_mask=token_mask),
            data_preprocessor=dict(type='TLAClsDataPreprocessor',
                                   mixer=dict(cutmix_alpha=1.0, patch_size=8, return_mask=False))))
    with pytest.raises(ValueError, match='return_mask=True'):
        build('nearest')
    build('area')     # the area share needs no pixel mask


def test_transmix_on_swin_reads_the_token_mean_of_the_last_window_attention():
    """Swin has no class token: lam1 is the mean over tokens of the partner's attention share in
    the last block, with the share pooled 2x2 by patch merging before the last stage."""
    m = _model(dict(type='TransMix'), arch='swin')
    data = m.data_preprocessor(_batch(), training=True)
    mix = data['mix']
    # a Mixup-like uniform share gives lam1 = lam0 exactly: check the reading on a real mask instead
    blk = m.backbone.layers[1].blocks[-1]
    seen = []
    hook = blk.attn.register_forward_hook(lambda mod, args, out: seen.append((args[0].detach(), args[1], args[2])))
    with torch.no_grad():
        m.backbone(data['inputs'])
    hook.remove()
    xw, window, mask_add = seen[0]                                    # (B*nW, n, C) windows, shift mask
    a = blk.attn
    bw, n, c = xw.shape
    q, k, _ = a.qkv(xw).reshape(bw, n, 3, a.num_heads, c // a.num_heads).permute(2, 0, 3, 1, 4)
    logits = (q @ k.transpose(-2, -1)) * a.scale + a.position_bias(window)
    if mask_add is not None:
        logits = logits.view(-1, mask_add.shape[0], a.num_heads, n, n) + mask_add[None, :, None]
        logits = logits.view(bw, a.num_heads, n, n)
    attn = logits.softmax(-1).mean(1)                                 # (B*nW, n, n)
    # the partner's share on the stage-1 grid (4 x 4): 2x2 mean of the 8 x 8 token shares
    s = mix.share_b.view(-1, 8, 8)
    s1 = torch.nn.functional.avg_pool2d(s[:, None], 2)[:, 0]         # (B, 4, 4)
    # stage 1 is one 4 x 4 window (window 4) and is not shifted (the map equals the window)
    s_win = s1.reshape(-1, 16)
    lam1 = (attn @ s_win[..., None])[..., 0].mean(-1)
    lam = 0.5 * (1 - mix.lam) + 0.5 * lam1
    y_a, y_b = _targets(m, data)
    _, got = _loss_with_target(m, data)
    torch.testing.assert_close(got, y_a * (1 - lam)[:, None] + y_b * lam[:, None], atol=2e-6, rtol=0)


def test_dense_tl_align_adds_the_token_loss_and_keeps_the_pooled_target():
    m = _model(dict(type='DenseTLAlign', dense_weight=0.7))
    ref = _model(dict(type='TLAlign'))
    m.backbone.load_state_dict(ref.backbone.state_dict())
    m.head.load_state_dict(ref.head.state_dict())
    data = _mixed(m)
    out, got = _loss_with_target(m, data)
    _, want_target = _loss_with_target(ref, data)
    torch.testing.assert_close(got, want_target, atol=1e-6, rtol=0)
    # reference: token labels by the written-out propagation, token features of the backbone
    y = data['mix'].source_labels(1)
    for a in _vit_attention(m, data['inputs']):
        y = (y + a @ y) / 2
    y_a, y_b = _targets(m, data)
    tok = y[:, 1:, :1] * y_a[:, None] + y[:, 1:, 1:] * y_b[:, None]          # (B, N, K)
    with torch.no_grad():
        feats = m.backbone(data['inputs'])[-1][:, 1:]                         # raw tokens, final norm
        logits = m.label_rule.token_head(feats)
    want = 0.7 * -(tok * logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(out['loss_dense'], want, atol=1e-6, rtol=1e-5)
    assert float(out['loss_dense']) > 0
    # inference is the plain TL-Align classifier's: the token head is not used
    with torch.no_grad():
        torch.testing.assert_close(m(data['inputs'], mode='tensor'), ref(data['inputs'], mode='tensor'))
        samples = m.predict(data['inputs'])
    assert samples[0].pred_score.shape == (K,)


def test_rules_that_need_labels_fail_at_build_on_a_plain_backbone(plain_backbone):
    for rule in ('TLAlign', 'TransMix', 'DenseTLAlign'):
        with pytest.raises(ValueError, match=f'label rule {rule}Rule needs a backbone that carries token labels'):
            MODELS.build(dict(type='TLAImageClassifier', backbone=dict(type=plain_backbone),
                              head=dict(type='TLALinearClsHead', num_classes=K), label_rule=dict(type=rule)))
    m = MODELS.build(dict(type='TLAImageClassifier', backbone=dict(type=plain_backbone),
                          head=dict(type='TLALinearClsHead', num_classes=K), label_rule=dict(type='Area')))
    assert type(m.label_rule).__name__ == 'AreaRule' and not isinstance(m.label_rule, TLAlignRule)


def test_bad_rule_options_name_the_option():
    with pytest.raises(ValueError, match="readout 'cls' needs a backbone with a class token"):
        _model(dict(type='TLAlign', readout='cls'), arch='swin')
    with pytest.raises(ValueError, match='out of range for the 3 blocks'):
        _model(dict(type='TLAlign', blocks=[3]))
    with pytest.raises(ValueError, match="align blocks must be 'all', 'last'"):
        _model(dict(type='TLAlign', blocks='first'))
    with pytest.raises(ValueError, match='area_weight'):
        _model(dict(type='TransMix', area_weight=1.5))
    with pytest.raises(ValueError, match='dense_weight'):
        _model(dict(type='DenseTLAlign', dense_weight=-1))


def _teacher_files(tmp_path, patch_size=8):
    """A tiny DeiT classifier config + checkpoint with non-uniform per-token class maps (logits of
    both signs: the head's weights have std 1)."""
    cfg = tmp_path / 'teacher.py'
    bb = (f"dict(type='TLAVisionTransformer', arch=dict(embed_dims=24, num_layers=2, num_heads=2), img_size=32, "
          f"patch_size={patch_size}, out_type='cls_token')")
    cfg.write_text(f"model = dict(type='TLAImageClassifier', head=dict(type='TLALinearClsHead', num_classes=5),\n"
                   f"             backbone={bb})\n")
    torch.manual_seed(5)
    t = MODELS.build(dict(type='TLAImageClassifier', head=dict(type='TLALinearClsHead', num_classes=K),
                          backbone=dict(type='TLAVisionTransformer',
                                        arch=dict(embed_dims=24, num_layers=2, num_heads=2),
                                        img_size=32, patch_size=patch_size, out_type='cls_token')))
    t.init_weights()
    torch.nn.init.normal_(t.head.fc.weight, std=1.0)
    ckpt = tmp_path / 'teacher.pth'
    torch.save({'state_dict': t.state_dict(), 'meta': {}}, ckpt)
    return str(cfg), str(ckpt), t.eval()


def _tokenmix_student(teacher, mask='block', random_erasing=None, mixer=None, **rule):
    torch.manual_seed(0)
    m = MODELS.build(dict(
        type='TLAImageClassifier', head=dict(type='TLALinearClsHead', num_classes=K), label_smoothing=SMOOTH,
        backbone=dict(type='TLAVisionTransformer', arch=dict(embed_dims=32, num_layers=2, num_heads=2),
                      img_size=32, patch_size=8, out_type='cls_token'),
        label_rule=dict(type='TokenMix', teacher=teacher, **rule),
        data_preprocessor=dict(type='TLAClsDataPreprocessor', seed=1, random_erasing=random_erasing,
                               mixer=mixer or dict(cutmix_alpha=0.0, tokenmix_alpha=1.0, tokenmix_mask=mask,
                                                   tokenmix_lam=0.5, tokenmix_min_tokens=2, patch_size=8))))
    m.init_weights()
    return m.eval()


def _teacher_maps(t, images, labels):
    """(B, 1, h, w) score map of each image's class: the teacher's head on its final patch tokens."""
    with torch.no_grad():
        t.backbone.out_type = 'raw'
        tok = t.backbone(images)[-1][:, 1:]
        logits = t.head.fc(tok)
    side = int(tok.shape[1] ** 0.5)
    return logits[torch.arange(len(labels)), :, labels].view(-1, 1, side, side)


def _release_tokenmix_target(maps, labels, share_b, grid, smoothing, k):
    """Sense-X/TokenMix tokenmix.py, restated: roi_align of the map over the crop box (corners
    ``coords * W - 0.5``), the true class's map divided by its sum + 1e-8 (no ReLU), the partner
    (the flipped batch) seen through the mask, then one_hot(on = w - ls/2 + off/2, off = off/2)
    for each image, summed."""
    from torchvision.ops import roi_align
    b = len(labels)
    coords = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(b, 1)
    boxes = torch.cat([torch.arange(b).float().view(b, 1), coords * maps.size(3) - 0.5], 1)
    y1 = roi_align(maps, boxes, output_size=grid)[:, 0]
    y1 = y1 / (y1.sum((1, 2), keepdim=True) + 1e-8)
    y2 = y1.flip(0)
    mask = share_b.view(b, *grid)
    w1, w2 = (y1 * (1 - mask)).sum((1, 2)), (y2 * mask).sum((1, 2))
    off = smoothing / k
    t1 = torch.full((b, k), off / 2).scatter(1, labels.view(-1, 1), (w1 - smoothing / 2 + off / 2).view(-1, 1))
    t2 = torch.full((b, k), off / 2).scatter(1, labels.flip(0).view(-1, 1), (w2 - smoothing / 2 + off / 2).view(-1, 1))
    return t1 + t2, w1, w2


@pytest.mark.parametrize('teacher_patch', [8, 16], ids=['map-4x4', 'map-2x2-roi-align'])
def test_tokenmix_target_is_the_release_formula(tmp_path, teacher_patch):
    """The defaults are the release's: roi_align to the token grid, no ReLU, its per-class smoothing;
    the teacher sees the clean crop (random erasing is on, with probability 1, for the student)."""
    cfg, ckpt, t = _teacher_files(tmp_path, teacher_patch)
    m = _tokenmix_student(dict(config=cfg, checkpoint=ckpt), random_erasing=dict(re_prob=1.0))
    assert 'teacher' not in dict(m.named_children()) and not any('teacher' in k for k in m.state_dict())
    batch = _batch()
    data = m.data_preprocessor(batch, training=True)
    mix = data['mix']
    assert mix.mode == 'tokenmix' and abs(float(mix.lam[0]) - (1 - 10 / 16)) < 1e-6   # int(8) + 2 of 16 cells
    pp = m.data_preprocessor
    clean = (batch['inputs'].float() - pp.mean) / pp.std
    torch.testing.assert_close(mix.source_images, clean, atol=0, rtol=0)     # before erasing
    labels = torch.tensor([ds.gt_label.item() for ds in data['data_samples']])
    maps = _teacher_maps(t, clean, labels)
    assert (maps < 0).any() and (maps > 0).any()                             # a ReLU would change it
    want, w1, _ = _release_tokenmix_target(maps, labels, mix.share_b, (4, 4), SMOOTH, K)
    out, got = _loss_with_target(m, data)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=0)
    assert torch.allclose(out['align/lam_aligned'], w1.mean(), atol=1e-6)
    # the erased crop would give another target: the test sees which images the teacher read
    erased = data['inputs'].clone()
    erased = torch.where(mix.share_b.view(-1, 1, 4, 4).repeat_interleave(8, 2).repeat_interleave(8, 3).bool(),
                         erased.flip(0), erased)                              # un-mix: the erased batch
    assert (erased - clean).abs().max() > 0.5
    other, _, _ = _release_tokenmix_target(_teacher_maps(t, erased, labels), labels, mix.share_b, (4, 4), SMOOTH, K)
    assert (other - want).abs().max() > 1e-3
    area = mix.lam[:, None] * _targets(m, data)[0] + (1 - mix.lam[:, None]) * _targets(m, data)[1]
    assert (got - area).abs().max() > 1e-2


def test_tokenmix_keeps_the_top_k_classes_of_each_location_as_the_release_maps(tmp_path):
    """TokenLabeling's maps (generate_label.py) keep the top-k logits per location and TokenMix
    scatters them into zeros (get_featuremaps): the true class counts only where it is in the top k."""
    cfg, ckpt, t = _teacher_files(tmp_path)
    m = _tokenmix_student(dict(config=cfg, checkpoint=ckpt), cam_topk=2)
    data = m.data_preprocessor(_batch(), training=True)
    mix = data['mix']
    labels = torch.tensor([ds.gt_label.item() for ds in data['data_samples']])
    with torch.no_grad():
        t.backbone.out_type = 'raw'
        logits = t.head.fc(t.backbone(mix.source_images)[-1][:, 1:])          # (B, 16, K)
    value, index = logits.topk(2, dim=-1)
    full = torch.zeros_like(logits).scatter_(2, index, value)                # the stored map, densified
    maps = full[torch.arange(len(labels)), :, labels].view(-1, 1, 4, 4)
    assert (maps == 0).any() and (maps != 0).any()
    want, _, _ = _release_tokenmix_target(maps, labels, mix.share_b, (4, 4), SMOOTH, K)
    torch.testing.assert_close(_loss_with_target(m, data)[1], want, atol=2e-6, rtol=0)
    every = _tokenmix_student(dict(config=cfg, checkpoint=ckpt), cam_topk=None)
    assert (_loss_with_target(every, data)[1] - want).abs().max() > 1e-3
    with pytest.raises(ValueError, match='cam_topk must be a positive integer or None'):
        _tokenmix_student(dict(config=cfg, checkpoint=ckpt), cam_topk=0)


def test_tokenmix_options_relu_bilinear_weighted(tmp_path):
    """cam_activation='relu', resize='bilinear', smoothing='weighted': the earlier conventions."""
    cfg, ckpt, t = _teacher_files(tmp_path, 16)
    m = _tokenmix_student(dict(config=cfg, checkpoint=ckpt), cam_activation='relu', resize='bilinear',
                          smoothing='weighted')
    data = m.data_preprocessor(_batch(), training=True)
    mix = data['mix']
    labels = torch.tensor([ds.gt_label.item() for ds in data['data_samples']])
    cam = torch.nn.functional.interpolate(_teacher_maps(t, mix.source_images, labels), size=(4, 4), mode='bilinear',
                                          align_corners=False).flatten(1).clamp_min(0)
    cam = cam / cam.sum(1, keepdim=True)
    s = mix.share_b
    w_a, w_b = ((1 - s) * cam).sum(1), (s * cam[mix.partner]).sum(1)
    y_a, y_b = _targets(m, data)
    _, got = _loss_with_target(m, data)
    torch.testing.assert_close(got, w_a[:, None] * y_a + w_b[:, None] * y_b, atol=1e-6, rtol=0)
    release = _tokenmix_student(dict(config=cfg, checkpoint=ckpt))
    assert (_loss_with_target(release, data)[1] - got).abs().max() > 1e-3


def test_tokenmix_resizes_like_the_release_15_to_14(tmp_path):
    """The release's sizes: a 15 x 15 label map to the 14 x 14 token grid with roi_align over the whole
    crop; bilinear interpolation gives another map at this non-integer ratio."""
    from torchvision.ops import roi_align
    cfg, ckpt, _ = _teacher_files(tmp_path)
    m = _tokenmix_student(dict(config=cfg, checkpoint=ckpt))
    maps = torch.randn(3, 1, 15, 15, generator=torch.Generator().manual_seed(0))
    boxes = torch.cat([torch.arange(3.0).view(3, 1), torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(3, 1) * 15 - 0.5], 1)
    want = roi_align(maps, boxes, output_size=(14, 14)).flatten(1)
    want = want / (want.sum(1, keepdim=True) + 1e-8)
    got = m.label_rule._class_map(maps, (14, 14))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    m.label_rule.resize = 'bilinear'
    assert (m.label_rule._class_map(maps, (14, 14)) - got).abs().max() > 1e-3


def test_tokenmix_keeps_the_area_target_on_mixup_batches_without_the_teacher(tmp_path):
    cfg, ckpt, _ = _teacher_files(tmp_path)
    m = _tokenmix_student(dict(config=cfg, checkpoint=ckpt),
                          mixer=dict(mixup_alpha=0.8, cutmix_alpha=0.0, tokenmix_alpha=1.0, switch_prob=0.0,
                                     tokenmix_lam=0.5, patch_size=8))
    m.label_rule.teacher.forward = None           # the teacher must not run on a Mixup batch
    m.label_rule.teacher.backbone.forward = None
    data = _mixed(m)
    assert data['mix'].mode == 'mixup'
    y_a, y_b = _targets(m, data)
    lam = data['mix'].lam[:, None]
    torch.testing.assert_close(_loss_with_target(m, data)[1], lam * y_a + (1 - lam) * y_b, atol=0, rtol=0)


def test_tokenmix_bce_loss_through_the_head_config(tmp_path):
    """--use-bce: timm's BinaryCrossEntropy on the soft target, mean over batch and classes."""
    cfg, ckpt, _ = _teacher_files(tmp_path)
    m = _tokenmix_student(dict(config=cfg, checkpoint=ckpt))
    m.head.loss_module = MODELS.build(dict(type='BinaryCrossEntropy'))
    data = m.data_preprocessor(_batch(), training=True)
    out, target = _loss_with_target(m, data)
    with torch.no_grad():
        logits = m(data['inputs'], mode='tensor')
    want = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    torch.testing.assert_close(out['loss'], want)


def test_tokenmix_with_a_timm_teacher(tmp_path):
    """A timm teacher whose map is a class activation map (a ViT with global average pooling and no
    norm after it): the map is its classifier on every patch token."""
    import timm
    torch.manual_seed(2)
    kw = dict(img_size=32, patch_size=8, global_pool='avg', fc_norm=False)
    t = timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=K, **kw)
    torch.nn.init.normal_(t.head.weight, std=1.0)
    torch.save(t.state_dict(), tmp_path / 'timm.pth')
    m = _tokenmix_student(dict(timm='vit_tiny_patch16_224', checkpoint=str(tmp_path / 'timm.pth'), **kw),
                          mask='random')
    data = m.data_preprocessor(_batch(), training=True)
    mix = data['mix']
    t.eval()
    with torch.no_grad():
        feats = t.forward_features(mix.source_images)
        logits = t.head(feats[:, 1:])
        torch.testing.assert_close(logits.mean(1), t.forward_head(feats))   # the CAM's defining property
    labels = torch.tensor([ds.gt_label.item() for ds in data['data_samples']])
    maps = logits[torch.arange(len(labels)), :, labels].view(-1, 1, 4, 4)
    want, _, _ = _release_tokenmix_target(maps, labels, mix.share_b, (4, 4), SMOOTH, K)
    torch.testing.assert_close(_loss_with_target(m, data)[1], want, atol=2e-6, rtol=0)


@pytest.mark.parametrize('name,kwargs,why', [
    ('mobilenetv3_small_050', {}, r'classifier does not apply per location \(RuntimeError'),   # conv_head
    ('convnext_atto', {}, 'not the spatial mean'),                   # head norm after the pool
    ('vit_tiny_patch16_224', dict(img_size=32, patch_size=8), 'not the spatial mean'),   # class token
])
def test_tokenmix_refuses_a_timm_teacher_without_a_cam_at_build(tmp_path, name, kwargs, why):
    import timm
    t = timm.create_model(name, pretrained=False, num_classes=K, **kwargs)
    torch.save(t.state_dict(), tmp_path / 't.pth')
    with pytest.raises(ValueError, match=f"TokenMix teacher timm '{name}' has no class activation map: its .*{why}"):
        _tokenmix_student(dict(timm=name, checkpoint=str(tmp_path / 't.pth'), **kwargs))


def test_tokenmix_without_a_teacher_or_with_bad_options_fails_at_build(tmp_path):
    with pytest.raises(ValueError, match='label rule TokenMix needs a teacher'):
        _tokenmix_student(None)
    with pytest.raises(ValueError, match='label rule TokenMix needs a teacher'):
        _tokenmix_student(dict(config='x.py'))
    cfg, ckpt, _ = _teacher_files(tmp_path)
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        _tokenmix_student(dict(config=cfg, checkpoint=str(tmp_path / 'nope.pth')))
    for option, value, allowed in (('smoothing', 'soft', "('tokenmix', 'weighted')"),
                                   ('cam_activation', 'sigmoid', "(None, 'relu')"),
                                   ('resize', 'nearest', "('roi_align', 'bilinear')")):
        with pytest.raises(ValueError, match=f'TokenMix {option} must be one of {re.escape(allowed)}, got '
                                             f"'{value}'"):
            _tokenmix_student(dict(config=cfg, checkpoint=ckpt), **{option: value})


def test_tokenmix_counts_cells_with_int_as_the_releases():
    """int((1 - lam) * N) + min_tokens cells (TokenMix generate_mask, TL-Align tokenmix_mask_and_lam),
    not round: lam 0.3375 on 16 cells is 10.6 -> 10."""
    import random as pyrandom

    from tlalign_mm.mixing import BatchMixer
    for mask, extra in (('random', 0), ('random', 3), ('block', 0)):
        mixer = BatchMixer(cutmix_alpha=0.0, tokenmix_alpha=1.0, tokenmix_mask=mask, tokenmix_lam=0.3375,
                           tokenmix_min_tokens=extra, patch_size=8)
        res = mixer(torch.rand(2, 3, 32, 32), rng=pyrandom.Random(0))
        n = int(res.share_b[0].sum())
        assert (n == 10 + extra) if mask == 'random' else (0 < n <= 10)
        torch.testing.assert_close(res.lam, torch.full((2,), 1 - n / 16))


def test_block_mask_cells_cover_rectangles_of_the_count():
    import random as pyrandom

    from tlalign_mm.mixing import BatchMixer, block_mask_cells
    rng = pyrandom.Random(0)
    for count in (1, 20, 98 + 14, 196):
        grid = torch.tensor(block_mask_cells(14, 14, count, rng))
        assert set(grid.unique().tolist()) <= {0, 1} and 0 < grid.sum() <= count
        assert grid.sum() >= 0.8 * count                    # BEiT-style blocks reach (nearly) the count
    # blocks are contiguous: far fewer 0/1 edges than a scattered mask with as many cells
    grid = torch.tensor(block_mask_cells(14, 14, 98, pyrandom.Random(1))).float()
    edges = (grid[1:] != grid[:-1]).sum() + (grid[:, 1:] != grid[:, :-1]).sum()
    assert edges < 0.5 * 2 * 13 * 14 * 0.5
    mixer = BatchMixer(cutmix_alpha=0.0, tokenmix_alpha=1.0, tokenmix_mask='block', tokenmix_lam=0.5,
                       patch_size=4)
    res = mixer(torch.rand(4, 3, 56, 56), rng=pyrandom.Random(3))
    assert res.mode == 'tokenmix'
    torch.testing.assert_close(res.lam, 1 - res.share_b.mean(1))
    assert torch.equal(res.mask[0].view(14, 4, 14, 4).mean((1, 3)).flatten(), res.share_b[0])
    with pytest.raises(ValueError, match='tokenmix_mask'):
        BatchMixer(tokenmix_alpha=1.0, tokenmix_mask='grid')


# ---------------------------------------------------------------- every rule through tools/train.py
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = os.path.join(REPO, 'data', 'demo', 'fashion_mnist')
SHORT = ['train_cfg.max_epochs=1', 'train_dataloader.dataset.indices=96', 'val_dataloader.dataset.indices=64',
         'train_dataloader.batch_size=16', 'train_dataloader.num_workers=0', 'val_dataloader.num_workers=0',
         'train_dataloader.persistent_workers=False', 'val_dataloader.persistent_workers=False',
         'default_hooks.logger.interval=2']


def _train(config, work_dir, *options):
    import subprocess
    cmd = [sys.executable, os.path.join(REPO, 'tools', 'train.py'), config, '--work-dir', str(work_dir),
           '--cfg-options', *SHORT, *options]
    env = dict(os.environ, OMP_NUM_THREADS='2', PYTHONPATH=REPO)
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


@pytest.fixture(scope='module')
def demo_teacher(tmp_path_factory):
    """The demo TL-Align model trained 1 short epoch: TokenMix's teacher."""
    work = tmp_path_factory.mktemp('teacher')
    _train('configs/demo/deit-demo_tla_1xb64-10e_fashion-mnist.py', work)
    return str(work / 'epoch_1.pth')


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(FMNIST), reason='demo data missing: run tools/prepare_demo_data.py')
@pytest.mark.parametrize('rule', ['cutmix', 'tla', 'transmix', 'tla-dense', 'tla-last', 'tla-nores', 'tokenmix',
                                  'transmix-official', 'tokenmix-official'])
def test_each_rule_trains_through_train_py(rule, tmp_path, request):
    """Each rule's demo config trains through tools/train.py on the real demo images: the rule's
    loss terms and statistics are logged, the checkpoint holds no teacher."""
    options = []
    if rule.startswith('tokenmix'):
        options.append(f'model.label_rule.teacher.checkpoint={request.getfixturevalue("demo_teacher")}')
    log = _train(f'configs/demo/deit-demo_{rule}_1xb64-10e_fashion-mnist.py', tmp_path, *options)
    assert 'Epoch(train) [1][6/6]' in log and 'accuracy/top1' in log
    assert ('loss_dense' in log) == (rule == 'tla-dense')
    assert 'align/lam_aligned' in log
    from tlalign_mm.checkpoint import load_checkpoint_file
    sd = load_checkpoint_file(tmp_path / 'epoch_1.pth')['state_dict']
    assert not any('teacher' in k for k in sd)
    assert any(k.startswith('label_rule.token_head') for k in sd) == (rule == 'tla-dense')


def test_dense_tl_align_on_swin_reads_the_last_stage_tokens():
    """Swin has no class token: the dense loss covers the last stage's tokens, the pooled feature
    is their mean after the stage norm, as the avg_featmap output was."""
    m = _model(dict(type='DenseTLAlign'), arch='swin')
    ref = _model(dict(type='TLAlign'), arch='swin')
    m.backbone.load_state_dict(ref.backbone.state_dict())
    m.head.load_state_dict(ref.head.state_dict())
    data = m.data_preprocessor(_batch(), training=True)
    out, got = _loss_with_target(m, data)
    torch.testing.assert_close(got, _loss_with_target(ref, data)[1], atol=1e-6, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(m(data['inputs'], mode='tensor'), ref(data['inputs'], mode='tensor'))
    assert out['loss_dense'] > 0 and m.backbone.out_type == 'featmap'


@pytest.mark.parametrize('rule', ['Area', 'TLAlign', 'DenseTLAlign', 'TransMix', 'TokenMix'])
def test_the_loss_step_makes_no_tensor_from_python_data(tmp_path, rule):
    """Every tensor of a mixed batch's loss (backbone with labels, rule, head) is made on the device
    from others.  A tensor made from a Python list (``new_tensor([...])``, ``torch.tensor``: the op
    ``aten.lift_fresh``) is, on a GPU, a host-to-device copy that waits for the device, every step;
    a 0-d one (``t[:, 0] = 0.5``) is passed to the kernel as a number and is not counted."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Lifts(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket in (torch.ops.aten.lift_fresh, torch.ops.aten.lift_fresh_copy) and out.dim():
                self.seen.append(tuple(out.shape))
            return out

    if rule == 'TokenMix':
        cfg, ckpt, _ = _teacher_files(tmp_path)
        m = _tokenmix_student(dict(config=cfg, checkpoint=ckpt))
        data = m.data_preprocessor(_batch(), training=True)
    else:
        m = _model(dict(type=rule))
        data = _mixed(m)
    with Lifts() as lifts:
        out, _ = _loss_with_target(m, data)
    assert torch.isfinite(out['loss']) and 'align/lam_aligned' in out
    assert lifts.seen == []
