"""A job that survives its cluster, run as a cluster runs it: real processes, real signals, torchrun with
gloo on 2 ranks, real data-loader workers, real files.

Every run goes through ``tools/train.py``, ``tools/dist_train.sh`` or ``tools/slurm_train.sh`` (with a
stand-in ``srun`` / ``scontrol`` on ``PATH`` that records its arguments and starts the tasks here) on the
demo DeiT TL-Align config (``configs/demo/deit-demo_tla_1xb64-10e_fashion-mnist.py``: real
Fashion-MNIST, RandAugment in two persistent workers, TL-Align mixing, random erasing) cut to 320
training images and 3 epochs, validated and checkpointed every epoch, the loss logged every iteration;
and on the UperNet and Cascade Mask R-CNN demo configs, cut to a few iterations.

The reference is the run nobody stopped.  Each interrupted run must end with the reference's weights
exactly (max |diff| = 0 on every tensor) and log the reference's loss at every iteration:

* SIGTERM to one rank mid-epoch, and to the launcher: every rank exits with 75 within torchrun's 30 s,
  ``iter_<N>_interrupted.pth`` holds that iteration, ``--resume`` continues the same run;
* SIGUSR1 through ``slurm_train.sh --requeue``: ``--signal=USR1@120`` reaches srun, the tasks stop and
  rank 0 runs ``scontrol requeue`` once; the same command again finishes the run;
* three kills (SIGKILL, SIGTERM, SIGINT) at random iterations, then the same command finishes: the
  uninterrupted run; a fourth launch changes no file;
* a kill inside a slowed checkpoint save with ``max_keep_ckpts=1`` (the old checkpoint stays until the
  new one is on disk), a stop and a kill during validation (each validation runs once after resuming);
* a rank that dies (``os._exit(1)``) with a restart budget of 1: torchrun relaunches, the job resumes by
  itself; with no budget the job exits non-zero promptly;
* a rank asleep while the other waits in a collective: the watchdog ends the job within its timeout,
  naming the rank;
* a folder with an empty file, random bytes, a truncated JPEG and a PNG with a bad CRC: the run
  completes and lists exactly them; ``max_bad_fraction=0`` stops with one line; interrupted equals
  uninterrupted;
* a resume with another learning rate stops with one line naming the key; an unreadable checkpoint is
  skipped by auto-resume; without the random states restored a resumed run departs (the comparison can
  fail);
* UperNet and Cascade Mask R-CNN: stopped and resumed equals uninterrupted; a kill inside a slowed save
  with ``max_keep_ckpts=1`` resumes to the same weights.
"""
from __future__ import annotations

import glob
import json
import os
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest
import torch

from tlalign_mm.checkpoint import load_checkpoint_file  # weights_only, with mmengine's types allow-listed
from tlalign_mm.checkpoint.io import diagnose_checkpoint_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(REPO, 'data', 'demo')
FMNIST = os.path.join(DATA, 'fashion_mnist')
DEMO = os.path.join(REPO, 'configs', 'demo')

pytestmark = [pytest.mark.slow,
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
@pytest.fixture(scope='module')
def cfgs(tmp_path_factory):
    d = tmp_path_factory.mktemp('cluster_cfgs')
    (d / 'cluster_helper.py').write_text(HELPER)
    for name, text in CONFIGS.items():
        (d / name).write_text(text)
    return d


def _port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _env(cfgs, **extra) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(cfgs), REPO, os.environ.get('PYTHONPATH', '')]),
               OMP_NUM_THREADS='1', PYTHON=sys.executable, PORT=str(_port()), MASTER_PORT=str(_port()))
    for k in ('TORCHELASTIC_RESTART_COUNT', 'SLURM_RESTART_COUNT', 'SLURM_JOB_ID'):
        env.pop(k, None)
    env.update(extra)
    return env


def _cmd(cfgs, cfg, work_dir, *args, procs=1) -> list[str]:
    cfg = cfg if os.path.isabs(str(cfg)) else str(cfgs / cfg)
    if procs == 1:
        return [sys.executable, os.path.join(REPO, 'tools', 'train.py'), cfg, '--work-dir', str(work_dir), *args]
    return ['bash', os.path.join(REPO, 'tools', 'dist_train.sh'), cfg, str(procs), '--work-dir', str(work_dir),
            *args]


