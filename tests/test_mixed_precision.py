"""The label path under mixed precision (CPU autocast standing in for GPU AMP).

* the fused call under float16 / bfloat16: one attention kernel per block, features and their
  gradients exactly plain SDPA's, labels within rounding of the float32 rule written out here,
  label mass 1;
* the precision budget on DeiT-S and Swin-T with trained-like attention
  (``structure_attention_`` of tools/analysis/structured_attention.py): the aligned share of image A
  moves by at most 5e-4 on average and 5e-3 at worst against the float32 path;
* a training step that never reads a tensor back to the host, whichever kernel ``attn_impl='auto'``
  picks;
* ``torch.compile`` gives the eager targets.
"""
import random

import pytest
import torch
import torch.nn.functional as F
from mmengine.optim import OptimWrapper
from mmengine.structures import BaseDataElement
from structured_attention import structure_attention_, structured_mixed_batch  # tools/analysis/structured_attention.py
from torch.profiler import profile

from tlalign_mm.align import fused_attention_with_labels, initial_source_labels
from tlalign_mm.analysis.precision import attention_stats, label_precision
from tlalign_mm.models import TLAImageClassifier
from tlalign_mm.models.backbones.swin import TLASwinBlock, TLASwinTransformer
from tlalign_mm.models.backbones.vit import TLAVisionTransformer

LOW = [torch.bfloat16, torch.float16]
FLASH = 'aten::_scaled_dot_product_flash_attention_for_cpu'


def _ops(fn):
    with profile() as prof:
        fn()
    return [e.name for e in prof.events()]


