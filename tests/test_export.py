"""Export to other libraries (tlalign_mm/checkpoint/export.py, the family modules' writers,
tools/convert_checkpoint.py --to).

Each (backbone, target) pair: a small model of ours with random weights is exported, the target
model is built by the stock library alone from the build line the export gives (timm.create_model,
mmseg / mmdet / mmpretrain backbones; no tlalign_mm class), loaded with strict=True, and its logits
(timm, with our head) or every out_indices feature map (mm) are compared with ours on one random
input.  Then the export is read back by our loader, and the CLI's files, errors and formats.
"""
from __future__ import annotations

import copy
import importlib
import os
import re
import subprocess
import sys

import pytest
import timm
import torch

from tlalign_mm import TLASwinTransformer, TLAVisionTransformer
from tlalign_mm.checkpoint import export_checkpoint, export_state_dict, load_checkpoint_file
from tlalign_mm.checkpoint.export import EXPORT_TARGETS
from tlalign_mm.checkpoint.layouts import convert_state_dict
from tlalign_mm.models import TLAPyramidVisionTransformer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-5
PVT_ARCH = dict(embed_dims=(16, 32, 32, 64), depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4))
MAX_DIFF: dict = {}   # (backbone, target) -> measured max |ours - theirs|, printed at the end with -s


def _randomise(model, seed=0):
    """Every parameter random (LayerNorms and tables off their init), so a misplaced tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            unit = 1.0 if 'norm' in n and n.endswith('weight') else 0.0
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if p.dim() > 1 else 0.1) + unit)
    return model.eval()


def deit(out_type='featmap', **kw):
    # 64 channels per head: the build line's num_heads rule (DeiT's) holds
    return _randomise(TLAVisionTransformer(dict(embed_dims=64, num_layers=2, num_heads=1), img_size=32,
                                           out_type=out_type, **kw))


def swin(out_indices=(1,), out_type='featmap', depths=(2, 2), window=7):
    heads = (1, 2, 4)[:len(depths)]
    return _randomise(TLASwinTransformer(dict(embed_dims=16, depths=depths, num_heads=heads), window_size=window,
                                         out_indices=out_indices, out_type=out_type, drop_path_rate=0.0))


def pvt(version=2, out_type='featmap', out_indices=(0, 1, 2, 3)):
    return _randomise(TLAPyramidVisionTransformer(dict(PVT_ARCH, version=version), img_size=64, out_type=out_type,
                                                  out_indices=out_indices, drop_path_rate=0.0))


def head_of(dim, k=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {'weight': torch.randn(k, dim, generator=g) * 0.2, 'bias': torch.randn(k, generator=g)}


def build(result, **extra):
    """The stock model of the export's build line (extra keyword arguments appended)."""
    namespace = {'timm': timm}
    for lib in ('mmseg', 'mmdet', 'mmpretrain'):
        if result.build.startswith(lib):
            importlib.import_module(f'{lib}.models.backbones')
            namespace[lib] = importlib.import_module(lib)
    line = result.build[:-1] + ''.join(f', {k}={v!r}' for k, v in extra.items()) + ')'
    model = eval(line, namespace)   # noqa: S307  (our own build line, the thing under test)
    model.load_state_dict(result.state_dict, strict=True)
    model.eval()       # (mm's train() returns None: no chaining)
    return model


def compare(key, theirs, ours, x, head=None):
    """Assert the stock model's outputs (logits, or every feature map) equal ours within 1e-5 in
    float64 (the key mapping alone: a misplaced tensor changes them at O(1)); record the float32
    differences too (the summation order of two implementations, about 1e-6 relative)."""
    def run(model, dt, mine):
        with torch.no_grad():
            out = copy.deepcopy(model).to(dt)(x.to(dt))
        if mine and head is not None:
            out = [torch.nn.functional.linear(out[-1], head['weight'].to(dt), head['bias'].to(dt))]
        return [out] if isinstance(out, torch.Tensor) else list(out)

    for dt in (torch.float32, torch.float64):
        got, want = run(theirs, dt, False), run(ours, dt, True)
        assert len(got) == len(want) and all(a.shape == b.shape for a, b in zip(got, want))
        diff = max((a - b).abs().max().item() for a, b in zip(got, want))
        MAX_DIFF[key + (str(dt)[6:],)] = diff
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)