def _run(cmd, env) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _start(cmd, env) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_until(ready, proc, timeout=TIMEOUT, poll=0.05):
    t0 = time.time()
    while not ready():
        if proc.poll() is not None:
            raise AssertionError('the run ended before the point to act at:\n' + proc.stdout.read()[-3000:])
        assert time.time() - t0 < timeout, 'the point to act at was not reached'
        time.sleep(poll)


def _finish(proc, timeout=TIMEOUT) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _logs(work_dir) -> list[str]:
    """The text of each launch's log, oldest first."""
    return [open(f).read() for f in sorted(glob.glob(os.path.join(str(work_dir), '2*', '2*.log')))]


def _logged(work_dir, pattern) -> bool:
    logs = _logs(work_dir)
    return bool(logs) and re.search(pattern, logs[-1]) is not None


def _train_iterations(work_dir) -> int:
    """Training iterations logged by the newest launch so far (its last ``Epoch(train) [e][b/n]``)."""
    logs = _logs(work_dir)
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


def _torchrun(launcher_pid) -> int:
    """The torchrun process under ``bash dist_train.sh``."""
    for _ in range(200):
        for child in _children(launcher_pid):
            with open(f'/proc/{child}/cmdline', 'rb') as f:
                if b'torch.distributed.run' in f.read():
                    return child
        time.sleep(0.05)
    raise AssertionError('no torchrun process')


def _rank_pid(launcher_pid, rank) -> int:
    return next(p for p in _children(_torchrun(launcher_pid)) if _environ(p).get('RANK') == str(rank))


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


def _assert_same_run(ref, other, final='epoch_3.pth', min_iters=6):
    a, b = _weights(ref, final), _weights(other, final)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    worst = max(((a[k].double() - b[k].double()).abs().max().item() for k in differ), default=0.0)
    assert not differ, f'final weights differ: max |diff| {worst:.3g} in {len(differ)} tensors'
    la, lb = _losses(ref), _losses(other)
    assert len(la) >= min_iters and la.keys() == lb.keys(), (sorted(la), sorted(lb))
    wrong = {s: (la[s], lb[s]) for s in la if la[s] != lb[s]}
    assert not wrong, f'per-iteration losses differ: {wrong}'


def _snapshot(work_dir) -> dict:
    return {os.path.relpath(os.path.join(r, f), work_dir): (os.stat(os.path.join(r, f)).st_size,
                                                            os.stat(os.path.join(r, f)).st_mtime_ns)
            for r, _, files in os.walk(work_dir) for f in files}


def _stopped_at(out: str) -> tuple[int, str]:
    """(iteration, checkpoint) of train.py's stop line."""
    m = re.search(r'stopped at iteration (\d+) \(.*?\) and saved (\S+iter_(\d+)_interrupted\.pth)', out)
    assert m, out[-3000:]
    assert m.group(1) == m.group(3)
    return int(m.group(1)), m.group(2)


def _check_interrupted(work_dir, out):
    iteration, ckpt = _stopped_at(out)
    assert open(os.path.join(str(work_dir), 'last_checkpoint')).read() == ckpt and os.path.isfile(ckpt)
    meta = load_checkpoint_file(ckpt)['meta']
    assert meta['iter'] == iteration
    return ckpt


@pytest.fixture(scope='module')
def reference(cfgs, tmp_path_factory):
    wd = tmp_path_factory.mktemp('reference')
    _ok(_run(_cmd(cfgs, 'base.py', wd), _env(cfgs)))
    return wd


@pytest.fixture(scope='module')
def reference2(cfgs, tmp_path_factory):
    wd = tmp_path_factory.mktemp('reference2')
    _ok(_run(_cmd(cfgs, 'base.py', wd, procs=2), _env(cfgs)))
    return wd


