"""What the cluster tests share (``tests/resume/test_cluster_*.py``): the configs their runs use and the
helpers that launch the tools, act on a run and compare two runs, and the fixtures ``cfgs``, ``reference``
and ``reference2`` (each test module takes them with ``pytest_plugins = ['cluster_runs']``).

Every run goes through ``tools/train.py``, ``tools/dist_train.sh`` or ``tools/slurm_train.sh`` on the
demo DeiT TL-Align config (``configs/demo/deit-demo_tla_1xb64-10e_fashion-mnist.py``: real
Fashion-MNIST, RandAugment in two persistent workers, TL-Align mixing, random erasing) cut to 320
training images and 3 epochs, validated and checkpointed every epoch, the loss logged every iteration;
or on the UperNet and Cascade Mask R-CNN demo configs, cut to a few iterations.

The reference is the run nobody stopped.  Each interrupted run must end with the reference's weights
exactly (max |diff| = 0 on every tensor) and log the reference's loss at every iteration
(:func:`assert_same_run`).
"""
from __future__ import annotations

import glob
import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest
import torch

from tlalign_mm.checkpoint import load_checkpoint_file  # weights_only, with mmengine's types allow-listed

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(REPO, 'data', 'demo')
FMNIST = os.path.join(DATA, 'fashion_mnist')
DEMO = os.path.join(REPO, 'configs', 'demo')

#: every cluster test module's ``pytestmark``: slow, and skipped without the demo data
CLUSTER_MARKS = [pytest.mark.slow,
                 pytest.mark.skipif(not os.path.isdir(os.path.join(FMNIST, 'train')),
                                    reason='demo data missing: run tools/prepare_demo_data.py')]

#: a test-only module the runs import (custom_imports): a fault at an iteration of the first launch, and
#: a switch that makes every fsync slow, so that a kill lands inside a checkpoint save
HELPER = '''
import os, time
from mmengine.hooks import Hook
from tlalign_mm.registry import HOOKS

@HOOKS.register_module()
class FaultHook(Hook):
    """At ``iteration`` on ``rank``, in the first launch only: ``os._exit(1)`` or a long sleep."""
    priority = 'LOWEST'
    def __init__(self, iteration, rank, action):
        self.iteration, self.rank, self.action = iteration, rank, action
    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 != self.iteration or runner.rank != self.rank:
            return
        if int(os.environ.get('TORCHELASTIC_RESTART_COUNT') or 0):
            return
        with open(os.path.join(runner.work_dir, f'fault_{self.action}'), 'w') as f:
            f.write(str(time.time()))
        if self.action == 'exit':
            os._exit(1)
        time.sleep(600)

if os.environ.get('TLA_TEST_SLOW_FSYNC'):
    _fsync = os.fsync
    def _slow_fsync(fd):
        time.sleep(float(os.environ['TLA_TEST_SLOW_FSYNC']))
        _fsync(fd)
    os.fsync = _slow_fsync
'''

BASE = f'''
_base_ = [{os.path.join(DEMO, 'deit-demo_tla_1xb64-10e_fashion-mnist.py')!r}]
custom_imports = dict(imports=['tlalign_mm', 'cluster_helper'], allow_failed_imports=False)
train_cfg = dict(max_epochs=3, val_interval=1)
train_dataloader = dict(dataset=dict(data_root={FMNIST!r}, indices=320))
val_dataloader = dict(dataset=dict(data_root={FMNIST!r}, indices=128))
test_dataloader = val_dataloader
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, max_keep_ckpts=5))
'''

CONFIGS = {
    'base.py': BASE,
    # one checkpoint kept
    'keep1.py': "_base_ = ['./base.py']\ndefault_hooks = dict(checkpoint=dict(max_keep_ckpts=1))\n",
    # a slow validation (64 batches of 2): the same training, a window to stop in
    'slowval.py': "_base_ = ['./base.py']\nval_dataloader = dict(batch_size=2)\ntest_dataloader = val_dataloader\n",
    # a rank that dies at iteration 4 / sleeps at iteration 4 (watchdog 10 s)
    'die.py': "_base_ = ['./base.py']\ncustom_hooks = [dict(type='FaultHook', iteration=4, rank=1, action='exit')]\n",
    'hang.py': ("_base_ = ['./base.py']\ncustom_hooks = [dict(type='FaultHook', iteration=4, rank=1, action='sleep')]\n"
                "default_hooks = dict(watchdog=dict(timeout=10, interval=1))\n"),
}

TIMEOUT = 300


# ------------------------------------------------------------------------------ running the tools
def write_configs(d):
    """Write :data:`HELPER` (as ``cluster_helper.py``) and :data:`CONFIGS` into folder ``d``; returns ``d``."""
    (d / 'cluster_helper.py').write_text(HELPER)
    for name, text in CONFIGS.items():
        (d / name).write_text(text)
    return d


def _port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_env(cfgs, **extra) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(cfgs), REPO, os.environ.get('PYTHONPATH', '')]),
               OMP_NUM_THREADS='1', PYTHON=sys.executable, PORT=str(_port()), MASTER_PORT=str(_port()))
    for k in ('TORCHELASTIC_RESTART_COUNT', 'SLURM_RESTART_COUNT', 'SLURM_JOB_ID'):
        env.pop(k, None)
    env.update(extra)
    return env


def train_cmd(cfgs, cfg, work_dir, *args, procs=1) -> list[str]:
    cfg = cfg if os.path.isabs(str(cfg)) else str(cfgs / cfg)
    if procs == 1:
        return [sys.executable, os.path.join(REPO, 'tools', 'train.py'), cfg, '--work-dir', str(work_dir), *args]
    return ['bash', os.path.join(REPO, 'tools', 'dist_train.sh'), cfg, str(procs), '--work-dir', str(work_dir),
            *args]