@pytest.fixture(scope='module', autouse=True)
def _report_diffs():
    yield
    for k, v in sorted(MAX_DIFF.items()):
        print(f'max |ours - theirs| {k[0]} -> {k[1]} ({k[2]}): {v:.2e}')


# ---------------------------------------------------------------------------------------------
# timm: logits with our head
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize('readout', ['cls_token', 'avg_featmap'])
def test_deit_to_timm_gives_our_logits(readout):
    ours = deit(out_type=readout)
    head = head_of(64)
    res = export_state_dict(ours.state_dict(), 'timm', head, readout)
    assert res.layout == 'timm-vit' and 'head.weight' in res.state_dict
    assert ("global_pool='avg', fc_norm=False" if readout == 'avg_featmap' else "global_pool='token'") in res.build
    theirs = build(res)
    compare(('deit', f'timm ({readout})'), theirs, ours, torch.randn(2, 3, 32, 32), head)


def test_swin_to_timm_gives_our_logits():
    ours = swin(out_indices=(1,), out_type='avg_featmap')
    head = head_of(32)
    res = export_state_dict(ours.state_dict(), 'timm', head)
    assert res.layout == 'timm-swin' and 'head.fc.weight' in res.state_dict and "global_pool='avg'" in res.build
    theirs = build(res, img_size=56)
    # maps 14 (2x2 shifted windows) and 7 (one window, no shift)
    compare(('swin', 'timm'), theirs, ours, torch.randn(2, 3, 56, 56), head)


def test_pvt_v2_to_timm_gives_our_logits():
    ours = pvt(2, out_type='avg_featmap', out_indices=(3,))
    head = head_of(64)
    res = export_state_dict(ours.state_dict(), 'timm', head)
    assert res.layout == 'timm-pvt'
    theirs = build(res)
    compare(('pvt v2', 'timm'), theirs, ours, torch.randn(2, 3, 64, 64), head)


