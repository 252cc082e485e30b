"""Checkpoint loading / conversion (tlalign_mm.checkpoint, tools/convert_checkpoint.py).

Reference weights come from timm (random init, no download): ``deit_small_patch16_224`` has the
official DeiT / TL-Align layout, ``swin_tiny_patch4_window7_224`` the timm>=0.9 Swin layout, from
which the official Swin and the mm layouts are rebuilt here with inverses written independently
of the library code.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from tlalign_mm import TLASwinTransformer, TLAVisionTransformer
from tlalign_mm.checkpoint import detect_layout, export_checkpoint, load_backbone_checkpoint, load_checkpoint_file
from tlalign_mm.checkpoint.io import mmengine_safe_globals
from tlalign_mm.checkpoint.layouts import LAYOUTS, LoadReport, convert_state_dict, extract_state_dict
from tlalign_mm.models.backbones.swin import TLAPatchMerging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------
# fixtures and independent layout writers
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def timm_deit():
    torch.manual_seed(0)
    return timm.create_model('deit_small_patch16_224', pretrained=False).eval()


@pytest.fixture(scope='module')
def deit_sd(timm_deit):
    return {k: v.clone() for k, v in timm_deit.state_dict().items()}


@pytest.fixture(scope='module')
def timm_swin():
    torch.manual_seed(0)
    m = timm.create_model('swin_tiny_patch4_window7_224', pretrained=False).eval()
    with torch.no_grad():  # non-trivial norms / tables so that misplaced tensors show
        for n, p in m.named_parameters():
            if 'norm' in n or 'relative_position_bias_table' in n:
                p.add_(torch.randn_like(p) * 0.1)
    return m


def official_swin_from_timm(sd):
    """timm>=0.9 Swin -> official layout: merging back to the end of the previous stage,
    ``head.fc`` -> ``head``, plus the official persistent buffers."""
    out = {}
    for k, v in sd.items():
        m = re.match(r'layers\.(\d+)\.downsample\.(.*)', k)
        if m:
            k = f'layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}'
        elif k.startswith('head.fc.'):
            k = 'head.' + k[len('head.fc.'):]
        out[k] = v
    for k in list(out):
        m = re.match(r'(layers\.\d+\.blocks\.(\d+))\.attn\.qkv\.weight', k)
        if m:
            out[f'{m.group(1)}.attn.relative_position_index'] = torch.zeros(49, 49, dtype=torch.long)
            if int(m.group(2)) % 2:
                out[f'{m.group(1)}.attn_mask'] = torch.zeros(4, 49, 49)
    return out


def official_merge_to_unfold(w):
    """Independent inverse: official merge channel ``j*C + c`` (j over offsets (0,0), (1,0),
    (0,1), (1,1)) -> nn.Unfold channel ``c*4 + 2*row + col``."""
    n = w.shape[-1]
    c = n // 4
    offsets = [(0, 0), (1, 0), (0, 1), (1, 1)]
    out = torch.empty_like(w)
    for j, (r, col) in enumerate(offsets):
        for ch in range(c):
            out[..., ch * 4 + 2 * r + col] = w[..., j * c + ch]
    return out


def ours_to_mm_swin(sd):
    out = {}
    for k, v in sd.items():
        nk = k.replace('patch_embed.proj.', 'patch_embed.projection.')
        nk = re.sub(r'^layers\.', 'stages.', nk)
        nk = nk.replace('.attn.', '.attn.w_msa.').replace('.mlp.fc1.', '.ffn.layers.0.0.')
        nk = nk.replace('.mlp.fc2.', '.ffn.layers.1.')
        if '.downsample.' in k:
            v = official_merge_to_unfold(v)
        out[nk] = v
    return out


def ours_to_mm_vit(sd, mmseg=True):
    out = {}
    for k, v in sd.items():
        if k.startswith('norm.'):
            nk = 'ln1.' + k[5:]
        else:
            nk = k.replace('patch_embed.proj.', 'patch_embed.projection.')
            nk = nk.replace('.norm1.', '.ln1.').replace('.norm2.', '.ln2.')
            nk = nk.replace('.mlp.fc1.', '.ffn.layers.0.0.').replace('.mlp.fc2.', '.ffn.layers.1.')
            if mmseg:
                nk = nk.replace('.attn.qkv.weight', '.attn.attn.in_proj_weight')
                nk = nk.replace('.attn.qkv.bias', '.attn.attn.in_proj_bias')
                nk = nk.replace('.attn.proj.', '.attn.attn.out_proj.')
            nk = re.sub(r'^blocks\.', 'layers.', nk)
        out[nk] = v
    return out


def assert_loaded(model, sd, rename=lambda k: k):
    msd = model.state_dict()
    for k, v in sd.items():
        nk = rename(k)
        if nk is None:
            continue
        assert nk in msd, nk
        torch.testing.assert_close(msd[nk], v, rtol=0, atol=0, msg=nk)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f'{k} changed by a failed load'


# ---------------------------------------------------------------------------------------------
# official / timm layouts
# ---------------------------------------------------------------------------------------------
def test_deit_official_layout_loads_fully(timm_deit, deit_sd, tmp_path):
    path = tmp_path / 'deit_small.pth'
    torch.save({'model': deit_sd}, path)
    model = TLAVisionTransformer('deit-small', out_type='raw').eval()
    report = load_backbone_checkpoint(model, path)
    assert isinstance(report, LoadReport)
    assert report.layout == 'timm-vit'
    assert report.num_matched_params == report.num_params == len(dict(model.named_parameters()))
    assert report.missing == [] and report.unexpected == [] and report.resized == []
    assert sorted(report.ignored) == ['head.bias', 'head.weight']
    assert 'timm-vit' in report.summary() and str(path) in report.summary()
    assert_loaded(model, deit_sd, rename=lambda k: None if k.startswith('head.') else k)
    # and it computes what timm computes
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], timm_deit.forward_features(x), rtol=0, atol=1e-5)


def test_init_cfg_pretrained_goes_through_loader(deit_sd, tmp_path):
    path = tmp_path / 'deit_small.pth'
    torch.save({'model': deit_sd}, path)
    model = TLAVisionTransformer('deit-small', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    assert_loaded(model, deit_sd, rename=lambda k: None if k.startswith('head.') else k)


def test_official_swin_layout_loads_fully(timm_swin, tmp_path):
    official = official_swin_from_timm(timm_swin.state_dict())
    assert 'layers.0.downsample.reduction.weight' in official and 'head.weight' in official
    assert detect_layout(official) == 'official-swin'
    path = tmp_path / 'swin_tiny.pth'
    torch.save({'model': official}, path)

    model = TLASwinTransformer('tiny', out_indices=(3,))
    report = load_backbone_checkpoint(model, path)
    assert report.layout == 'official-swin'
    assert report.num_matched_params == report.num_params
    assert report.missing == [] and report.unexpected == []
    assert any(k.endswith('relative_position_index') for k in report.ignored)
    assert any(k.endswith('attn_mask') for k in report.ignored)

    def rename(k):
        if k.startswith('head.') or k.endswith(('relative_position_index', 'attn_mask')):
            return None
        return 'norm3.' + k[5:] if k.startswith('norm.') else k
    assert_loaded(model, official, rename)

    # with every stage's output norm, only norm0..2 are left to initialise
    model4 = TLASwinTransformer('tiny', out_indices=(0, 1, 2, 3))
    report4 = load_backbone_checkpoint(model4, path)
    assert sorted(report4.missing) == sorted(f'norm{i}.{p}' for i in range(3) for p in ('weight', 'bias'))


def test_timm_swin_layout_loads_and_matches_timm_features(timm_swin):
    sd = timm_swin.state_dict()
    assert detect_layout(sd) == 'timm-swin'
    model = TLASwinTransformer('tiny', out_indices=(3,), out_type='avg_featmap',
                               drop_path_rate=0.0).eval()
    report = load_backbone_checkpoint(model, {'state_dict': sd})
    assert report.layout == 'timm-swin'
    assert report.num_matched_params == report.num_params and not report.unexpected
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = timm_swin.forward_head(timm_swin.forward_features(x), pre_logits=True)
        out = model(x)[0]
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# mmengine checkpoints and weights_only safety
# ---------------------------------------------------------------------------------------------
def _mmengine_meta():
    from mmengine.logging import HistoryBuffer
    hb = HistoryBuffer()
    for v in (1.0, 0.5, np.float64(0.25)):
        hb.update(v)
    return {
        'epoch': 3, 'iter': 300, 'seed': np.int64(42), 'lr': np.float32(1e-3),
        'mmengine_version': '0.10.7', 'dtype': np.dtype('float64'),
        'dataset_meta': {'classes': ('a', 'b'), 'palette': np.array([[1, 2, 3], [4, 5, 6]])},
        'hist': np.linspace(0, 1, 5), 'buffer': hb,
    }


@contextlib.contextmanager
def _no_process_allow_list():
    """Torch's process-wide weights_only allow-list emptied for the block, then restored."""
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(saved)


