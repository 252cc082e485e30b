"""BatchMixer / MixResult: mixed pixels, per-token shares, lam, odd batches, sizes, RNG, statistics.

Masks are recovered independently from the pixels (where the output differs from the input) and
per-patch shares recomputed here with a reshape-mean, so nothing is checked against itself.
"""
import math
import random

import pytest
import torch

from tlalign_mm.align import expand_source_labels, mixed_target, smooth_one_hot, token_share_from_mask
from tlalign_mm.mixing import BatchMixer
from tlalign_mm.structures import MixResult

MODES = {
    'token_cutmix': dict(cutmix_alpha=1.0),
    'cutmix': dict(cutmix_alpha=1.0, cutmix_mode='pixel'),
    'mixup': dict(mixup_alpha=1.0, cutmix_alpha=0.0),
    'tokenmix': dict(cutmix_alpha=0.0, tokenmix_alpha=1.0),
}
SPATIAL = ('token_cutmix', 'cutmix', 'tokenmix')


def _images(b, h, w, seed=0):
    # Distinct random values per sample so "output differs from input" marks exactly the
    # pixels taken from the partner.
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed)) + torch.arange(b).view(b, 1, 1, 1)


def _patch_mean(mask, p):
    b, h, w = mask.shape
    return mask.reshape(b, h // p, p, w // p, p).float().mean(dim=(2, 4)).reshape(b, -1)


def _pixels_from_partner(x, out):
    """(B, H, W) bool: pixels where the output is not the sample's own image."""
    return (out != x).any(dim=1)


def _box_of(mask2d):
    ys, xs = torch.nonzero(mask2d, as_tuple=True)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def _draw(mixer, x, seed, want):
    """First result of mode ``want`` that actually pasted something, over successive draws."""
    g = random.Random(seed)
    for _ in range(50):
        res = mixer(x, rng=g)
        if res.mode == want and 0.0 < float(res.lam[0]) < 1.0:
            return res
    raise AssertionError(f'no non-trivial {want} draw')


@pytest.mark.parametrize('mode', list(MODES))
@pytest.mark.parametrize('seed', range(6))
def test_mixed_pixels_share_and_lam(mode, seed):
    b, h, w, p = 4, 64, 96, 16
    x = _images(b, h, w, seed)
    x_before = x.clone()
    res = _draw(BatchMixer(patch_size=p, **MODES[mode]), x, seed, mode)
    assert isinstance(res, MixResult)
    assert torch.equal(x, x_before), 'input must not be modified'
    assert res.images.shape == x.shape and res.share_b.shape == (b, (h // p) * (w // p))
    assert res.share_b.dtype == torch.float32 and res.lam.dtype == torch.float32
    assert res.token_grid == (h // p, w // p)
    assert torch.equal(res.partner, torch.arange(b - 1, -1, -1))
    xb = x.flip(0)
    lam = res.lam
    assert torch.all(lam == lam[0]), 'batch mode: one lam per batch (even batch)'
    # (b) lam is the share of A actually kept
    torch.testing.assert_close(lam, 1.0 - res.share_b.mean(1), atol=1e-6, rtol=0)
    if mode == 'mixup':
        # (a) convex combination, share constant 1 - lam
        lam_ = float(lam[0])
        torch.testing.assert_close(res.images, lam_ * x + (1 - lam_) * xb)
        torch.testing.assert_close(res.share_b, torch.full_like(res.share_b, 1 - lam_))
        return
    # (a) pixel-exact: own image outside the mask, partner inside
    from_b = _pixels_from_partner(x, res.images)
    expect = torch.where(from_b[:, None], xb, x)
    assert torch.equal(res.images, expect)
    assert torch.equal(res.mask, from_b.float()), 'reported mask = pixels taken from partner'
    # (c) share_b = per-patch mean of the (independently recovered) pixel mask
    torch.testing.assert_close(res.share_b, _patch_mean(from_b, p), atol=1e-6, rtol=0)
    torch.testing.assert_close(lam, 1.0 - from_b.float().mean((1, 2)), atol=1e-6, rtol=0)
    if mode in ('token_cutmix', 'tokenmix'):
        assert set(res.share_b.unique().tolist()) <= {0.0, 1.0}
    if mode in ('token_cutmix', 'cutmix'):
        yl, yh, xl, xh = _box_of(from_b[0])
        assert int(from_b[0].sum()) == (yh - yl) * (xh - xl), 'one solid rectangle'
        assert torch.equal(from_b, from_b[:1].expand_as(from_b)), 'same box for the whole batch'
        if mode == 'token_cutmix':
            assert yl % p == 0 and yh % p == 0 and xl % p == 0 and xh % p == 0, 'grid-aligned'


def test_pixel_cutmix_has_partial_patches():
    """Pixel boxes are not grid aligned: some token gets a fractional share."""
    x = _images(2, 64, 64)
    mixer = BatchMixer(cutmix_mode='pixel', patch_size=16)
    g = random.Random(3)
    fractional = False
    for _ in range(20):
        res = mixer(x, rng=g)
        s = res.share_b
        fractional |= bool(((s > 0) & (s < 1)).any())
        torch.testing.assert_close(s, _patch_mean(res.mask, 16), atol=1e-6, rtol=0)
    assert fractional


@pytest.mark.parametrize('mode', list(MODES))
def test_odd_batch_middle_sample_unmixed(mode):
    b, num_classes = 5, 10
    x = _images(b, 32, 48)
    labels = torch.tensor([1, 2, 3, 4, 5])
    res = _draw(BatchMixer(patch_size=16, **MODES[mode]), x, 0, mode)
    mid = b // 2
    assert int(res.partner[mid]) == mid
    assert torch.equal(res.images[mid], x[mid])
    assert torch.all(res.share_b[mid] == 0) and float(res.lam[mid]) == 1.0
    y_a = smooth_one_hot(labels, num_classes, 0.1)
    y_b = y_a[res.partner]
    own = smooth_one_hot(labels[mid:mid + 1], num_classes, 0.1)[0]
    assert torch.equal(y_b[mid], y_a[mid])
    torch.testing.assert_close(mixed_target(res.lam, y_a, y_b)[mid], own)
    tokens = expand_source_labels(res.source_labels(num_prefix_tokens=1), y_a, y_b)
    torch.testing.assert_close(tokens[mid], own.expand_as(tokens[mid]))
    # the other samples really are mixed
    assert not torch.equal(res.images[0], x[0])


@pytest.mark.parametrize('mode', list(MODES))
@pytest.mark.parametrize('h,w,p', [(160, 96, 16), (64, 64, 4), (48, 80, 8)])
def test_non_224_sizes(mode, h, w, p):
    x = _images(2, h, w)
    res = _draw(BatchMixer(patch_size=p, **MODES[mode]), x, 1, mode)
    assert res.share_b.shape == (2, (h // p) * (w // p))
    assert res.mask.shape == (2, h, w)
    torch.testing.assert_close(res.share_b, _patch_mean(res.mask, p), atol=1e-6, rtol=0)
    torch.testing.assert_close(res.share_b, token_share_from_mask(res.mask, p), atol=1e-6, rtol=0)
    torch.testing.assert_close(res.lam, 1.0 - res.share_b.mean(1), atol=1e-6, rtol=0)
    src = res.source_labels(num_prefix_tokens=0)
    assert src.shape == (2, (h // p) * (w // p), 2)


def test_coarse_token_grid_for_swin():
    """Boxes aligned to 32 px cells while shares are reported on the patch-4 grid."""
    x = _images(2, 64, 96)
    for mode in ('token_cutmix', 'tokenmix'):
        mixer = BatchMixer(patch_size=4, token_grid_size=32, **MODES[mode])
        for seed in range(5):
            res = _draw(mixer, x, seed, mode)
            assert res.share_b.shape == (2, 16 * 24)
            assert set(res.share_b.unique().tolist()) <= {0.0, 1.0}
            coarse = _patch_mean(res.mask, 32)
            assert set(coarse.unique().tolist()) <= {0.0, 1.0}, '32 px cells wholly A or B'
            torch.testing.assert_close(res.share_b, _patch_mean(res.mask, 4), atol=1e-6, rtol=0)
            torch.testing.assert_close(res.lam, 1.0 - coarse.mean(1), atol=1e-6, rtol=0)


def test_bad_sizes_and_options_raise():
    with pytest.raises(ValueError, match='patch_size'):
        BatchMixer(patch_size=16)(torch.zeros(2, 3, 100, 96))
    with pytest.raises(ValueError, match='patch_size'):
        BatchMixer(patch_size=16, prob=0.0)(torch.zeros(2, 3, 96, 90))
    with pytest.raises(ValueError, match='token_grid_size'):
        BatchMixer(patch_size=4, token_grid_size=32)(torch.zeros(2, 3, 48, 64))
    with pytest.raises(ValueError, match='token_grid_size'):
        BatchMixer(patch_size=4, token_grid_size=30)
    with pytest.raises(ValueError, match=r"cutmix_mode must be one of \('token', 'pixel'\), got 'box'"):
        BatchMixer(cutmix_mode='box')
    with pytest.raises(ValueError, match='no augmentation is active'):
        BatchMixer(cutmix_alpha=0.0)  # nothing active
    with pytest.raises(ValueError, match=r'prob must be in \[0, 1\], got 1.5'):
        BatchMixer(prob=1.5)
    with pytest.raises(ValueError, match=r'0 <= min < max <= 1, got \(0.8, 0.2\)'):
        BatchMixer(cutmix_minmax=(0.8, 0.2))
    with pytest.raises(ValueError, match='B, C, H, W'):
        BatchMixer()(torch.zeros(3, 64, 64))


def test_the_augments_alone_refuse_what_the_mixer_refuses():
    """CutMix / TokenCutMix / TokenMix built directly (not through BatchMixer) check their own options: a
    minmax outside [0, 1] and a mask cell that is no multiple of the patch or does not divide the image are
    ValueErrors naming them, not a randrange error, a wrong share shape or a tensor size mismatch."""
    from tlalign_mm.mixing.cutmix import CutMix
    from tlalign_mm.mixing.token_cutmix import TokenCutMix
    from tlalign_mm.mixing.tokenmix import TokenMix
    x = torch.zeros(2, 3, 48, 48)
    with pytest.raises(ValueError, match=r'cutmix_minmax must be \(min, max\).*got \(0.5, 2.0\)'):
        CutMix(minmax=(0.5, 2.0))
    for cell in (24, 32):   # 24: no multiple of 16; 32: does not divide 48
        with pytest.raises(ValueError, match=rf'multiple of patch_size=16 dividing the 48x48 images, got {cell} px'):
            TokenMix(cell=cell)(x, 0.5, random.Random(0), 16, False)
    with pytest.raises(ValueError, match='multiple of patch_size=16, got 24 px'):
        TokenCutMix(cell=24)(x, 0.5, random.Random(0), 16, False)
    out = TokenMix(cell=16)(x, 0.5, random.Random(0), 16, False)
    assert tuple(out.share.shape) == (3, 3)


@pytest.mark.parametrize('kwargs', [dict(prob=0.0), dict(disable=True)])
def test_no_mixing(kwargs):
    x = _images(3, 32, 32)
    disable = kwargs.pop('disable', False)
    mixer = BatchMixer(mixup_alpha=1.0, cutmix_alpha=1.0, patch_size=16, **kwargs)
    if disable:
        mixer.mixing_enabled = False
    for seed in range(5):
        res = mixer(x, rng=random.Random(seed))
        assert res.mode == 'none' and not res.mixed
        assert torch.equal(res.images, x)
        assert torch.equal(res.lam, torch.ones(3))
        assert torch.equal(res.share_b, torch.zeros(3, 4))
        labels = torch.tensor([0, 1, 2])
        y = smooth_one_hot(labels, 3)
        torch.testing.assert_close(mixed_target(res.lam, y, y[res.partner]), y)


def test_reproducible_with_generator():
    x = _images(4, 64, 64)
    mixer = BatchMixer(mixup_alpha=0.8, cutmix_alpha=1.0, tokenmix_alpha=1.0, prob=0.9, patch_size=8)
    runs = []
    for _ in range(2):
        g = random.Random(123)
        runs.append([mixer(x, rng=g) for _ in range(10)])
    for r1, r2 in zip(*runs):
        assert r1.mode == r2.mode
        assert torch.equal(r1.images, r2.images)
        assert torch.equal(r1.share_b, r2.share_b) and torch.equal(r1.lam, r2.lam)
    other = [mixer(x, rng=random.Random(7)) for _ in range(10)]
    assert any(not torch.equal(a.lam, b.lam) for a, b in zip(runs[0], other))
    # The global RNG path is Python's random, which mmengine's randomness.seed seeds
    random.seed(5)
    a = mixer(x)
    random.seed(5)
    b = mixer(x)
    assert a.mode == b.mode and torch.equal(a.images, b.images)


def test_cutmix_minmax_box_sides():
    x = _images(2, 160, 160)
    mixer = BatchMixer(cutmix_alpha=0.0, cutmix_minmax=(0.2, 0.8), patch_size=16)
    assert mixer.cutmix_alpha == 1.0  # forced on, as timm
    g = random.Random(0)
    for _ in range(20):
        res = mixer(x, rng=g)
        assert res.mode == 'token_cutmix'
        yl, yh, xl, xh = _box_of(res.mask[0].bool())
        cells_h, cells_w = (yh - yl) // 16, (xh - xl) // 16
        assert 2 <= cells_h < 8 and 2 <= cells_w < 8   # randint(int(10*.2), int(10*.8))
        torch.testing.assert_close(res.lam, 1.0 - res.share_b.mean(1), atol=1e-6, rtol=0)


@pytest.fixture
def single_thread():
    """Thousands of tiny ops: intra-op threading only adds overhead (and stalls on busy hosts)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_statistics(single_thread):
    x = _images(2, 32, 32)
    n = 2000
    g = random.Random(0)
    # Raw Beta(1, 1) draws (correct_lam=False reports them): mean 1/2.
    raw = BatchMixer(cutmix_alpha=1.0, correct_lam=False, patch_size=16, return_mask=False)
    lams = torch.tensor([float(raw(x, rng=g).lam[0]) for _ in range(n)])
    assert abs(float(lams.mean()) - 0.5) < 0.03
    assert abs(float(lams.var()) - 1 / 12) < 0.01
    # Mixup with alpha 1: lam uniform as well.
    mix = BatchMixer(mixup_alpha=1.0, cutmix_alpha=0.0, return_mask=False)
    lams = torch.tensor([float(mix(x, rng=g).lam[0]) for _ in range(n)])
    assert abs(float(lams.mean()) - 0.5) < 0.03
    # Corrected pixel-CutMix lam: clipping at the border shrinks boxes.  With box side
    # s = sqrt(1 - u) (u ~ U(0, 1)) and a uniform centre the expected kept area per axis is
    # s - s^2 / 4, so E[lam] = 1 - E[(s - s^2/4)^2] = 1 - (1/2 - 1/5 + 1/48) ~= 0.679.
    big = _images(2, 96, 96)
    pix = BatchMixer(cutmix_alpha=1.0, cutmix_mode='pixel', patch_size=16, return_mask=False)
    lams = torch.tensor([float(pix(big, rng=g).lam[0]) for _ in range(n)])
    assert abs(float(lams.mean()) - (1 - (0.5 - 0.2 + 1 / 48))) < 0.03
    # switch_prob selects the spatial mix that often; prob gates mixing at all.
    both = BatchMixer(mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.3, prob=0.6, patch_size=16,
                      return_mask=False)
    modes = [both(x, rng=g).mode for _ in range(n)]
    frac_none = modes.count('none') / n
    mixed = n - modes.count('none')
    assert abs(frac_none - 0.4) < 0.04
    assert abs(modes.count('token_cutmix') / mixed - 0.3) < 0.04
    assert abs(modes.count('mixup') / mixed - 0.7) < 0.04
    # TokenMix takes exactly round((1 - lam) * N) tokens: lam * N is an integer.
    tm = BatchMixer(cutmix_alpha=0.0, tokenmix_alpha=1.0, patch_size=4, return_mask=False)
    for _ in range(50):
        k = float(tm(x, rng=g).lam[0]) * 64
        assert math.isclose(k, round(k), abs_tol=1e-4)


def test_partner_and_source_labels():
    x = _images(4, 32, 32)
    res = _draw(BatchMixer(patch_size=16), x, 0, 'token_cutmix')
    assert res.partner.tolist() == [3, 2, 1, 0]                       # the flipped batch (timm)
    src = res.source_labels(num_prefix_tokens=2)
    assert src.shape == (4, 2 + 4, 2)
    torch.testing.assert_close(src.sum(-1), torch.ones(4, 6))
    torch.testing.assert_close(src[:, 0, 0], res.lam)
    torch.testing.assert_close(src[:, 2:, 1], res.share_b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('mode', list(MODES))
def test_cuda(mode):
    x = _images(3, 64, 64).cuda()
    res = _draw(BatchMixer(patch_size=16, **MODES[mode]), x, 0, mode)
    for t in (res.images, res.share_b, res.lam, res.partner, res.mask):
        assert t.device == x.device
    torch.testing.assert_close(res.lam, 1.0 - res.share_b.mean(1), atol=1e-6, rtol=0)
    assert torch.equal(res.images[1], x[1])
    g = random.Random(0)
    assert BatchMixer(patch_size=16, **MODES[mode])(x, rng=g).images.device == x.device