# ---------------------------------------------------------------------------------------------
# mmseg / mmdet / mmpretrain: every out_indices feature
# ---------------------------------------------------------------------------------------------
@pytest.mark.mm
def test_deit_to_mmseg_gives_our_features():
    ours = deit(out_indices=(0, 1))
    res = export_state_dict(ours.state_dict(), 'mmseg')
    assert res.layout == 'mmseg-vit'
    theirs = build(res)
    theirs.out_indices = [0, 1]
    compare(('deit', 'mmseg'), theirs, ours, torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize('distilled', [False, True])
def test_deit_to_mmpretrain_gives_our_features(distilled):
    """mmpretrain's (Distilled)VisionTransformer loads our export strictly and gives our features
    (tools/setup_env.sh installs mmpretrain: requirements/mmpretrain.txt)."""
    pytest.importorskip('mmpretrain.models', reason='mmpretrain is not installed')
    ours = deit(out_indices=(0, 1), distilled=distilled)
    res = export_state_dict(ours.state_dict(), 'mmpretrain')
    assert res.layout == 'mmpretrain-vit' and ('Distilled' in res.build) == distilled
    theirs = build(res)
    theirs.out_indices = [0, 1]
    compare(('deit' + ' distilled' * distilled, 'mmpretrain'), theirs, ours, torch.randn(2, 3, 32, 32))


@pytest.mark.mm
@pytest.mark.parametrize('lib', ['mmseg', 'mmdet'])
def test_swin_to_mm_gives_our_features(lib):
    ours = swin(out_indices=(0, 1, 2), depths=(2, 2, 2), window=3)
    res = export_state_dict(ours.state_dict(), lib)
    assert res.layout == 'mm-swin' and 'out_indices=(0, 1, 2)' in res.build
    theirs = build(res)
    # maps 16, 8, 4: each larger than the window, so both shift everywhere
    compare(('swin', lib), theirs, ours, torch.randn(2, 3, 64, 64))


def _release_eps(mm):
    """mmdet's PVT norms are eps 1e-6 throughout; the release (and ours) use 1e-5 in the patch
    embeddings and the reduction norms: set those on the stock instance, so the key mapping
    alone is compared."""
    for name, m in mm.named_modules():
        if isinstance(m, torch.nn.LayerNorm) and (name.endswith('.0.norm') or name.endswith('attn.norm')):
            m.eps = 1e-5
    return mm


@pytest.mark.mm
@pytest.mark.parametrize('version', [1, 2])
def test_pvt_to_mmdet_gives_our_features(version):
    ours = pvt(version)
    if version == 1:   # mmdet's v1 is dense: it has no final norm (mmdet's pvt_convert drops it too)
        with pytest.raises(ValueError, match=r"would drop 2 parameter\(s\).*'norm.weight', 'norm.bias'.*allow_drop"):
            export_state_dict(ours.state_dict(), 'mmdet')
    res = export_state_dict(ours.state_dict(), 'mmdet', allow_drop=version == 1)
    assert res.layout == 'mm-pvt' and ('PyramidVisionTransformerV2' in res.build) == (version == 2)
    theirs = _release_eps(build(res))
    compare((f'pvt v{version}', 'mmdet'), theirs, ours, torch.randn(2, 3, 64, 64))


# ---------------------------------------------------------------------------------------------
# reading the exports back
# ---------------------------------------------------------------------------------------------
PAIRS = [('deit', 'timm'), ('deit', 'mmseg'), ('deit', 'mmpretrain'), ('swin', 'timm'), ('swin', 'mmseg'),
         ('swin', 'mmdet'), ('pvt2', 'timm'), ('pvt2', 'mmdet'), ('pvt1', 'mmdet'), ('pvt1cls', 'mmdet')]


def _model(name):
    return {'deit': lambda: deit(), 'swin': lambda: swin(out_indices=(0, 1)), 'pvt2': lambda: pvt(2),
            'pvt1': lambda: pvt(1), 'pvt1cls': lambda: pvt(1, 'cls_token', (3,))}[name]()


@pytest.mark.parametrize('name,target', PAIRS)
def test_export_reads_back_identically(name, target):
    ours = _model(name).state_dict()
    res = export_state_dict(ours, target, head_of(64), 'cls_token', allow_drop=True)
    back, layout, _ = convert_state_dict(res.state_dict)
    assert layout == res.layout
    kept = {k: v for k, v in ours.items() if k not in res.dropped}
    if name == 'pvt1cls':      # the class-token row of pos_embed4 is dropped with the token
        assert sorted(res.dropped) == ['cls_token', 'norm.bias', 'norm.weight',
                                       'stages.3.pos_embed[:, 0] (class-token row)']
        kept = {k: v for k, v in kept.items() if k not in ('norm.weight', 'norm.bias', 'cls_token')}
        kept['stages.3.pos_embed'] = kept['stages.3.pos_embed'][:, 1:]
    assert sorted(back) == sorted(kept)
    for k, v in kept.items():
        assert torch.equal(back[k], v), k


def _flat_pvt(state_dict):
    """A PVT state dict as the backbone saved it before its stages (``stages.{i}.blocks`` was
    ``block{i+1}``, and so on), in the order it listed them: its own parameters (``pos_embed{i}``,
    ``cls_token``) before its modules."""
    def flat(k):
        m = re.fullmatch(r'stages\.(\d+)\.(patch_embed|pos_embed|blocks|norm)(\..*)?', k)
        return k if m is None else (f"{m.group(2).replace('blocks', 'block')}{int(m.group(1)) + 1}"
                                    f"{m.group(3) or ''}")
    sd = {flat(k): v for k, v in state_dict.items()}
    own = [k for k in sd if re.fullmatch(r'pos_embed\d+', k)] + [k for k in sd if k == 'cls_token']
    return {k: sd[k] for k in own + [k for k in sd if k not in own]}


@pytest.mark.parametrize('name,target', [('pvt2', 'timm'), ('pvt2', 'mmdet'), ('pvt1', 'mmdet'), ('pvt1cls', 'mmdet')])
def test_pvt_export_is_the_same_from_the_flat_names(name, target):
    """A PVT checkpoint saved before the per-stage modules exports to the file its weights give now:
    the same keys in the same order, the same tensors, the same dropped parameters."""
    ours = _model(name).state_dict()
    now = export_state_dict(ours, target, head_of(64), allow_drop=True)
    flat, layout, _ = convert_state_dict(_flat_pvt(ours))
    before = export_state_dict(flat, target, head_of(64), allow_drop=True)
    assert layout == ('official-pvt' if name == 'pvt1cls' else 'tlalign')
    assert list(before.state_dict) == list(now.state_dict) and before.dropped == now.dropped
    assert all(torch.equal(before.state_dict[k], v) for k, v in now.state_dict.items())


# ---------------------------------------------------------------------------------------------
# whole checkpoints and the CLI
# ---------------------------------------------------------------------------------------------
def _classifier_checkpoint(path, backbone, head, out_type=None):
    """A checkpoint as the mmengine Runner saves the pretraining classifier: backbone.*, head.fc.*,
    a label rule's pretraining-only parameters, the config as text in meta['cfg']."""
    sd = {f'backbone.{k}': v for k, v in backbone.state_dict().items()}
    sd |= {'head.fc.weight': head['weight'], 'head.fc.bias': head['bias'],
           'label_rule.token_head.weight': torch.zeros(5, 64), 'label_rule.token_head.bias': torch.zeros(5)}
    meta = {'epoch': 3}
    if out_type:
        meta['cfg'] = f"model = dict(backbone=dict(type='TLAVisionTransformer', out_type='{out_type}'))\n"
    torch.save({'state_dict': sd, 'meta': meta}, path)


def _tool(*args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    return subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'convert_checkpoint.py'), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def test_full_checkpoint_to_timm_safetensors(tmp_path):
    """The CLI: a pretraining checkpoint whose config says 'avg_featmap' -> a flat .safetensors timm file
    with the head; the build line it prints loads it strictly and gives our logits."""
    ours, head = deit(out_type='avg_featmap'), head_of(64)
    src, dst = tmp_path / 'epoch_3.pth', tmp_path / 'out' / 'deit_timm.safetensors'
    _classifier_checkpoint(src, ours, head, 'avg_featmap')
    proc = _tool(src, dst, '--to', 'timm')
    assert proc.returncode == 0, proc.stderr
    assert "global_pool='avg', fc_norm=False" in proc.stdout and 'readout avg_featmap' in proc.stdout
    assert 'left out 2 pretraining-only label parameters' in proc.stdout
    from safetensors.torch import load_file
    flat = load_file(dst)
    assert 'head.weight' in flat and not any(k.startswith(('backbone.', 'label_rule.')) for k in flat)
    line = next(ln[len('build: '):] for ln in proc.stdout.splitlines() if ln.startswith('build: '))
    theirs = eval(line, {'timm': timm}).eval()   # noqa: S307
    theirs.load_state_dict(flat, strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), torch.nn.functional.linear(ours(x)[-1], **head), atol=TOL, rtol=0)