def test_mmengine_checkpoint_with_numpy_and_history_buffer(deit_sd, tmp_path):
    from mmengine.logging import HistoryBuffer
    sd = {'backbone.' + k: v for k, v in deit_sd.items() if not k.startswith('head.')}
    sd['head.fc.weight'] = torch.randn(10, 384)
    sd['data_preprocessor.mean'] = torch.zeros(3)
    ckpt = {'meta': _mmengine_meta(), 'state_dict': sd,
            'message_hub': {'log_scalars': {'train/loss': _mmengine_meta()['buffer']}},
            'optimizer': {'state': {}, 'param_groups': [{'lr': 0.1, 'params': [0, 1]}]}}
    path = tmp_path / 'mmengine.pth'
    torch.save(ckpt, path)
    # without the allow-list (nothing registers it process-wide) plain weights_only loading refuses
    # it; the loader brings the list itself
    with _no_process_allow_list():
        with pytest.raises(pickle.UnpicklingError):
            torch.load(path, weights_only=True)
        loaded = load_checkpoint_file(path)
    hb = loaded['meta']['buffer']
    assert isinstance(hb, HistoryBuffer) and hb.statistics('mean') == pytest.approx(1.75 / 3)
    np.testing.assert_array_equal(loaded['meta']['hist'], np.linspace(0, 1, 5))
    assert loaded['meta']['dtype'] == np.dtype('float64') and loaded['meta']['seed'] == 42

    model = TLAVisionTransformer('deit-small')
    report = load_backbone_checkpoint(model, path)
    assert report.prefix == 'backbone.' and report.layout == 'tlalign'
    assert report.num_matched_params == report.num_params and not report.unexpected
    assert_loaded(model, {k[len('backbone.'):]: v for k, v in sd.items() if k.startswith('backbone.')})
    # the allow-list is exposed for other helpers (mmengine resume)
    assert HistoryBuffer in mmengine_safe_globals()