def run(cmd, env) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def start(cmd, env) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def wait_until(ready, proc, timeout=TIMEOUT, poll=0.05):
    t0 = time.time()
    while not ready():
        if proc.poll() is not None:
            raise AssertionError('the run ended before the point to act at:\n' + proc.stdout.read()[-3000:])
        assert time.time() - t0 < timeout, 'the point to act at was not reached'
        time.sleep(poll)


def finish(proc, timeout=TIMEOUT) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def launch_logs(work_dir) -> list[str]:
    """The text of each launch's log, oldest first."""
    return [open(f).read() for f in sorted(glob.glob(os.path.join(str(work_dir), '2*', '2*.log')))]


def logged(work_dir, pattern) -> bool:
    logs = launch_logs(work_dir)
    return bool(logs) and re.search(pattern, logs[-1]) is not None


def train_iterations(work_dir) -> int:
    """Training iterations logged by the newest launch so far (its last ``Epoch(train) [e][b/n]``)."""
    logs = launch_logs(work_dir)
    found = re.findall(r'Epoch\(train\)\s+\[(\d+)\]\[\s*(\d+)/(\d+)\]', logs[-1]) if logs else []
    return (int(found[-1][0]) - 1) * int(found[-1][2]) + int(found[-1][1]) if found else 0


def _children(pid) -> list[int]:
    try:
        with open(f'/proc/{pid}/task/{pid}/children') as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def _environ(pid) -> dict:
    with open(f'/proc/{pid}/environ', 'rb') as f:
        return dict(kv.split('=', 1) for kv in f.read().decode(errors='replace').split('\0') if '=' in kv)


def torchrun_pid(launcher_pid) -> int:
    """The torchrun process under ``bash dist_train.sh``."""
    for _ in range(200):
        for child in _children(launcher_pid):
            with open(f'/proc/{child}/cmdline', 'rb') as f:
                if b'torch.distributed.run' in f.read():
                    return child
        time.sleep(0.05)
    raise AssertionError('no torchrun process')


def rank_pid(launcher_pid, rank) -> int:
    return next(p for p in _children(torchrun_pid(launcher_pid)) if _environ(p).get('RANK') == str(rank))


# ------------------------------------------------------------------------------ comparing runs
def _losses(work_dir) -> dict[int, float]:
    """iteration -> logged training loss, over every launch in the work dir (the last launch's value wins)."""
    out = {}
    for f in sorted(glob.glob(os.path.join(str(work_dir), '*', 'vis_data', 'scalars.json'))):
        with open(f) as fh:
            for line in fh:
                rec = json.loads(line)
                if 'loss' in rec and 'lr' in rec:
                    out[rec['step']] = rec['loss']
    return out


def _weights(work_dir, name) -> dict:
    return load_checkpoint_file(os.path.join(str(work_dir), name))['state_dict']


def assert_same_run(ref, other, final='epoch_3.pth', min_iters=6):
    a, b = _weights(ref, final), _weights(other, final)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    worst = max(((a[k].double() - b[k].double()).abs().max().item() for k in differ), default=0.0)
    assert not differ, f'final weights differ: max |diff| {worst:.3g} in {len(differ)} tensors'
    la, lb = _losses(ref), _losses(other)
    assert len(la) >= min_iters and la.keys() == lb.keys(), (sorted(la), sorted(lb))
    wrong = {s: (la[s], lb[s]) for s in la if la[s] != lb[s]}
    assert not wrong, f'per-iteration losses differ: {wrong}'


def snapshot(work_dir) -> dict:
    return {os.path.relpath(os.path.join(r, f), work_dir): (os.stat(os.path.join(r, f)).st_size,
                                                            os.stat(os.path.join(r, f)).st_mtime_ns)
            for r, _, files in os.walk(work_dir) for f in files}


def _stopped_at(out: str) -> tuple[int, str]:
    """(iteration, checkpoint) of train.py's stop line."""
    m = re.search(r'stopped at iteration (\d+) \(.*?\) and saved (\S+iter_(\d+)_interrupted\.pth)', out)
    assert m, out[-3000:]
    assert m.group(1) == m.group(3)
    return int(m.group(1)), m.group(2)


def check_interrupted(work_dir, out):
    iteration, ckpt = _stopped_at(out)
    assert open(os.path.join(str(work_dir), 'last_checkpoint')).read() == ckpt and os.path.isfile(ckpt)
    meta = load_checkpoint_file(ckpt)['meta']
    assert meta['iter'] == iteration
    return ckpt


# ------------------------------------------------------------------------------ fixtures (``pytest_plugins``)
@pytest.fixture(scope='module')
def cfgs(tmp_path_factory):
    """A folder with :data:`HELPER` and :data:`CONFIGS` (:func:`write_configs`)."""
    return write_configs(tmp_path_factory.mktemp('cluster_cfgs'))


def _uninterrupted(cfgs, work_dir, procs):
    ok(run(train_cmd(cfgs, 'base.py', work_dir, procs=procs), run_env(cfgs)))
    return work_dir


@pytest.fixture(scope='module')
def reference(cfgs, tmp_path_factory):
    """The uninterrupted run of ``base.py`` on one process, which the tests of a module compare with."""
    return _uninterrupted(cfgs, tmp_path_factory.mktemp('reference'), 1)


@pytest.fixture(scope='module')
def reference2(cfgs, tmp_path_factory):
    """The uninterrupted run of ``base.py`` on 2 ranks (gloo)."""
    return _uninterrupted(cfgs, tmp_path_factory.mktemp('reference2'), 2)
