"""``attn_impl``: which attention kernel a block takes, and that the two kernels agree.

* the dispatcher (:func:`resolve_attn_impl`) on the host: the materialised softmax on a CPU with
  bfloat16 / float16 matrix units under low-precision autocast (or low-precision q), the fused
  kernel in float32, on CPUs without such units and on other devices; ``attn_impl`` overrides
  it both ways; the path is observed in the backbones by the functions called and by the
  profiler's kernels, with labels and without;
* the two paths against each other and against independent references (``F.scaled_dot_product_attention``
  for the features and their gradients, the TL-Align rule written out for the labels), in float32
  and under bfloat16 autocast, with trained-like attention
  (``structure_attention_`` of tools/analysis/structured_attention.py);
* the private CPU flash ops behind their version / signature guard, and the public fallback.
"""
import pytest
import torch
from structured_attention import structure_attention_, structured_mixed_batch  # tools/analysis/structured_attention.py
from test_mixed_precision import FLASH, LOW, _ops, _param_grads, _sdpa_reference, _structured_qkv

from tlalign_mm.align import initial_source_labels, propagate, resolve_attn_impl
from tlalign_mm.analysis.precision import label_precision
from tlalign_mm.models.backbones.pvt import TLASpatialReductionAttention
from tlalign_mm.models.backbones.swin import TLASwinBlock
from tlalign_mm.models.backbones.vit import TLAVisionTransformer


@pytest.fixture
def matrix_units(monkeypatch):
    """Set what the dispatcher believes about this CPU's bfloat16 / float16 matrix units."""
    def set_units(present: bool):
        for dtype in LOW:
            monkeypatch.setitem(propagate._CPU_MATRIX_UNITS, dtype, present)
    return set_units