def test_numpy1_pickled_names_load(tmp_path):
    """Checkpoints written under numpy 1.x name ``numpy.core.multiarray.*`` (numpy 2:
    ``numpy._core``); rewrite the pickle to the old spelling and load it."""
    import io
    import zipfile
    src = tmp_path / 'np2.pth'
    torch.save({'state_dict': {'w': torch.arange(3.0)}, 'meta': _mmengine_meta()}, src)
    buf = io.BytesIO()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(buf, 'w', zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith('data.pkl'):
                assert b'numpy._core.multiarray' in data
                data = data.replace(b'numpy._core.multiarray', b'numpy.core.multiarray')
            zout.writestr(info, data)
    old = tmp_path / 'np1.pth'
    old.write_bytes(buf.getvalue())
    with _no_process_allow_list():
        assert 'numpy.core.multiarray._reconstruct' in torch.serialization.get_unsafe_globals_in_checkpoint(old)
        loaded = load_checkpoint_file(old)
    np.testing.assert_array_equal(loaded['meta']['hist'], np.linspace(0, 1, 5))
    assert loaded['meta']['lr'] == np.float32(1e-3)


_SIDE_EFFECT = []


def _record_side_effect(tag):  # what a malicious pickle would call
    _SIDE_EFFECT.append(tag)
    return tag


class _Evil:
    def __reduce__(self):
        return (_record_side_effect, ('executed',))


class _EvilGetattr:
    def __reduce__(self):  # tries to reach past the HistoryBuffer-only getattr
        return (getattr, (argparse.Namespace, '__init__'))


@pytest.mark.parametrize('payload', [_Evil(), _EvilGetattr(), argparse.ArgumentParser])
def test_unknown_objects_are_refused_not_executed(deit_sd, tmp_path, payload):
    path = tmp_path / 'evil.pth'
    torch.save({'model': {'cls_token': deit_sd['cls_token']}, 'extra': payload}, path)
    _SIDE_EFFECT.clear()
    with pytest.raises(pickle.UnpicklingError, match='weights_only'):
        load_checkpoint_file(path)
    model = TLAVisionTransformer('deit-tiny')
    with pytest.raises(pickle.UnpicklingError):
        load_backbone_checkpoint(model, path)
    assert _SIDE_EFFECT == []


@pytest.fixture
def http_root(tmp_path, monkeypatch):
    """A local HTTP server on 127.0.0.1 serving ``tmp_path / 'www'``; torch's hub cache in tmp."""
    import functools
    import http.server
    import threading
    www = tmp_path / 'www'
    www.mkdir()
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()


def test_http_checkpoint_loads_through_mmengine_weights_only(deit_sd, http_root):
    """A URL goes through mmengine's CheckpointLoader (http backend, torch hub cache), and the
    backbone loads from it as from a file; a URL pickle with a foreign object is refused even
    though torch.hub's own default is weights_only=False."""
    www, url = http_root
    torch.save({'model': deit_sd}, www / 'deit.pth')
    model = TLAVisionTransformer('deit-small')
    report = load_backbone_checkpoint(model, f'{url}/deit.pth')
    assert report.layout == 'timm-vit' and report.num_matched_params == report.num_params
    assert torch.equal(model.cls_token, deit_sd['cls_token'])
    torch.save({'model': {'cls_token': deit_sd['cls_token']}, 'extra': _Evil()}, www / 'evil.pth')
    _SIDE_EFFECT.clear()
    with pytest.raises(pickle.UnpicklingError, match='evil.pth.*nothing from it was run'):
        load_checkpoint_file(f'{url}/evil.pth')
    assert _SIDE_EFFECT == [] and os.environ.get('TORCH_FORCE_WEIGHTS_ONLY_LOAD') is None


def test_registered_scheme_cannot_turn_weights_only_off(tmp_path):
    """A backend that calls torch.load(weights_only=False) itself is still held to weights_only."""
    from mmengine.runner.checkpoint import CheckpointLoader

    @CheckpointLoader.register_scheme(prefixes='tlatest://', force=True)
    def _load(filename, map_location):
        return torch.load(str(tmp_path / filename[len('tlatest://'):]), map_location=map_location,
                          weights_only=False)

    torch.save({'x': torch.ones(2), 'extra': _Evil()}, tmp_path / 'evil.pth')
    torch.save({'x': torch.ones(2)}, tmp_path / 'ok.pth')
    _SIDE_EFFECT.clear()
    with pytest.raises(pickle.UnpicklingError, match='tlatest://evil.pth'):
        load_checkpoint_file('tlatest://evil.pth')
    assert _SIDE_EFFECT == []
    assert torch.equal(load_checkpoint_file('tlatest://ok.pth')['x'], torch.ones(2))


def test_loading_into_a_module_that_is_not_ours_is_a_type_error(deit_sd):
    """The loader reads the backbone's declared contract (prefix tokens, position grid, its checkpoint hooks):
    a timm ViT with the same parameter names is refused before anything is read, and keeps its weights."""
    model = timm.create_model('deit_small_patch16_224', pretrained=False)
    before = model.cls_token.clone()
    with pytest.raises(TypeError, match='loads into a TLABackbone, got VisionTransformer'):
        load_backbone_checkpoint(model, deit_sd)
    assert torch.equal(model.cls_token, before)


def test_missing_file_names_the_path(tmp_path):
    p = str(tmp_path / 'nope.pth')
    with pytest.raises(FileNotFoundError, match=re.escape(p)):
        load_checkpoint_file(p)
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        load_backbone_checkpoint(TLAVisionTransformer('deit-tiny'), p)


def test_unwrapping_variants(deit_sd):
    raw = {k: v for k, v in deit_sd.items()}
    for wrapped in (raw, {'model': raw}, {'state_dict': raw, 'meta': {}}, {'module': raw},
                    {'model': {'module.' + k: v for k, v in raw.items()}}):
        sd, prefix = extract_state_dict(wrapped)
        assert prefix == '' and set(sd) == set(raw)
    sd, prefix = extract_state_dict({'state_dict': {'backbone.' + k: v for k, v in raw.items()}},
                                    prefix='backbone')
    assert prefix == 'backbone.' and set(sd) == set(raw)


# ---------------------------------------------------------------------------------------------
# resizing
# ---------------------------------------------------------------------------------------------
def test_pos_embed_resized_for_384(deit_sd):
    from timm.layers import resample_abs_pos_embed
    model = TLAVisionTransformer('deit-small', img_size=384)
    report = load_backbone_checkpoint(model, {'model': deit_sd})
    assert report.num_matched_params == report.num_params
    assert report.resized == ['pos_embed (1, 197, 384)->(1, 577, 384)']
    expected = resample_abs_pos_embed(deit_sd['pos_embed'], [24, 24], [14, 14], num_prefix_tokens=1,
                                      interpolation='bicubic', antialias=False)
    torch.testing.assert_close(model.pos_embed.data, expected, rtol=0, atol=0)
    torch.testing.assert_close(model.pos_embed.data[:, 0], deit_sd['pos_embed'][:, 0], rtol=0, atol=0)


def test_distilled_pos_embed_row_dropped_for_plain_model(deit_sd):
    sd = dict(deit_sd)
    sd['dist_token'] = torch.randn(1, 1, 384)
    pe = deit_sd['pos_embed']
    sd['pos_embed'] = torch.cat([pe[:, :1], torch.randn(1, 1, 384), pe[:, 1:]], dim=1)
    sd['head_dist.weight'] = torch.randn(1000, 384)
    model = TLAVisionTransformer('deit-small')
    report = load_backbone_checkpoint(model, {'model': sd})
    assert report.unexpected == ['dist_token']
    torch.testing.assert_close(model.pos_embed.data, pe, rtol=0, atol=0)


def test_relative_position_bias_table_resized_7_to_12(timm_swin):
    sd = timm_swin.state_dict()
    model = TLASwinTransformer('tiny', window_size=12, out_indices=(3,))
    report = load_backbone_checkpoint(model, sd)
    tables = [k for k in sd if k.endswith('relative_position_bias_table')]
    assert len(report.resized) == len(tables) == 12
    for k in tables:
        src = sd[k]
        heads = src.shape[1]
        # official Swin load_pretrained: bicubic on the (2W-1)^2 grid of each head
        ref = F.interpolate(src.permute(1, 0).reshape(1, heads, 13, 13), size=(23, 23),
                            mode='bicubic').reshape(heads, 23 * 23).permute(1, 0)
        got = model.state_dict()[k]
        assert got.shape == (23 * 23, heads)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# refusals
# ---------------------------------------------------------------------------------------------
def test_other_arch_raises_with_both_shapes(tmp_path):
    tiny = TLAVisionTransformer('deit-tiny').state_dict()
    path = tmp_path / 'deit_tiny.pth'
    torch.save({'model': tiny}, path)
    model = TLAVisionTransformer('deit-small')
    before = snapshot(model)
    with pytest.raises(ValueError) as ei:
        load_backbone_checkpoint(model, path)
    msg = str(ei.value)
    assert 'blocks.0.attn.qkv.weight: checkpoint (576, 192) vs model (1152, 384)' in msg
    assert 'cls_token: checkpoint (1, 1, 192) vs model (1, 1, 384)' in msg
    assert_unchanged(model, before)


def test_partial_checkpoint_raises_runtime_error(deit_sd):
    sd = {k: v for k, v in deit_sd.items() if not re.match(r'blocks\.([6-9]|1\d)\.', k)}
    model = TLAVisionTransformer('deit-small')
    before = snapshot(model)
    with pytest.raises(RuntimeError) as ei:
        load_backbone_checkpoint(model, {'model': sd})
    msg = str(ei.value)
    assert "'timm-vit'" in msg and 'blocks.6.norm1.weight' in msg and 'min_match' in msg
    assert_unchanged(model, before)
    # the threshold is configurable
    report = load_backbone_checkpoint(model, {'model': sd}, min_match=0.5)
    assert 0.5 < report.num_matched_params / report.num_params < 0.9
    assert 'blocks.11.mlp.fc2.bias' in report.missing


def test_swin_checkpoint_into_vit_raises(timm_swin):
    model = TLAVisionTransformer('deit-small')
    with pytest.raises(RuntimeError, match="'timm-swin'"):
        load_backbone_checkpoint(model, timm_swin.state_dict())


def test_detector_prefix_raises_naming_prefixes(timm_swin, tmp_path):
    sd = {'detector.' + k: v for k, v in official_swin_from_timm(timm_swin.state_dict()).items()}
    sd['neck.lateral.weight'] = torch.zeros(4, 4)
    path = tmp_path / 'det.pth'
    torch.save({'state_dict': sd, 'meta': {}}, path)
    model = TLASwinTransformer('tiny', out_indices=(3,))
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"'detector' \(\d+\).*'neck'") as ei:
        load_backbone_checkpoint(model, path)
    assert "sit under ['detector.']" in str(ei.value)
    with pytest.raises(ValueError, match=r"prefix 'backbone\.'.*'detector'"):
        load_backbone_checkpoint(model, path, prefix='backbone.')
    assert_unchanged(model, before)
    report = load_backbone_checkpoint(model, path, prefix='detector.')
    assert report.layout == 'official-swin' and report.num_matched_params == report.num_params


