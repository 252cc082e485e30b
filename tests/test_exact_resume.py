"""A crash costs nothing: bit-exact resume, atomic checkpoints, and one line for a bad checkpoint file.

Every run here goes through ``tools/train.py`` (or ``tools/dist_train.sh``) in a fresh process, as a
user runs it, on the demo DeiT TL-Align config (``configs/demo/deit-demo_tla_1xb64-10e_fashion-mnist.py``:
real Fashion-MNIST, RandAugment in two persistent workers, TL-Align mixing, random erasing), cut to
320 training images and 3 epochs with a checkpoint and a validation every epoch and the loss logged
every iteration.

The reference is the uninterrupted run.  A run stopped after epoch 1 and resumed, a run killed with
``SIGKILL`` in the middle of epoch 2 and auto-resumed, a run killed while writing a checkpoint and
auto-resumed, and a 2-process run stopped and resumed, must each end with the reference's weights
exactly (max |diff| = 0 on every tensor) and log the reference's loss at every iteration.
Without :class:`tlalign_mm.hooks.RandomStatesHook` the stopped-and-resumed run departs from the
reference (checked too, so that the comparison can fail).
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from tlalign_mm.utils.checkpoint_io import diagnose_checkpoint_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, 'data', 'demo', 'fashion_mnist')
DEMO_CFG = os.path.join(REPO, 'configs', 'demo', 'deit-demo_tla_1xb64-10e_fashion-mnist.py')

pytestmark = pytest.mark.skipif(not os.path.isdir(os.path.join(DATA, 'train')),
                                reason='demo data missing: run tools/prepare_demo_data.py')

# A test-only module the runs import (custom_imports): a hook that stops training cleanly after an
# epoch, and a switch that makes every fsync slow, so that a kill lands inside a checkpoint save.
HELPER = '''
import os, time
from mmengine.hooks import Hook
from tlalign_mm.registry import HOOKS

@HOOKS.register_module()
class StopAfterEpochHook(Hook):
    priority = 'LOWEST'
    def __init__(self, epoch):
        self.epoch = epoch
    def after_train_epoch(self, runner):
        if runner.epoch + 1 == self.epoch:
            raise SystemExit(0)

if os.environ.get('TLA_TEST_SLOW_FSYNC'):
    _fsync = os.fsync
    def _slow_fsync(fd):
        time.sleep(float(os.environ['TLA_TEST_SLOW_FSYNC']))
        _fsync(fd)
    os.fsync = _slow_fsync
'''

BASE = f'''
_base_ = [{DEMO_CFG!r}]
custom_imports = dict(imports=['tlalign_mm', 'resume_helper'], allow_failed_imports=False)
train_cfg = dict(max_epochs=3, val_interval=1)
train_dataloader = dict(dataset=dict(data_root={DATA!r}, indices=320))
val_dataloader = dict(dataset=dict(data_root={DATA!r}, indices=128))
test_dataloader = val_dataloader
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, max_keep_ckpts=5))
'''
HOOKS = "dict(type='RandomStatesHook'), dict(type='NonFiniteLossHook')"


@pytest.fixture(scope='module')
def cfgs(tmp_path_factory):
    d = tmp_path_factory.mktemp('exact_resume_cfgs')
    (d / 'resume_helper.py').write_text(HELPER)
    (d / 'base.py').write_text(BASE + f'custom_hooks = [{HOOKS}]\n')
    (d / 'stop1.py').write_text(BASE + f"custom_hooks = [{HOOKS}, dict(type='StopAfterEpochHook', epoch=1)]\n")
    (d / 'nohook.py').write_text(BASE + "custom_hooks = [dict(type='NonFiniteLossHook')]\n")
    (d / 'nohook_stop1.py').write_text(
        BASE + "custom_hooks = [dict(type='NonFiniteLossHook'), dict(type='StopAfterEpochHook', epoch=1)]\n")
    return d


def _env(cfgs, **extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(cfgs), REPO, os.environ.get('PYTHONPATH', '')]),
               OMP_NUM_THREADS='1', **extra)
    return env


def _train(cfgs, cfg, work_dir, *args, procs=1, check=True, env=None):
    if procs == 1:
        cmd = [sys.executable, os.path.join(REPO, 'tools', 'train.py'), str(cfgs / cfg), '--work-dir', str(work_dir),
               *args]
    else:
        cmd = ['bash', os.path.join(REPO, 'tools', 'dist_train.sh'), str(cfgs / cfg), str(procs), '--work-dir',
               str(work_dir), *args]
    env = env or _env(cfgs)
    if procs > 1:
        env = dict(env, PYTHON=sys.executable, PORT=str(29500 + os.getpid() % 1000))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _train_until(cfgs, cfg, work_dir, ready, env=None, poll=0.05):
    """Start a run and SIGKILL it (the whole process group) once ``ready(work_dir)`` holds."""
    cmd = [sys.executable, os.path.join(REPO, 'tools', 'train.py'), str(cfgs / cfg), '--work-dir', str(work_dir)]
    proc = subprocess.Popen(cmd, env=env or _env(cfgs), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    t0 = time.time()
    try:
        while not ready(work_dir):
            assert proc.poll() is None, 'the run ended before the kill point'
            assert time.time() - t0 < 600, 'kill point not reached in 10 minutes'
            time.sleep(poll)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _losses(work_dir) -> dict[int, float]:
    """iteration -> logged loss, over every run (timestamp folder) in the work dir."""
    out = {}
    for f in sorted(glob.glob(os.path.join(str(work_dir), '*', 'vis_data', 'scalars.json'))):
        with open(f) as fh:
            for line in fh:
                rec = json.loads(line)
                if 'loss' in rec and 'lr' in rec:
                    out[rec['step']] = rec['loss']
    return out


def _weights(work_dir, name='epoch_3.pth') -> dict:
    return torch.load(os.path.join(str(work_dir), name), map_location='cpu', weights_only=True)['state_dict']


def _assert_same_run(ref, other):
    a, b = _weights(ref), _weights(other)
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert worst == 0 and not differ, f'final weights differ: max |diff| {worst:.3g} in {len(differ)} tensors'
    la, lb = _losses(ref), _losses(other)
    assert len(la) >= 6 and la.keys() == lb.keys(), (sorted(la), sorted(lb))
    wrong = {s: (la[s], lb[s]) for s in la if la[s] != lb[s]}
    assert not wrong, f'per-iteration losses differ: {wrong}'


def _epoch_in_log(work_dir, epoch, it):
    logs = glob.glob(os.path.join(str(work_dir), '*', '*.log'))
    pattern = re.compile(rf'Epoch\(train\)\s+\[{epoch}\]\[{it}/')
    return any(pattern.search(open(f).read()) for f in logs)


@pytest.fixture(scope='module')
def reference(cfgs, tmp_path_factory):
    wd = tmp_path_factory.mktemp('reference')
    _train(cfgs, 'base.py', wd)
    return wd


def test_stop_after_epoch_and_resume_is_the_uninterrupted_run(cfgs, reference, tmp_path):
    _train(cfgs, 'stop1.py', tmp_path)
    assert (tmp_path / 'epoch_1.pth').is_file() and not (tmp_path / 'epoch_2.pth').exists()
    ckpt = torch.load(tmp_path / 'epoch_1.pth', map_location='cpu', weights_only=True)
    states = ckpt['random_states']
    assert states['world_size'] == 1 and set(states['ranks'][0]) >= {'python', 'numpy', 'torch'}
    _train(cfgs, 'base.py', tmp_path, '--resume', str(tmp_path / 'epoch_1.pth'))
    _assert_same_run(reference, tmp_path)


def test_sigkill_mid_epoch_then_auto_resume_is_the_uninterrupted_run(cfgs, reference, tmp_path):
    _train_until(cfgs, 'base.py', tmp_path, lambda wd: _epoch_in_log(wd, 2, 2))
    assert not os.path.exists(tmp_path / 'epoch_2.pth')
    _train(cfgs, 'base.py', tmp_path, '--resume')
    _assert_same_run(reference, tmp_path)


def test_sigkill_inside_a_checkpoint_save_leaves_no_partial_file(cfgs, reference, tmp_path):
    """Each fsync takes 3 s: the kill lands after epoch_2.pth's bytes are written to its temporary file
    and before the rename.  The old checkpoint and pointer stay; auto-resume removes the temporary
    file and continues from epoch 1."""
    env = _env(cfgs, TLA_TEST_SLOW_FSYNC='3')

    def saving_epoch_2(wd):
        return any(n.startswith('.epoch_2.pth.') for n in os.listdir(wd)) if os.path.isdir(wd) else False

    _train_until(cfgs, 'base.py', tmp_path, saving_epoch_2, env=env)
    names = os.listdir(tmp_path)
    assert 'epoch_2.pth' not in names and any(n.startswith('.epoch_2.pth.') for n in names), names
    assert open(tmp_path / 'last_checkpoint').read().strip().endswith('epoch_1.pth')
    for n in names:
        if n.endswith('.pth'):
            assert diagnose_checkpoint_file(tmp_path / n) is None, n
    proc = _train(cfgs, 'base.py', tmp_path, '--resume')
    assert 'removed .epoch_2.pth.' in proc.stdout + proc.stderr
    assert not any(n.endswith('.tmp') for n in os.listdir(tmp_path))
    _assert_same_run(reference, tmp_path)


def test_auto_resume_skips_an_unreadable_checkpoint(cfgs, reference, tmp_path):
    """last_checkpoint names a file that is cut short (a disk filled up, a copy interrupted): one line
    says so and the run resumes from the newest readable checkpoint, still exact."""
    _train(cfgs, 'stop1.py', tmp_path)
    good = (tmp_path / 'epoch_1.pth').read_bytes()
    (tmp_path / 'epoch_2.pth').write_bytes(good[: len(good) // 3])
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_2.pth'))
    proc = _train(cfgs, 'base.py', tmp_path, '--resume')
    out = proc.stdout + proc.stderr
    assert 'epoch_2.pth (named by last_checkpoint) is truncated' in out, out[-3000:]
    assert f'resuming from {tmp_path / "epoch_1.pth"}' in out
    _assert_same_run(reference, tmp_path)


def test_without_the_hook_a_resumed_run_departs(cfgs, tmp_path):
    """The comparison can fail: mmengine alone re-seeds from the config on resume."""
    ref = tmp_path / 'ref'
    _train(cfgs, 'nohook.py', ref)
    _train(cfgs, 'nohook_stop1.py', tmp_path / 'cut')
    _train(cfgs, 'nohook.py', tmp_path / 'cut', '--resume')
    with pytest.raises(AssertionError, match='final weights differ'):
        _assert_same_run(ref, tmp_path / 'cut')


def test_two_processes_stop_and_resume(cfgs, tmp_path):
    """Two CPU processes (gloo): each rank saves and restores its own states."""
    ref = tmp_path / 'ref'
    _train(cfgs, 'base.py', ref, procs=2)
    _train(cfgs, 'stop1.py', tmp_path / 'cut', procs=2)
    states = torch.load(tmp_path / 'cut' / 'epoch_1.pth', map_location='cpu', weights_only=True)['random_states']
    # one entry per rank (equal here: mmengine seeds every rank alike unless randomness.diff_rank_seed)
    assert states['world_size'] == 2 and len(states['ranks']) == 2
    _train(cfgs, 'base.py', tmp_path / 'cut', '--resume', procs=2)
    _assert_same_run(ref, tmp_path / 'cut')