def _q(dtype=torch.float32, device='cpu'):
    return torch.zeros(1, 2, 4, 8, dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------- the dispatcher
@pytest.mark.parametrize('dtype', LOW)
def test_auto_materialises_on_cpu_under_low_precision_autocast_with_matrix_units(matrix_units, dtype):
    matrix_units(True)
    assert resolve_attn_impl('auto', _q()) == 'fused'                        # float32: fused
    with torch.autocast('cpu', dtype=dtype):
        assert resolve_attn_impl('auto', _q()) == 'materialised'             # q float32, kernels low
        assert resolve_attn_impl('auto', _q(dtype)) == 'materialised'
        assert resolve_attn_impl('fused', _q(dtype)) == 'fused'              # the override
    assert resolve_attn_impl('auto', _q(dtype)) == 'materialised'            # a low-precision model
    with torch.autocast('cpu', dtype=dtype, enabled=False):
        assert resolve_attn_impl('auto', _q()) == 'fused'
    assert resolve_attn_impl('materialised', _q()) == 'materialised'         # the override, float32


@pytest.mark.parametrize('dtype', LOW)
def test_auto_stays_fused_without_matrix_units_and_off_the_cpu(matrix_units, dtype):
    matrix_units(False)      # low-precision matmuls emulated: the fused kernel is the faster one
    with torch.autocast('cpu', dtype=dtype):
        assert resolve_attn_impl('auto', _q(dtype)) == 'fused'
    matrix_units(True)       # another device: the fused kernel whatever the precision
    assert resolve_attn_impl('auto', _q(dtype, device='meta')) == 'fused'
    assert resolve_attn_impl('auto', _q(device='meta')) == 'fused'


@pytest.mark.parametrize('amx,avx512_bf16,amx_fp16,want_bf16,want_fp16', [
    (True, False, False, True, False), (False, True, False, True, False), (False, False, True, False, True),
    (False, False, False, False, False), (None, None, None, False, False)])
def test_matrix_units_probe_reads_torch_cpu(monkeypatch, amx, avx512_bf16, amx_fp16, want_bf16, want_fp16):
    """bfloat16 has matrix units with AMX tiles or AVX512-BF16, float16 with AMX-FP16 only; a torch without
    the private probes (None: removed) reports none.  The probes are stubbed: this machine has one answer."""
    for name, value in (('_is_amx_tile_supported', amx), ('_is_avx512_bf16_supported', avx512_bf16),
                        ('_is_amx_fp16_supported', amx_fp16)):
        if value is None:
            monkeypatch.delattr(torch.cpu, name, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, name, lambda v=value: v)
    assert propagate._cpu_matrix_units() == {torch.bfloat16: want_bf16, torch.float16: want_fp16}


def test_bad_attn_impl_is_named():
    with pytest.raises(ValueError, match='attn_impl'):
        resolve_attn_impl('flash', _q())
    with pytest.raises(ValueError, match='attn_impl'):
        TLAVisionTransformer('deit-tiny', attn_impl='explicit')
    with pytest.raises(ValueError, match='attn_impl'):
        TLASwinBlock(32, 2, attn_impl='math')


def _record_paths(monkeypatch):
    """Wrap the two implementations; return the list of the paths taken, one entry per call."""
    taken = []
    for name, tag in (('fused_attention_with_labels', 'fused'),
                      ('materialised_attention_with_labels', 'materialised')):
        fn = getattr(propagate, name)

        def wrapped(*args, fn=fn, tag=tag, **kw):
            taken.append(tag)
            return fn(*args, **kw)
        monkeypatch.setattr(propagate, name, wrapped)
    return taken


def _tiny_vit(**kw):
    torch.manual_seed(0)
    vit = TLAVisionTransformer(dict(embed_dims=64, num_layers=3, num_heads=2), img_size=32, patch_size=8,
                               out_type='cls_token', **kw)
    vit.init_weights()
    return structure_attention_(vit)


@pytest.mark.parametrize('with_labels', [True, False], ids=['labels', 'plain'])
@pytest.mark.parametrize('attn_impl,amp,expected', [
    ('auto', torch.bfloat16, 'materialised'), ('auto', None, 'fused'),
    ('fused', torch.bfloat16, 'fused'), ('materialised', None, 'materialised')])
def test_backbone_takes_the_chosen_path_with_and_without_labels(monkeypatch, matrix_units, attn_impl, amp, expected,
                                                                with_labels):
    matrix_units(True)
    vit = _tiny_vit(attn_impl=attn_impl).train()
    x = torch.randn(2, 3, 32, 32)
    y0 = initial_source_labels(torch.rand(2, 16), torch.tensor([0.3, 0.6])) if with_labels else None
    taken = _record_paths(monkeypatch)

    def run():
        with torch.autocast('cpu', dtype=amp or torch.float32, enabled=amp is not None):
            out = vit(x, y0) if with_labels else vit(x)
        (out[0][0] if with_labels else out[0]).float().sum().backward()
    ops = _ops(run)
    assert taken == [expected] * 3
    if expected == 'materialised':   # no attention kernel at all: the softmax is written out
        assert FLASH not in ops and 'aten::scaled_dot_product_attention' not in ops
        assert ops.count('aten::_softmax') == 3
    else:
        assert ops.count(FLASH) == 3 and 'aten::_softmax' not in ops


def test_swin_and_pvt_attention_take_the_chosen_path(monkeypatch, matrix_units):
    matrix_units(True)
    taken = _record_paths(monkeypatch)
    swin = TLASwinBlock(32, 2, window_size=4, shift=True).eval()
    pvt = TLASpatialReductionAttention(32, 2, sr_ratio=2).eval()
    t = torch.randn(2, 64, 32)
    ys = torch.softmax(torch.randn(2, 64, 2), -1)
    with torch.no_grad():
        for amp, expected in ((False, 'fused'), (True, 'materialised')):
            taken.clear()
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=amp):
                swin(t, (8, 8), ys)
                pvt(t, (8, 8), ys)
            assert taken == [expected] * 2


# ---------------------------------------------------------------------------------------- agreement
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('mask', [False, True])
def test_materialised_kernel_against_sdpa_and_the_label_rule(dtype, mask):
    labels, attn_mask, g_out, base_r, ref, lab_ref = _sdpa_reference(dtype, mask)

    outs = {}
    for impl in ('fused', 'materialised'):
        base, q, k, v = _structured_qkv(dtype)
        out, lab = propagate.attention_with_labels(impl, q, k, v, labels, attn_mask)
        (out.float() * g_out.float()).sum().backward()
        outs[impl] = out, lab, base.grad
    out, lab, grad = outs['materialised']
    assert out.dtype == dtype and lab.dtype == torch.float32 and not lab.requires_grad
    # features and gradients: SDPA's up to the rounding of the dtype
    ftol, gtol = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 3e-2)}[dtype]
    assert (out.float() - ref.float()).abs().max() / ref.float().abs().max() <= ftol
    err = (grad.float() - base_r.grad.float()).abs().max() / base_r.grad.float().abs().max()
    assert err <= gtol, err
    # labels: the rule, within the tolerance the fused kernel is held to (tests/test_mixed_precision.py)
    tol = {torch.float32: 1e-6, torch.bfloat16: 4e-3}[dtype]
    assert (lab - lab_ref).abs().max() <= tol
    assert (lab.sum(-1) - 1).abs().max() <= 1e-5
    assert (lab - outs['fused'][1]).abs().max() <= 2 * tol