# ---------------------------------------------------------------------------------------------
# mm layouts
# ---------------------------------------------------------------------------------------------
def test_mm_swin_round_trip(timm_swin):
    ours = TLASwinTransformer('tiny', out_indices=(0, 1, 2, 3))
    for p in ours.parameters():
        nn.init.normal_(p)
    ref = ours.state_dict()
    mm = ours_to_mm_swin(ref)
    mm['stages.0.blocks.0.attn.w_msa.relative_position_index'] = torch.zeros(49, 49, dtype=torch.long)
    assert detect_layout(mm) == 'mm-swin'
    model = TLASwinTransformer('tiny', out_indices=(0, 1, 2, 3))
    report = load_backbone_checkpoint(model, {'state_dict': {'backbone.' + k: v for k, v in mm.items()}})
    assert report.layout == 'mm-swin' and report.num_matched_params == report.num_params
    assert not report.missing and not report.unexpected
    assert_loaded(model, ref)


def test_mm_patch_merging_order_matches_unfold():
    """The converted mm merge weights applied the official way (x0..x3 concat) equal the mm
    computation (nn.Unfold, channel-major) with the original weights."""
    torch.manual_seed(0)
    c = 6
    mm_norm_w, mm_norm_b = torch.randn(4 * c), torch.randn(4 * c)
    mm_red = torch.randn(2 * c, 4 * c)
    x = torch.randn(2, 4 * 6, c)  # (B, H*W, C), H=4, W=6
    # mm: nn.Unfold(2, stride 2) -> (B, 4C, L) -> (B, L, 4C) -> LN -> Linear
    u = nn.Unfold(kernel_size=2, stride=2)(x.view(2, 4, 6, c).permute(0, 3, 1, 2)).transpose(1, 2)
    ref = F.linear(F.layer_norm(u, (4 * c,), mm_norm_w, mm_norm_b), mm_red)

    mm_sd = {'stages.0.blocks.0.attn.w_msa.qkv.weight': torch.zeros(1),
             'stages.0.downsample.norm.weight': mm_norm_w, 'stages.0.downsample.norm.bias': mm_norm_b,
             'stages.0.downsample.reduction.weight': mm_red}
    conv, layout, _ = convert_state_dict(mm_sd)
    assert layout == 'mm-swin'
    merge = TLAPatchMerging(c)
    merge.load_state_dict({k[len('layers.0.downsample.'):]: v for k, v in conv.items()
                           if 'downsample' in k})
    out, hw, _ = merge(x, (4, 6))
    assert hw == (2, 3)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('flavour', ['mmseg-vit', 'mmpretrain-vit'])