def test_deit_head_needs_a_known_readout(tmp_path):
    src = tmp_path / 'ckpt.pth'
    _classifier_checkpoint(src, deit(), head_of(64))           # no config in meta: the readout is unknown
    with pytest.raises(ValueError, match="pass readout='cls_token' or 'avg_featmap'"):
        export_checkpoint(src, tmp_path / 'x.pth', 'timm')
    info = export_checkpoint(src, tmp_path / 'x.pth', 'timm', readout='cls_token')
    saved = torch.load(tmp_path / 'x.pth', weights_only=True)
    assert saved['meta']['layout'] == 'timm-vit' and saved['meta']['build'] == info['build']
    assert info['head'] and "global_pool='token'" in info['build']
    # --no-head: the backbone alone, num_classes=0
    info = export_checkpoint(src, tmp_path / 'y.pth', 'timm', with_head=False)
    assert not info['head'] and 'num_classes=0' in info['build']


def test_tlalign_target_is_the_backbone_export(tmp_path):
    src = tmp_path / 'ckpt.pth'
    model = swin(out_indices=(0, 1))
    _classifier_checkpoint(src, model, head_of(32))
    export_checkpoint(src, tmp_path / 'a.pth')
    saved = load_checkpoint_file(tmp_path / 'a.pth')
    assert saved['meta']['layout'] == 'tlalign' and set(saved['state_dict']) == set(model.state_dict())
    export_checkpoint(src, tmp_path / 'a.safetensors')
    flat = load_checkpoint_file(tmp_path / 'a.safetensors')
    assert all(torch.equal(flat[k], v) for k, v in model.state_dict().items())