def _structured_qkv(dtype, b=2, h=3, n=50, d=32, seed=0):
    """q, k, v with peaked, content-dependent attention (q and k share a direction per row)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(b, n, 3 * h * d, generator=g)
    base[..., h * d:2 * h * d] = base[..., :h * d] + 0.3 * torch.randn(b, n, h * d, generator=g)
    base = (base * 1.5).to(dtype).requires_grad_()
    q, k, v = base.view(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
    return base, q, k, v


def _sdpa_reference(dtype, mask: bool, b=2, h=3, n=50, d=32):
    """An attention case and its independent references: ``(labels, attn_mask, g_out, base_r, ref, lab_ref)``.

    ``ref``: plain SDPA on :func:`_structured_qkv` (``base_r.grad`` its gradient against ``g_out``);
    ``lab_ref``: the TL-Align rule ``mean_h softmax(q k^T / sqrt(d) + mask) @ Y`` in float32 on the
    same (rounded) q, k.  The attention is checked to be peaked, so that errors cannot hide in averages.
    """
    labels = torch.softmax(3 * torch.randn(b, n, 2, generator=torch.Generator().manual_seed(1)), -1)
    attn_mask = (torch.randn(1, h, n, n, generator=torch.Generator().manual_seed(2)) * 2).to(dtype) if mask else None
    g_out = torch.randn(b, h, n, d, generator=torch.Generator().manual_seed(3)).to(dtype)
    base_r, q, k, v = _structured_qkv(dtype, b, h, n, d)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    (ref.float() * g_out.float()).sum().backward()
    with torch.no_grad():
        logits = (q.float() @ k.float().transpose(-2, -1)) * d ** -0.5
        if mask:
            logits = logits + attn_mask.float()
        attn = logits.softmax(-1)
        lab_ref = attn.mean(1) @ labels
    assert attn.max(-1).values.mean() > 0.3
    return labels, attn_mask, g_out, base_r, ref, lab_ref


@pytest.mark.parametrize('dtype', LOW)
@pytest.mark.parametrize('mask', [False, True])
def test_fused_low_precision_call_features_gradients_labels_and_mass(dtype, mask):
    labels, attn_mask, g_out, base_r, ref, lab_ref = _sdpa_reference(dtype, mask)

    base, q, k, v = _structured_qkv(dtype)
    res = {}

    def run():
        out, lab = fused_attention_with_labels(q, k, v, labels, attn_mask=attn_mask)
        (out.float() * g_out.float()).sum().backward()
        res.update(out=out, lab=lab)

    ops = _ops(run)
    assert ops.count(FLASH) == 1 and 'aten::_scaled_dot_product_flash_attention_for_cpu_backward' in ops
    assert res['out'].dtype == dtype and torch.equal(res['out'], ref)
    assert torch.equal(base.grad, base_r.grad)
    lab = res['lab']
    assert lab.dtype == torch.float32 and not lab.requires_grad
    tol = 4e-3 if dtype == torch.bfloat16 else 5e-4      # the kernel rounds weights and outputs
    assert (lab - lab_ref).abs().max() <= tol
    assert (lab - lab_ref).abs().max() > 0               # it really ran in low precision
    assert (lab.sum(-1) - 1).abs().max() <= 1e-6         # renormalised: mass 1


@pytest.mark.parametrize('dtype', [torch.float32] + LOW)
@pytest.mark.parametrize('mask', [False, True])
def test_generic_padded_sdpa_path(monkeypatch, dtype, mask):
    """The path other devices (CUDA) take: one public SDPA call on padded q/k/v, autograd
    through it.  Forced here on CPU by hiding the CPU flash op."""
    from tlalign_mm.align import propagate
    monkeypatch.setattr(propagate, '_FLASH_CPU', None)
    b, h, n, d = 2, 3, 50, 32
    labels = torch.softmax(3 * torch.randn(b, n, 2, generator=torch.Generator().manual_seed(1)), -1)
    g_out = torch.randn(b, h, n, d, generator=torch.Generator().manual_seed(3)).to(dtype)

    # (a mask that needs a gradient is written out on CPU whatever the path: tested above)
    mask_r = (torch.randn(1, h, n, n, generator=torch.Generator().manual_seed(2)) * 2).to(dtype) if mask else None
    base_r, q, k, v = _structured_qkv(dtype)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_r)
    (ref.float() * g_out.float()).sum().backward()
    with torch.no_grad():
        logits = (q.float() @ k.float().transpose(-2, -1)) * d ** -0.5 + (mask_r.float() if mask else 0)
        lab_ref = logits.softmax(-1).mean(1) @ labels

    base, q, k, v = _structured_qkv(dtype)
    ops = []

    def run():
        out, lab = fused_attention_with_labels(q, k, v, labels, attn_mask=mask_r)
        (out.float() * g_out.float()).sum().backward()
        ops.append(lab)

    names = _ops(run)
    lab = ops[0]
    assert names.count('aten::scaled_dot_product_attention') == 1
    tol = {torch.float32: 1e-6, torch.bfloat16: 4e-3, torch.float16: 5e-4}[dtype]
    assert (lab - lab_ref).abs().max() <= tol and (lab.sum(-1) - 1).abs().max() <= 1e-5
    # the features' gradient through the padded call: plain SDPA's up to the rounding of the dtype
    gtol = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}[dtype]
    err = (base.grad.float() - base_r.grad.float()).abs().max() / base_r.grad.float().abs().max()
    assert err <= gtol, err


def test_label_options_are_checked_by_name():
    with pytest.raises(ValueError, match='label_dtype'):
        TLAVisionTransformer('deit-tiny', label_dtype='bfloat16')
    with pytest.raises(ValueError, match='attn_impl'):
        TLASwinTransformer('tiny', attn_impl='fast')
    _, q, k, v = _structured_qkv(torch.float32)
    with pytest.raises(ValueError, match='label_dtype'):
        fused_attention_with_labels(q, k, v, torch.ones(2, 50, 2) / 2, label_dtype='half')


def _tiny_vit(**kw):
    torch.manual_seed(0)
    vit = TLAVisionTransformer(dict(embed_dims=64, num_layers=3, num_heads=2), img_size=32, out_type='cls_token',
                               **kw)
    vit.init_weights()
    return structure_attention_(vit)


@pytest.mark.slow
@pytest.mark.parametrize('dtype', LOW)
def test_deit_under_autocast_runs_one_attention_kernel_per_block(dtype):
    x = torch.randn(2, 3, 32, 32)
    y0 = initial_source_labels(torch.rand(2, 4), torch.tensor([0.3, 0.6]))
    counts = {}
    for label_dtype in ('auto', 'float32'):
        vit = _tiny_vit(label_dtype=label_dtype, attn_impl='fused')   # ('auto' may materialise on CPU)
        with torch.autocast('cpu', dtype=dtype):
            ops = _ops(lambda vit=vit: vit(x, y0))
        counts[label_dtype] = ops.count(FLASH) + ops.count('aten::_scaled_dot_product_attention_math')
    assert counts['auto'] == 3                  # the labels ride in the features' call
    assert counts['float32'] == 6               # the float32 option adds a label call per block


def _param_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize('dtype', LOW)
@pytest.mark.parametrize('label_dtype', ['auto', 'float32'])
@pytest.mark.parametrize('attn_impl', ['fused', 'materialised'])
def test_labels_leave_every_parameter_gradient_unchanged_under_autocast(dtype, label_dtype, attn_impl):
    vit = _tiny_vit(label_dtype=label_dtype, attn_impl=attn_impl)
    x = torch.randn(2, 3, 32, 32)
    y0 = torch.softmax(torch.randn(2, 5, 2), -1)
    swin = TLASwinBlock(32, 2, window_size=4, shift=True, label_dtype=label_dtype, attn_impl=attn_impl)
    torch.nn.init.normal_(swin.attn.relative_position_bias_table, std=0.5)
    t = torch.randn(2, 64, 32)
    ys = torch.softmax(torch.randn(2, 64, 2), -1)
    r_vit, r_swin = torch.randn(2, 64), torch.randn(2, 64, 32)
    for model, run in ((vit, lambda lab: (vit(x, lab)[0][0] if lab is not None else vit(x)[0]) * r_vit),
                       (swin, lambda lab: swin(t, (8, 8), lab)[0] * r_swin)):
        model.train()
        grads = []
        for lab in (None, y0 if model is vit else ys):
            with torch.autocast('cpu', dtype=dtype):
                out = run(lab)
            out.float().sum().backward()
            grads.append(_param_grads(model))
            model.zero_grad()
        g_plain, g_lab = grads
        assert g_plain.keys() == g_lab.keys() and len(g_plain) > 5
        for name in g_plain:
            assert torch.equal(g_plain[name], g_lab[name]), name


def _structured(name):
    torch.manual_seed(0)
    if name == 'deit-small':
        m = TLAVisionTransformer('deit-small', out_type='cls_token')
    else:
        m = TLASwinTransformer('tiny', out_indices=(3,), out_type='avg_featmap')
    m.init_weights()
    m.eval()
    return m


@pytest.mark.parametrize('name', ['deit-small', 'swin-tiny'])
def test_precision_budget_with_trained_like_attention(name):
    model = _structured(name)
    x, y0, _ = structured_mixed_batch(model, batch=4)
    uniform = attention_stats(model, x)
    structure_attention_(model, seed=0)
    stats = attention_stats(model, x)
    # the attention is far from the near-uniform attention of random init
    assert uniform['entropy_ratio'] > 0.99 and stats['entropy_ratio'] < 0.8 and stats['sharp_rows'] > 0.05
    for dtype in LOW:
        r = label_precision(model, x, y0, dtype)
        assert r['fluctuation_mean'] > 0.02, r            # the labels really moved away from lam
        assert 0 < r['share_absdiff_mean'] <= 5e-4, (dtype, r)
        assert r['share_absdiff_max'] <= 5e-3, (dtype, r)
        assert r['mass_err_max'] <= 1e-3, (dtype, r)


class _NoSync:
    """Make every way of reading a tensor back to the host raise (the device-sync points)."""
    NAMES = ('item', 'tolist', 'cpu', 'numpy', '__float__', '__int__')

    def __enter__(self):
        self.saved = {n: getattr(torch.Tensor, n) for n in self.NAMES}

        def raiser(name):
            def f(*args, **kwargs):
                raise AssertionError(f'Tensor.{name} called inside the training step')
            return f
        for n in self.NAMES:
            setattr(torch.Tensor, n, raiser(n))

    def __exit__(self, *exc):
        for n, f in self.saved.items():
            setattr(torch.Tensor, n, f)


def _classifier(arch, tl_align, mixer):
    torch.manual_seed(0)
    if arch == 'vit':
        bb = dict(type='TLAVisionTransformer', arch=dict(embed_dims=32, num_layers=2, num_heads=2),
                  img_size=32, patch_size=8, out_type='cls_token')
        mixer = dict(mixer, patch_size=8)
    else:
        bb = dict(type='TLASwinTransformer', arch=dict(embed_dims=16, depths=(2, 2), num_heads=(1, 2)),
                  window_size=4, out_indices=(1,), out_type='avg_featmap')
        mixer = dict(mixer, patch_size=4, token_grid_size=8)
    m = TLAImageClassifier(bb, head=dict(type='TLALinearClsHead', num_classes=5),
                           label_rule=dict(type='TLAlign' if tl_align else 'Area'),
                           align_stats_interval=2,
                           data_preprocessor=dict(type='TLAClsDataPreprocessor', seed=0, mixer=mixer,
                                                  random_erasing=dict(re_prob=0.5)))
    m.init_weights()
    return m


def _data(step):
    g = torch.Generator().manual_seed(step)
    imgs = torch.randint(0, 256, (4, 3, 32, 32), generator=g, dtype=torch.uint8)
    samples = []
    for i in range(4):
        ds = BaseDataElement()
        ds.set_field(torch.tensor([(i + step) % 5]), 'gt_label')
        samples.append(ds)
    return dict(inputs=imgs, data_samples=samples)


@pytest.mark.parametrize('arch', ['vit', 'swin'])
@pytest.mark.parametrize('tl_align', [True, False], ids=['tl-align', 'cutmix'])
@pytest.mark.parametrize('mixer', [dict(cutmix_alpha=1.0), dict(mixup_alpha=0.8, cutmix_alpha=1.0, tokenmix_alpha=1.0)],
                         ids=['token-cutmix', 'mixup-cutmix-tokenmix'])
@pytest.mark.parametrize('matrix_units', [False, True], ids=['fused', 'materialised'])
def test_train_step_never_reads_a_tensor_back(monkeypatch, arch, tl_align, mixer, matrix_units):
    # attn_impl='auto' decides on the host: with bfloat16 matrix units it materialises the attention
    from tlalign_mm.align import propagate
    monkeypatch.setitem(propagate._CPU_MATRIX_UNITS, torch.bfloat16, matrix_units)
    model = _classifier(arch, tl_align, mixer)
    wrapper = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True))
    random.seed(0)
    logs = []
    with torch.autocast('cpu', dtype=torch.bfloat16):
        for step in range(4):
            with _NoSync():
                logs.append(model.train_step(_data(step), wrapper))
    assert all(torch.isfinite(log['loss']) for log in logs)
    carried = ['align/lam_gap' in log for log in logs]
    assert carried == ([True] * 4 if tl_align else [True, False, True, False])
    assert model.data_preprocessor._mix_step == 4 and int(model.data_preprocessor.mix_step) == 4


@pytest.mark.slow
@pytest.mark.parametrize('arch', ['vit', 'swin'])
def test_compiled_train_step_gives_the_eager_targets_without_recompiling(arch):
    """mmengine's ``compile=True`` compiles ``model.train_step``: the same losses and alignment
    statistics as eager, step by step, with trained-like attention so that the aligned targets
    really differ from the area targets; mixing draws stay out of the graph (no recompiles)."""
    import torch._dynamo as dynamo
    runs = {}
    for compiled in (False, True):
        model = _classifier(arch, True, dict(cutmix_alpha=1.0, tokenmix_alpha=1.0))
        structure_attention_(model.backbone)
        wrapper = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=1e-4))
        dynamo.reset()
        step = torch.compile(model.train_step) if compiled else model.train_step
        random.seed(0)
        with dynamo.config.patch(error_on_recompile=compiled):
            runs[compiled] = [step(_data(i), wrapper) for i in range(4)]
    gaps = []
    for eager, comp in zip(runs[False], runs[True]):
        assert eager.keys() == comp.keys()
        for key in eager:
            assert (eager[key] - comp[key]).abs() <= 1e-5 * (1 + eager[key].abs()), key
        gaps.append(float(eager['align/lam_gap']))
    assert max(gaps) > 1e-2          # the aligned targets are not the area targets