def test_mm_vit_round_trip(deit_sd, flavour):
    ours = {k: v for k, v in deit_sd.items() if not k.startswith('head.')}
    mm = ours_to_mm_vit(ours, mmseg=flavour == 'mmseg-vit')
    assert 'ln1.weight' in mm and 'layers.11.ln2.bias' in mm
    assert detect_layout(mm) == flavour
    model = TLAVisionTransformer('deit-small')
    report = load_backbone_checkpoint(model, {'state_dict': {'backbone.' + k: v for k, v in mm.items()}})
    assert report.layout == flavour and report.num_matched_params == report.num_params
    assert not report.unexpected
    assert_loaded(model, ours)


@pytest.mark.mm
def test_mmseg_vit_features_match(deit_sd):
    mmseg_vit = pytest.importorskip('mmseg.models.backbones.vit')
    ours = {k: v for k, v in deit_sd.items() if not k.startswith('head.')}
    mm = mmseg_vit.VisionTransformer(img_size=224, patch_size=16, embed_dims=384, num_layers=12,
                                     num_heads=6, mlp_ratio=4, out_indices=11, qkv_bias=True,
                                     patch_bias=True, final_norm=True, with_cls_token=True,
                                     norm_cfg=dict(type='LN', eps=1e-6))
    mm.eval()   # (mmseg's train() returns None: no chaining)
    mm.load_state_dict(ours_to_mm_vit(ours), strict=True)
    model = TLAVisionTransformer('deit-small').eval()
    load_backbone_checkpoint(model, {'state_dict': {'backbone.' + k: v for k, v in
                                                    mm.state_dict().items()}})
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], mm(x)[0], rtol=0, atol=1e-4)