# ------------------------------------------------------------------------------ signals
@pytest.mark.parametrize('target', ['one rank', 'the launcher'])
def test_sigterm_saves_that_iteration_and_resume_is_the_same_run(cfgs, reference2, tmp_path, target):
    env = _env(cfgs)
    proc = _start(_cmd(cfgs, 'base.py', tmp_path, procs=2), env)
    _wait_until(lambda: _train_iterations(tmp_path) >= 3, proc)
    t0 = time.time()
    os.kill(_rank_pid(proc.pid, 1) if target == 'one rank' else _torchrun(proc.pid), signal.SIGTERM)
    rc, out = _finish(proc)
    assert time.time() - t0 < 30, 'the ranks did not exit within torchrun\'s 30 s'
    assert rc != 0 and len(re.findall(r'^train\.py: .* stopped at iteration', out, re.M)) == 2, out[-3000:]
    if target == 'one rank':                                         # torchrun's summary: both ranks 75
        assert len(re.findall(r'exitcode\s*: 75 ', out)) == 2, out[-3000:]
    ckpt = _check_interrupted(tmp_path, out)
    _ok(_run(_cmd(cfgs, 'base.py', tmp_path, '--resume', procs=2), env))
    assert not os.path.exists(ckpt)                                  # superseded by the next regular checkpoint
    _assert_same_run(reference2, tmp_path)


def _fake_slurm(bin_dir, log_dir):
    """``srun``: records its arguments, starts ``--ntasks`` tasks here with Slurm's variables, waits and
    exits with the largest status; ``scontrol``: records its arguments, names localhost as the node."""
    srun = f'''#!/usr/bin/env bash
echo "$@" >> {log_dir}/srun.args
ntasks=1
while [ $# -gt 0 ]; do
    case $1 in --ntasks=*) ntasks=${{1#*=}}; shift ;; -p) shift 2 ;; -*) shift ;; *) break ;; esac
done
pids=()
for ((i = 0; i < ntasks; i++)); do
    SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NTASKS=$ntasks SLURM_NODELIST=localhost SLURM_JOB_ID=4242 "$@" &
    pids+=($!)
done
echo "${{pids[@]}}" > {log_dir}/srun.pids
rc=0
for p in "${{pids[@]}}"; do wait $p; r=$?; [ $r -gt $rc ] && rc=$r; done
exit $rc
'''
    scontrol = f'''#!/usr/bin/env bash
echo "$@" >> {log_dir}/scontrol.args
[ "$1 $2" = "show hostnames" ] && echo localhost
exit 0
'''
    for name, text in (('srun', srun), ('scontrol', scontrol)):
        path = os.path.join(bin_dir, name)
        with open(path, 'w') as f:
            f.write(text)
        os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)


