"""tools/gpu_check.sh: what runs without a GPU (the refusal, and every part of the check at toy
size on CPU, so that a GPU session does not spend its time on a broken script)."""
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module():
    spec = importlib.util.spec_from_file_location('gpu_check', os.path.join(REPO, 'tools', 'analysis', 'gpu_check.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the refusal on a machine without CUDA')
def test_without_cuda_says_so_in_one_line_and_fails():
    r = subprocess.run(['bash', os.path.join(REPO, 'tools', 'gpu_check.sh')], capture_output=True, text=True,
                       env=dict(os.environ, PYTHON=sys.executable))
    assert r.returncode == 1
    lines = [ln for ln in r.stdout.splitlines() + r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and 'CUDA is not available' in lines[0]


@pytest.mark.slow
def test_parts_run_at_toy_size_on_cpu(tmp_path, monkeypatch, capsys):
    mod = _module()
    cpu = torch.device('cpu')
    bench = mod.label_path_rows(1, 0, cpu, models=(('deit-tiny', 1),), amps=('bfloat16',), img=32)
    assert [(r['attn_impl'], r['variant']) for r in bench] == [
        (impl, v) for impl, variants in mod.ATTN_IMPLS.items() for v in variants]
    assert {'auto', 'materialised'} <= set(mod.ATTN_IMPLS) and 'tla' in mod.ATTN_IMPLS['materialised']
    assert bench[0]['ratio'] == 1.0 and all(r['step_ms'] > 0 and r['peak_mib'] > 0 for r in bench)
    prec = mod.precision_rows(cpu, batch=2, amps=('bfloat16',))
    assert {(r['model'], r['attn_impl'], r['label_dtype']) for r in prec} == {
        (m, i, d) for m in ('deit-small', 'swin-tiny') for i in ('fused', 'materialised') for d in ('auto', 'float32')}
    assert all(r['ok'] and r['fluctuation_mean'] > 0.01 for r in prec)
    modes = []
    monkeypatch.setattr(torch.cuda, 'set_sync_debug_mode', modes.append)
    pre = [mod.pretrain_sync_check(2, str(tmp_path / c), cfg_options={'train_dataloader.batch_size': 2}, config=c)
           for c in mod.PRETRAIN_CONFIGS]
    assert [(r['config'], r['ok'], r['iters']) for r in pre] == [(c, True, 2) for c in mod.PRETRAIN_CONFIGS], pre
    assert 'transmix' in mod.PRETRAIN_CONFIGS[1] and all(r['lam_gap'] >= 0 for r in pre)
    assert modes == ['error', 'default'] * 4
    mod.print_table('cpu', bench, prec, pre, {'label path': 1.0})
    out = capsys.readouterr().out
    assert '| deit-tiny | 1 | bfloat16 | auto | tla |' in out
    assert '| deit-tiny | 1 | bfloat16 | materialised | tla |' in out
    assert '| swin-tiny | materialised | auto | bfloat16 |' in out and 'wall time: label path 1 s' in out
    assert f'| {mod.PRETRAIN_CONFIGS[1]} | 2 | ok: no host sync in train_step' in out