@pytest.mark.mm
def test_mm_swin_features_match(timm_swin):
    try:
        from mmdet.models.backbones.swin import SwinTransformer
    except ImportError:
        try:
            from mmseg.models.backbones.swin import SwinTransformer
        except ImportError:
            pytest.skip('neither mmdet nor mmseg importable')
    mm = SwinTransformer(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
                         drop_path_rate=0.0, out_indices=(0, 1, 2, 3))
    mm.eval()   # (mmdet's train() returns None: no chaining)
    model = TLASwinTransformer('tiny', out_indices=(0, 1, 2, 3), drop_path_rate=0.0).eval()
    load_backbone_checkpoint(model, timm_swin.state_dict(), min_match=0.9)
    for i in range(3):  # output norms other than the last are not in a classification checkpoint
        getattr(model, f'norm{i}').weight.data.normal_()
    mm_sd = ours_to_mm_swin(model.state_dict())
    missing, unexpected = mm.load_state_dict(mm_sd, strict=False)
    assert not unexpected and all(k.endswith('relative_position_index') for k in missing)
    # both shift every stage at 256 (maps 64, 32, 16, 8 > window, zero-padded to multiples of 7)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        for a, b in zip(model(x), mm(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# export and the CLI
# ---------------------------------------------------------------------------------------------
def test_export_backbone_from_mm_swin(timm_swin, tmp_path):
    model = TLASwinTransformer('tiny', out_indices=(3,))
    load_backbone_checkpoint(model, timm_swin.state_dict())
    mm = ours_to_mm_swin(model.state_dict())
    src = tmp_path / 'upernet.pth'
    torch.save({'state_dict': {'backbone.' + k: v for k, v in mm.items()} | {
        'decode_head.conv_seg.weight': torch.zeros(2, 4, 1, 1)}, 'meta': _mmengine_meta()}, src)
    dst = tmp_path / 'out' / 'swin.pth'
    info = export_checkpoint(src, dst)
    assert info['layout'] == 'mm-swin' and info['prefix'] == 'backbone.'
    saved = torch.load(dst, weights_only=True)
    # the one export format (also the BackboneExportHook's): the file is in our layout, the source's is recorded
    assert saved['meta']['layout'] == 'tlalign' and saved['meta']['source_layout'] == 'mm-swin'
    assert saved['meta']['tlalign_mm_version'] and saved['meta']['prefix'] == 'backbone.'
    assert set(saved['state_dict']) == set(model.state_dict())
    fresh = TLASwinTransformer('tiny', out_indices=(3,))
    report = load_backbone_checkpoint(fresh, dst)
    assert report.layout == 'tlalign' and report.num_matched_params == report.num_params
    assert_loaded(fresh, model.state_dict())