def test_unknown_target_is_one_line_exit_2(tmp_path):
    src = tmp_path / 'ckpt.pth'
    torch.save(deit().state_dict(), src)
    proc = _tool(src, tmp_path / 'x.pth', '--to', 'onnx')
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip().count('\n') == 0 and "unknown --to 'onnx'" in proc.stderr
    assert all(t in proc.stderr for t in EXPORT_TARGETS)
    with pytest.raises(ValueError, match="unknown export target 'onnx'"):
        export_state_dict(deit().state_dict(), 'onnx')


@pytest.mark.parametrize('name,target,words', [
    ('pvt1', 'timm', ['PVT v1', "'timm'", 'PVT v2 only']),
    ('swin', 'mmpretrain', ['Swin', "'mmpretrain'", 'VisionTransformer']),
    ('deit', 'mmdet', ['ViT', "'mmdet'", 'no VisionTransformer']),
    ('pvt2', 'mmseg', ['PVT v2', "'mmseg'"]),
])
def test_impossible_arch_is_one_line_naming_both(tmp_path, name, target, words):
    src = tmp_path / 'ckpt.pth'
    torch.save(_model(name).state_dict(), src)
    proc = _tool(src, tmp_path / 'x.pth', '--to', target)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr and proc.stderr.strip().count('\n') == 0
    assert all(w in proc.stderr for w in words), proc.stderr
    assert not (tmp_path / 'x.pth').exists()


def test_a_state_dict_in_another_layout_is_refused_naming_it():
    """export_state_dict writes our layout; another library's names (here mmseg's, as our own export wrote
    them) are a ValueError that names the layout and the way on, not a KeyError from inside a writer."""
    mmseg = export_state_dict(deit().state_dict(), 'mmseg').state_dict
    for target in ('timm', 'mmseg', 'tlalign'):
        with pytest.raises(ValueError, match=r"our layout \('tlalign'\), this state dict is 'mmseg-vit'.*"
                                             'convert_state_dict'):
            export_state_dict(mmseg, target)


def test_distilled_deit_goes_to_mmpretrain_only():
    sd = deit(distilled=True).state_dict()
    for target in ('timm', 'mmseg'):
        with pytest.raises(ValueError, match='distilled DeiT.*mmpretrain'):
            export_state_dict(sd, target)
    res = export_state_dict(sd, 'mmpretrain')
    assert 'DistilledVisionTransformer' in res.build and 'dist_token' in res.state_dict


def test_dropping_parameters_needs_allow_drop(tmp_path):
    """Swin to timm: only the last stage's output norm has a place there; the CLI lists the others."""
    src = tmp_path / 'swin.pth'
    torch.save({'state_dict': swin(out_indices=(0, 1)).state_dict()}, src)
    proc = _tool(src, tmp_path / 'x.pth', '--to', 'timm')
    assert proc.returncode == 1 and "'norm0.weight', 'norm0.bias'" in proc.stderr and '--allow-drop' in proc.stderr
    assert proc.stderr.strip().count('\n') == 0 and not (tmp_path / 'x.pth').exists()
    proc = _tool(src, tmp_path / 'x.pth', '--to', 'timm', '--allow-drop')
    assert proc.returncode == 0 and 'dropped (--allow-drop): norm0.weight, norm0.bias' in proc.stdout
    assert 'norm.weight' in torch.load(tmp_path / 'x.pth', weights_only=True)['state_dict']