def test_sigusr1_through_slurm_train_sh(cfgs, reference2, tmp_path):
    bin_dir, log_dir, wd = tmp_path / 'bin', tmp_path / 'log', tmp_path / 'work'
    bin_dir.mkdir()
    log_dir.mkdir()
    _fake_slurm(bin_dir, log_dir)
    env = _env(cfgs, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', GPUS='2', GPUS_PER_NODE='2')
    cmd = ['bash', os.path.join(REPO, 'tools', 'slurm_train.sh'), '--requeue', 'gpu', 'tla', str(cfgs / 'base.py'),
           str(wd)]
    proc = _start(cmd, env)
    _wait_until(lambda: _train_iterations(wd) >= 3, proc)
    for pid in open(log_dir / 'srun.pids').read().split():       # Slurm signals every task
        os.kill(int(pid), signal.SIGUSR1)
    rc, out = _finish(proc)
    assert rc == 75, out[-3000:]
    _check_interrupted(wd, out)
    srun_args = open(log_dir / 'srun.args').read().split()
    assert {'--signal=USR1@120', '--ntasks=2', '--kill-on-bad-exit=1', '--launcher=slurm', '--requeue',
            '--resume'} <= set(srun_args)
    scontrol = open(log_dir / 'scontrol.args').read().splitlines()
    assert scontrol.count('requeue 4242') == 1 and 'show hostnames localhost' in scontrol
    _ok(_run(cmd, env))                                              # the requeued job: the same command
    _assert_same_run(reference2, wd)


def test_three_kills_then_the_same_command_finishes_the_run(cfgs, reference, tmp_path):
    """SIGKILL (no warning), SIGTERM and SIGINT (to the whole process group, workers included) at random
    iterations; every launch is the same command.  A fourth launch of the finished run changes no file."""
    env = _env(cfgs)
    cmd = _cmd(cfgs, 'base.py', tmp_path, '--resume')
    at = sorted(random.Random(0).sample(range(2, 12), 3))              # 12 iterations: 3 epochs x 4
    for it, sig in zip(at, (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)):
        proc = _start(cmd, env)
        _wait_until(lambda it=it: _train_iterations(tmp_path) >= it, proc)
        os.killpg(proc.pid, sig)
        rc, out = _finish(proc)
        assert rc == (-9 if sig == signal.SIGKILL else 75), out[-3000:]
    _ok(_run(cmd, env))
    _assert_same_run(reference, tmp_path)
    before = _snapshot(tmp_path)
    out = _ok(_run(cmd, env)).stderr
    assert 'holds this run finished' in out and 'nothing to do' in out
    assert _snapshot(tmp_path) == before


def test_a_kill_inside_a_save_with_one_checkpoint_kept(cfgs, reference, tmp_path):
    """Each fsync takes 1.5 s: the kill lands after epoch_2.pth's bytes are in its temporary file, before
    the rename.  mmengine would have removed epoch_1.pth (max_keep_ckpts=1) already; here it stays."""
    env = _env(cfgs, TLA_TEST_SLOW_FSYNC='1.5')
    proc = _start(_cmd(cfgs, 'keep1.py', tmp_path), env)
    _wait_until(lambda: any(n.startswith('.epoch_2.pth.') for n in os.listdir(tmp_path)), proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    names = os.listdir(tmp_path)
    assert 'epoch_1.pth' in names and 'epoch_2.pth' not in names, names
    assert open(tmp_path / 'last_checkpoint').read().endswith('epoch_1.pth')
    _ok(_run(_cmd(cfgs, 'keep1.py', tmp_path, '--resume'), _env(cfgs)))
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith('.pth') and n.startswith('epoch')) == ['epoch_3.pth']
    _assert_same_run(reference, tmp_path)


def test_a_stop_and_a_kill_during_validation(cfgs, reference, tmp_path):
    """SIGTERM during epoch 1's validation stops at a validation iteration, with the validation pending;
    SIGKILL during epoch 2's leaves epoch_2.pth, written before it.  Each resume validates that epoch
    first, once, and training is the uninterrupted run's (validation draws no random numbers)."""
    env = _env(cfgs)
    cmd = _cmd(cfgs, 'slowval.py', tmp_path, '--resume')
    proc = _start(cmd, env)
    _wait_until(lambda: _logged(tmp_path, r'Epoch\(val\)\s+\[1\]\[10/'), proc)
    os.killpg(proc.pid, signal.SIGTERM)
    rc, out = _finish(proc)
    assert rc == 75 and 'during the validation after epoch 1' in out, out[-3000:]
    proc = _start(cmd, env)
    _wait_until(lambda: _logged(tmp_path, r'Epoch\(val\)\s+\[2\]\[10/'), proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    _ok(_run(cmd, env))
    logs = _logs(tmp_path)
    done = [[int(e) for e in re.findall(r'Epoch\(val\) \[(\d+)\]\[64/64\]\s+accuracy', log)] for log in logs]
    assert done == [[], [1], [2, 3]], done           # each epoch validated once, after the resume that owed it
    assert 'validating iteration 4 first' in logs[1] and 'validating iteration 8 first' in logs[2]   # 4 per epoch
    _assert_same_run(reference, tmp_path)


def test_auto_resume_skips_an_unreadable_checkpoint(cfgs, reference, tmp_path):
    """last_checkpoint names a file that is cut short (a disk filled up, a copy interrupted): one line
    says so and the run resumes from the newest readable checkpoint, still exact."""
    env = _env(cfgs)
    proc = _start(_cmd(cfgs, 'base.py', tmp_path), env)
    _wait_until(lambda: os.path.isfile(tmp_path / 'epoch_1.pth') and _train_iterations(tmp_path) >= 6, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    good = (tmp_path / 'epoch_1.pth').read_bytes()
    (tmp_path / 'epoch_2.pth').write_bytes(good[: len(good) // 3])
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_2.pth'))
    out = _ok(_run(_cmd(cfgs, 'base.py', tmp_path, '--resume'), env))
    text = out.stdout + out.stderr
    assert 'epoch_2.pth (named by last_checkpoint) is truncated' in text, text[-3000:]
    assert f'resuming from {tmp_path / "epoch_1.pth"}' in text
    _assert_same_run(reference, tmp_path)


def test_without_the_random_states_a_resumed_run_departs(cfgs, reference, tmp_path):
    """The comparison can fail: when RandomStatesHook does not restore the states (random erasing and drop
    path draw from the processes' generators, which mmengine re-seeds from the config) the run departs."""
    (tmp_path / 'nostates.py').write_text(f"_base_ = [{str(cfgs / 'base.py')!r}]\n"
                                          "default_hooks = dict(random_states=dict(restore=False))\n")
    env = _env(cfgs)
    cmd = _cmd(cfgs, tmp_path / 'nostates.py', tmp_path / 'wd', '--resume')
    proc = _start(cmd, env)
    _wait_until(lambda: _train_iterations(tmp_path / 'wd') >= 6, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    assert _finish(proc)[0] == 75
    _ok(_run(cmd, env))
    with pytest.raises(AssertionError, match='final weights differ'):
        _assert_same_run(reference, tmp_path / 'wd')


# ------------------------------------------------------------------------------ restarts and hangs
def test_a_dead_rank_is_relaunched_and_the_job_resumes(cfgs, reference2, tmp_path):
    _ok(_run(_cmd(cfgs, 'die.py', tmp_path / 'budget1', procs=2), _env(cfgs, MAX_RESTARTS='1')))
    assert (tmp_path / 'budget1' / 'fault_exit').exists()
    _assert_same_run(reference2, tmp_path / 'budget1')
    proc = _run(_cmd(cfgs, 'die.py', tmp_path / 'budget0', procs=2), _env(cfgs, MAX_RESTARTS='0'))
    died = float((tmp_path / 'budget0' / 'fault_exit').read_text())
    assert proc.returncode != 0 and time.time() - died < 30, proc.stderr[-3000:]


def test_a_rank_stuck_in_a_collective_ends_the_job(cfgs, tmp_path):
    """Rank 1 sleeps after iteration 4, the last of epoch 2; rank 0 waits for it in the epoch end's
    all-gather of the random states.  The watchdog (timeout 10 s) ends the job, naming rank 1.

    Both watchdogs fire about 10 s after the same iteration.  Whichever ends its rank first, the other
    rank's report (if it comes before its own exit) names rank 1 too: rank 0, woken by its collective's
    error, stops watching as it exits rather than reporting itself."""
    proc = _run(_cmd(cfgs, 'hang.py', tmp_path, procs=2), _env(cfgs))
    asleep = float((tmp_path / 'fault_sleep').read_text())
    out = proc.stdout + proc.stderr
    # the watchdog's 10 s, then both ranks' reports and torchrun's teardown (slow on a loaded 2-core machine);
    # without the watchdog the job would hang until the test's own timeout
    assert proc.returncode != 0 and time.time() - asleep < 10 + 60, out[-3000:]
    reports = re.findall(r'WatchdogHook: rank (\d) made no progress for \d+ s \(timeout 10 s\).*', out)
    assert reports and set(reports) <= {'0', '1'} and len(set(reports)) == len(reports), out[-3000:]
    for line in re.findall(r'WatchdogHook: .*', out):
        assert 'held up by rank 1 (' in line and 'not in a collective' in line, line
        assert 'rank 0 (' not in line.split('; waiting: ')[0], line      # rank 0 never holds it up
    assert re.search(r'exitcode\s*: 124', out)


# ------------------------------------------------------------------------------ bad samples
@pytest.fixture(scope='module')
def bad_folder(tmp_path_factory):
    """2 classes x 40 Fashion-MNIST PNGs, and in class 0: an empty file, random bytes, a truncated
    JPEG and a PNG whose IDAT fails its CRC."""
    from PIL import Image
    root = tmp_path_factory.mktemp('bad_folder')
    classes = sorted(os.listdir(os.path.join(FMNIST, 'train')))[:2]
    for c in classes:
        os.makedirs(root / 'train' / c)
        for name in sorted(os.listdir(os.path.join(FMNIST, 'train', c)))[:40]:
            shutil.copy(os.path.join(FMNIST, 'train', c, name), root / 'train' / c / name)
    bad_dir = root / 'train' / classes[0]
    sample = os.path.join(FMNIST, 'train', classes[0], sorted(os.listdir(os.path.join(FMNIST, 'train', classes[0])))[0])
    (bad_dir / 'empty.png').write_bytes(b'')
    (bad_dir / 'random.png').write_bytes(random.Random(1).randbytes(3000))
    img = Image.open(sample).convert('RGB').resize((128, 128))
    img.save(bad_dir / 'cut.jpg', quality=95)
    data = (bad_dir / 'cut.jpg').read_bytes()
    (bad_dir / 'cut.jpg').write_bytes(data[: len(data) // 2])
    png = bytearray(open(sample, 'rb').read())
    png[png.find(b'IDAT') + 8] ^= 0xFF
    (bad_dir / 'crc.png').write_bytes(bytes(png))
    bad = sorted(str(bad_dir / n) for n in ('empty.png', 'random.png', 'cut.jpg', 'crc.png'))
    cfg = root / 'bad.py'
    # every image once per epoch (the demo's repeated augmentation shows a third of them)
    cfg.write_text(BASE + f"train_dataloader = dict(dataset=dict(data_root={str(root)!r}, indices=None), "
                          "sampler=dict(_delete_=True, type='DefaultSampler', shuffle=True))\n"
                          "train_cfg = dict(max_epochs=2, max_bad_fraction=0.1)\n")
    return cfg, bad


def _listed(work_dir) -> list[str]:
    return sorted(line.split('\t')[0] for line in open(os.path.join(str(work_dir), 'bad_samples.txt')))


def test_bad_files_cost_one_line_each(cfgs, bad_folder, tmp_path):
    cfg, bad = bad_folder
    env = _env(cfgs)
    ref = tmp_path / 'ref'
    _ok(_run(_cmd(cfgs, cfg, ref), env))
    assert _listed(ref) == bad
    log = _logs(ref)[0]
    assert sorted(re.findall(r'skipped bad sample (\S+):', log)) == bad     # once each, epochs and repeats aside
    assert re.search(r'skipped bad sample \S+cut\.jpg: truncated JPEG', log)
    assert re.search(r'skipped bad sample \S+crc\.png: corrupt PNG: chunk IDAT', log)
    # threshold 0: the first bad sample stops the run, with one line
    proc = _run(_cmd(cfgs, cfg, tmp_path / 'strict', '--cfg-options', 'train_cfg.max_bad_fraction=0'), env)
    assert proc.returncode == 65, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r'train\.py: \d+ of 84 training samples failed to load, more than max_bad_fraction=0 '
                        r'\(first: \S+: .*\).*stopped at iteration \d+ .*--resume to continue', last), last
    # interrupted and resumed: the same substitutes, the same run
    cut = tmp_path / 'cut'
    proc = _start(_cmd(cfgs, cfg, cut, '--resume'), env)
    _wait_until(lambda: _train_iterations(cut) >= 2, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    assert _finish(proc)[0] == 75
    _ok(_run(_cmd(cfgs, cfg, cut, '--resume'), env))
    _assert_same_run(ref, cut, final='epoch_2.pth', min_iters=4)
    assert _listed(cut) == bad


def test_a_resume_with_another_config_names_the_keys(cfgs, tmp_path):
    env = _env(cfgs)
    proc = _start(_cmd(cfgs, 'base.py', tmp_path), env)
    _wait_until(lambda: _train_iterations(tmp_path) >= 2, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    assert _finish(proc)[0] == 75
    changed = _run(_cmd(cfgs, 'base.py', tmp_path, '--resume', '--cfg-options', 'optim_wrapper.optimizer.lr=0.002'),
                   env)
    assert changed.returncode == 1
    assert changed.stderr.strip().splitlines()[-1].startswith(
        'train.py: error: the checkpoint in ') and 'optim_wrapper.optimizer.lr (0.001 in the checkpoint, 0.002 now)' \
        in changed.stderr and '--allow-config-change' in changed.stderr


# ------------------------------------------------------------------------------ downstream
SEG = f'''
_base_ = [{os.path.join(DEMO, 'upernet_swin-demo_fmnist-tla-pre_1xb4-400i_voc-seg-256x256.py')!r}]
custom_imports = dict(imports=['tlalign_mm.models', 'cluster_helper'], allow_failed_imports=False)
crop_size = (128, 128)
model = dict(data_preprocessor=dict(size=crop_size), backbone=dict(init_cfg=None))
_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=False),
             dict(type='RandomResize', scale=(256, 128), ratio_range=(0.75, 1.5), keep_ratio=True),
             dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75), dict(type='RandomFlip', prob=0.5),
             dict(type='PhotoMetricDistortion'), dict(type='PackSegInputs')]
_test = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(256, 128), keep_ratio=True),
         dict(type='LoadAnnotations', reduce_zero_label=False), dict(type='PackSegInputs')]
train_dataloader = dict(dataset=dict(data_root={os.path.join(DATA, 'voc_seg')!r}, pipeline=_pipeline))
val_dataloader = dict(dataset=dict(data_root={os.path.join(DATA, 'voc_seg')!r}, pipeline=_test))
test_dataloader = val_dataloader
param_scheduler = [dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=2),
                   dict(type='PolyLR', eta_min=0.0, power=1.0, begin=2, end=8, by_epoch=False)]
train_cfg = dict(max_iters=8, val_interval=8)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=4, max_keep_ckpts=1))
'''

DET = f'''
_base_ = [{os.path.join(DEMO, 'cascade-mask-rcnn_swin-demo_fmnist-tla-pre_fpn_1xb2-10e_coco-voc.py')!r}]
custom_imports = dict(imports=['tlalign_mm.models', 'cluster_helper'], allow_failed_imports=False)
data_root = {os.path.join(DATA, 'coco_voc') + os.sep!r}
img_scale = (256, 160)
model = dict(backbone=dict(init_cfg=None))
_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
             dict(type='RandomFlip', prob=0.5), dict(type='RandomResize', scale=img_scale, ratio_range=(0.8, 1.2),
             keep_ratio=True), dict(type='PackDetInputs')]
train_dataloader = dict(dataset=dict(times=2, dataset=dict(data_root=data_root, pipeline=_pipeline)))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=3, val_interval=3)
param_scheduler = [dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=3)]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, max_keep_ckpts=1))
'''


@pytest.mark.mm
@pytest.mark.parametrize('task', ['upernet', 'cascade'])
def test_downstream_stop_kill_and_resume(cfgs, tmp_path, task):
    """UperNet (iteration loop, InfiniteSampler, a checkpoint every 4 iterations) and Cascade Mask R-CNN
    (epoch loop, AspectRatioBatchSampler over a RepeatDataset, 3 iterations per epoch), one checkpoint
    kept: SIGTERM after iteration 2, the same command (its fsyncs slowed) SIGKILLed inside the next
    checkpoint's save, the same command again: the uninterrupted run's weights and losses."""
    cfg = tmp_path / f'{task}.py'
    cfg.write_text(SEG if task == 'upernet' else DET)
    final, saving = ('iter_8.pth', '.iter_8.pth.') if task == 'upernet' else ('epoch_3.pth', '.epoch_2.pth.')
    iterations = (re.compile(r'Iter\(train\)\s+\[\s*(\d+)/') if task == 'upernet'
                  else re.compile(r'Epoch\(train\)\s+\[(\d+)\]\[\s*(\d+)/'))

    def done(wd):
        logs = _logs(wd)
        found = iterations.findall(logs[-1]) if logs else []
        if not found:
            return 0
        return int(found[-1]) if task == 'upernet' else (int(found[-1][0]) - 1) * 3 + int(found[-1][1])

    env = _env(cfgs)
    ref, wd = tmp_path / 'ref', tmp_path / 'wd'
    _ok(_run(_cmd(cfgs, cfg, ref), env))
    cmd = _cmd(cfgs, cfg, wd, '--resume')
    proc = _start(cmd, env)
    _wait_until(lambda: done(wd) >= 2, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    rc, out = _finish(proc)
    assert rc == 75, out[-3000:]
    _check_interrupted(wd, out)
    proc = _start(cmd, _env(cfgs, TLA_TEST_SLOW_FSYNC='1.5'))
    _wait_until(lambda: any(n.startswith(saving) for n in os.listdir(wd)), proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    pointer = open(wd / 'last_checkpoint').read()
    assert os.path.isfile(pointer) and diagnose_checkpoint_file(pointer) is None      # a resumable set
    _ok(_run(cmd, env))
    _assert_same_run(ref, wd, final=final, min_iters=8)
def diagnose(path):
    from tlalign_mm.checkpoint.io import diagnose_checkpoint_file
    return diagnose_checkpoint_file(path)