def _load_tool():
    spec = importlib.util.spec_from_file_location('convert_checkpoint',
                                                  os.path.join(REPO, 'tools', 'convert_checkpoint.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_help(capsys):
    tool = _load_tool()
    with pytest.raises(SystemExit) as ei:
        tool.parse_args(['--help'])
    assert ei.value.code == 0
    assert '--prefix' in capsys.readouterr().out


def test_cli_converts_and_output_loads(deit_sd, tmp_path, capsys):
    src, dst = tmp_path / 'deit.pth', tmp_path / 'deit_tla.pth'
    torch.save({'model': deit_sd, 'epoch': 299}, src)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'convert_checkpoint.py'),
                           str(src), str(dst)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'source layout: timm-vit' in proc.stdout and 'wrote 150 tensors' in proc.stdout
    # --arch also checks the written file against a freshly built backbone (in-process: faster)
    assert _load_tool().main([str(src), str(tmp_path / 'again.pth'), '--arch', 'deit-small']) == 0
    assert 'check deit-small: loaded 150/150' in capsys.readouterr().out
    model = TLAVisionTransformer('deit-small')
    report = load_backbone_checkpoint(model, dst)
    assert report.layout == 'tlalign' and report.num_matched_params == report.num_params
    assert not report.missing and not report.unexpected
    assert_loaded(model, {k: v for k, v in deit_sd.items() if not k.startswith('head.')})


def test_empty_numpy_array_in_meta_loads_but_bytes_with_arguments_does_not(tmp_path):
    """Protocol 2 (torch.save's) writes an empty array's data as ``bytes()``: an mmengine
    checkpoint whose meta holds an empty HistoryBuffer must load; ``bytes(n)`` must not."""
    import numpy as np
    from mmengine.logging import HistoryBuffer
    path = tmp_path / 'meta.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}, 'meta': {'buf': HistoryBuffer(), 'arr': np.zeros(0)}}, path)
    ckpt = load_checkpoint_file(path)
    assert ckpt['meta']['arr'].shape == (0,) and len(ckpt['meta']['buf'].data[0]) == 0
    with torch.serialization.safe_globals(mmengine_safe_globals()):   # the same list, for torch.load itself
        assert torch.equal(torch.load(path, weights_only=True)['state_dict']['w'], torch.ones(2))

    class _BigBytes:
        def __reduce__(self):
            return (bytes, (10,))
    torch.save({'x': _BigBytes()}, tmp_path / 'bytes.pth')
    with pytest.raises(pickle.UnpicklingError, match='bytes'):
        load_checkpoint_file(tmp_path / 'bytes.pth')


def test_loading_keeps_the_process_wide_allow_list(tmp_path):
    """A user may allow-list mmengine's checkpoint types for every ``torch.load`` themselves; a load
    through the project's loader must leave that list as it was, and adds nothing to an empty one."""
    from mmengine.logging import HistoryBuffer
    path = tmp_path / 'meta.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}, 'meta': {'buf': HistoryBuffer()}}, path)
    with _no_process_allow_list():
        load_checkpoint_file(path)
        assert torch.serialization.get_safe_globals() == []
        torch.serialization.add_safe_globals(mmengine_safe_globals())
        before = set(torch.serialization.get_safe_globals())
        assert HistoryBuffer in before
        load_checkpoint_file(path)
        assert set(torch.serialization.get_safe_globals()) == before
        assert torch.equal(torch.load(path, weights_only=True)['state_dict']['w'], torch.ones(2))


@pytest.mark.parametrize('content, says', [(b'hello world\n', 'a text file, not a checkpoint'),
                                           (b'', 'empty (0 bytes)'),
                                           (b'PK\x03\x04 truncated zip', 'truncated: a zip archive without')])
def test_a_file_that_is_not_a_checkpoint_is_one_clear_line(tmp_path, content, says):
    path = tmp_path / 'notes.pth'
    path.write_bytes(content)
    with pytest.raises(pickle.UnpicklingError) as info:
        load_checkpoint_file(path)
    msg = str(info.value)
    assert str(path) in msg and says in msg
    assert '\n' not in msg and 'weights_only=False' not in msg and 'weights_only` set to `False' not in msg


def test_layouts_are_the_union_of_the_family_modules():
    """LAYOUTS is the union of what each family module declares (no list kept by hand), in
    detection order, and no two families name the same layout."""
    from tlalign_mm.checkpoint import pvt, swin, vit
    from tlalign_mm.checkpoint.layouts import FAMILIES
    assert [f.NAME for f in FAMILIES] == ['pvt', 'swin', 'vit']
    assert LAYOUTS == ('tlalign',) + pvt.LAYOUTS + swin.LAYOUTS + vit.LAYOUTS
    assert LAYOUTS == ('tlalign', 'official-pvt', 'mm-pvt', 'timm-pvt', 'official-swin', 'timm-swin', 'mm-swin',
                       'timm-vit', 'mmseg-vit', 'mmpretrain-vit')      # every layout the guide names, once


def test_local_loads_leave_the_environment_alone(tmp_path, monkeypatch):
    """A local file is read with torch's own weights_only default (True since 2.6): no process-wide
    TORCH_FORCE_WEIGHTS_ONLY_LOAD while it loads."""
    path = tmp_path / 'w.pth'
    torch.save({'state_dict': {'a': torch.ones(1)}}, path)
    seen = []
    real = torch.load

    def spy(*args, **kwargs):
        seen.append((os.environ.get('TORCH_FORCE_WEIGHTS_ONLY_LOAD'), kwargs.get('weights_only')))
        return real(*args, **kwargs)
    monkeypatch.delenv('TORCH_FORCE_WEIGHTS_ONLY_LOAD', raising=False)
    monkeypatch.setattr(torch, 'load', spy)
    assert load_checkpoint_file(path)['state_dict']['a'].item() == 1.0
    assert seen and all(env is None and wo in (None, True) for env, wo in seen)


def test_two_keys_mapping_to_one_name_are_both_named():
    """A file holding a key under both mm's and our name (a hand-merged checkpoint) is refused, naming the
    two source keys and the name they share; nothing is overwritten silently."""
    t = torch.zeros(3)
    sd = {'stages.0.blocks.0.attn.w_msa.proj.bias': t, 'layers.0.blocks.0.attn.proj.bias': t}
    with pytest.raises(ValueError, match=re.escape("checkpoint keys 'stages.0.blocks.0.attn.w_msa.proj.bias' and "
                                                   "'layers.0.blocks.0.attn.proj.bias' both map to "
                                                   "'layers.0.blocks.0.attn.proj.bias' (layout 'mm-swin')")):
        convert_state_dict(sd, 'mm-swin')