def test_both_paths_give_the_same_float32_step():
    """Features, labels and every parameter gradient of a DeiT, fused vs materialised, float32."""
    x = torch.randn(2, 3, 32, 32)
    y0 = torch.softmax(3 * torch.randn(2, 17, 2, generator=torch.Generator().manual_seed(4)), -1)
    r = torch.randn(2, 64)
    res = {}
    for impl in ('fused', 'materialised'):
        vit = _tiny_vit(attn_impl=impl).train()
        (feat,), lab = vit(x, y0)
        (feat * r).sum().backward()
        res[impl] = feat, lab, _param_grads(vit)
    (fa, la, ga), (fb, lb, gb) = res['fused'], res['materialised']
    assert (fa - fb).abs().max() <= 1e-5
    assert (la - lb).abs().max() <= 1e-6
    assert (la[:, 0] - y0[:, 0]).abs().max() > 1e-2          # the labels really moved
    assert ga.keys() == gb.keys() and len(ga) > 5
    for name in ga:
        assert (ga[name] - gb[name]).abs().max() <= 1e-5 * (1 + ga[name].abs().max()), name


@pytest.mark.parametrize('name', ['deit-small', 'swin-tiny'])
def test_both_paths_within_the_precision_budget_under_bfloat16(name):
    """The aligned share of image A under bfloat16 autocast against float32, each path: within the
    budget of tests/test_mixed_precision.py (5e-4 mean, 5e-3 worst), and the two paths within it
    of each other."""
    from tlalign_mm.models.backbones.swin import TLASwinTransformer
    shares = {}
    for impl in ('fused', 'materialised'):
        torch.manual_seed(0)
        if name == 'deit-small':
            m = TLAVisionTransformer('deit-small', out_type='cls_token', attn_impl=impl)
        else:
            m = TLASwinTransformer('tiny', out_indices=(3,), out_type='avg_featmap', attn_impl=impl)
        m.init_weights()
        m.eval()
        x, y0, _ = structured_mixed_batch(m, batch=2)
        structure_attention_(m, seed=0)
        r = label_precision(m, x, y0, torch.bfloat16)
        assert r['fluctuation_mean'] > 0.02, r
        assert 0 < r['share_absdiff_mean'] <= 5e-4 and r['share_absdiff_max'] <= 5e-3, (impl, r)
        assert r['mass_err_max'] <= 1e-3, (impl, r)
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
            _, lab = m(x, y0)
        shares[impl] = lab[:, 0, 0] if name == 'deit-small' else lab.mean(1)[:, 0]
    assert (shares['fused'] - shares['materialised']).abs().max() <= 5e-3


# ---------------------------------------------------------------------------------------- the aten guard
def test_private_flash_ops_only_on_known_torch_and_signature():
    fwd, bwd = propagate._flash_cpu_ops()
    assert (fwd, bwd) == (propagate._FLASH_CPU, propagate._FLASH_CPU_BACKWARD)
    assert fwd is torch.ops.aten._scaled_dot_product_flash_attention_for_cpu           # torch 2.14 has them
    assert propagate._flash_cpu_ops('2.2.1') == (None, None)                            # before attn_mask
    assert propagate._flash_cpu_ops('2.3.0')[0] is fwd

    class RenamedArgs:    # a torch whose private op changed its arguments
        _scaled_dot_product_flash_attention_for_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        _scaled_dot_product_flash_attention_for_cpu_backward = torch.ops.aten._efficient_attention_backward

    class Missing:        # ... or dropped it
        _scaled_dot_product_flash_attention_for_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu

    assert propagate._flash_cpu_ops('2.14.1', RenamedArgs) == (None, None)
    assert propagate._flash_cpu_ops('2.14.1', Missing) == (None, None)


@pytest.mark.parametrize('version', ['2.14.1', '2.2.1'], ids=['private-op', 'public-fallback'])
def test_fused_path_on_either_side_of_the_guard(monkeypatch, version):
    fwd, bwd = propagate._flash_cpu_ops(version)
    monkeypatch.setattr(propagate, '_FLASH_CPU', fwd)
    monkeypatch.setattr(propagate, '_FLASH_CPU_BACKWARD', bwd)
    labels, _, g_out, base_r, ref, lab_ref = _sdpa_reference(torch.float32, False)
    base, q, k, v = _structured_qkv(torch.float32)
    res = {}

    def run():
        out, lab = propagate.fused_attention_with_labels(q, k, v, labels)
        (out * g_out).sum().backward()
        res.update(out=out, lab=lab)
    ops = _ops(run)
    if fwd is None:      # (the public call may run the same kernel inside)
        assert 'aten::scaled_dot_product_attention' in ops
    else:
        assert 'aten::scaled_dot_product_attention' not in ops and ops.count(FLASH) == 1
    assert (res['out'] - ref).abs().max() <= 1e-5
    assert (base.grad - base_r.grad).abs().max() <= 1e-5
    assert (res['lab'] - lab_ref).abs().max() <= 1e-6
