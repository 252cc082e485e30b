"""Kills, stops and bad checkpoints on one process (``tools/train.py``): each interrupted run, resumed, is the
uninterrupted one (the runs and the comparison: ``tests/resume/cluster_runs.py``).

* three kills (SIGKILL, SIGTERM, SIGINT) at random iterations, then the same command finishes: the
  uninterrupted run; a fourth launch changes no file;
* a kill inside a slowed checkpoint save with ``max_keep_ckpts=1`` (the old checkpoint stays until the
  new one is on disk), a stop and a kill during validation (each validation runs once after resuming);
* an unreadable checkpoint is skipped by auto-resume; without the random states restored a resumed run
  departs (the comparison can fail); a resume with another learning rate stops with one line naming
  the key.
"""
from __future__ import annotations

import os
import random
import re
import signal

import pytest
from cluster_runs import (
    CLUSTER_MARKS,
    assert_same_run,
    finish,
    launch_logs,
    logged,
    ok,
    run,
    run_env,
    snapshot,
    start,
    train_cmd,
    train_iterations,
    wait_until,
)

pytest_plugins = ['cluster_runs']       # the fixtures cfgs, reference, reference2
pytestmark = CLUSTER_MARKS


def test_three_kills_then_the_same_command_finishes_the_run(cfgs, reference, tmp_path):
    """SIGKILL (no warning), SIGTERM and SIGINT (to the whole process group, workers included) at random
    iterations; every launch is the same command.  A fourth launch of the finished run changes no file."""
    env = run_env(cfgs)
    cmd = train_cmd(cfgs, 'base.py', tmp_path, '--resume')
    at = sorted(random.Random(0).sample(range(2, 12), 3))              # 12 iterations: 3 epochs x 4
    for it, sig in zip(at, (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)):
        proc = start(cmd, env)
        wait_until(lambda it=it: train_iterations(tmp_path) >= it, proc)
        os.killpg(proc.pid, sig)
        rc, out = finish(proc)
        assert rc == (-9 if sig == signal.SIGKILL else 75), out[-3000:]
    ok(run(cmd, env))
    assert_same_run(reference, tmp_path)
    before = snapshot(tmp_path)
    out = ok(run(cmd, env)).stderr
    assert 'holds this run finished' in out and 'nothing to do' in out
    assert snapshot(tmp_path) == before


def test_a_kill_inside_a_save_with_one_checkpoint_kept(cfgs, reference, tmp_path):
    """Each fsync takes 1.5 s: the kill lands after epoch_2.pth's bytes are in its temporary file, before
    the rename.  mmengine would have removed epoch_1.pth (max_keep_ckpts=1) already; here it stays."""
    env = run_env(cfgs, TLA_TEST_SLOW_FSYNC='1.5')
    proc = start(train_cmd(cfgs, 'keep1.py', tmp_path), env)
    wait_until(lambda: any(n.startswith('.epoch_2.pth.') for n in os.listdir(tmp_path)), proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    names = os.listdir(tmp_path)
    assert 'epoch_1.pth' in names and 'epoch_2.pth' not in names, names
    assert open(tmp_path / 'last_checkpoint').read().endswith('epoch_1.pth')
    ok(run(train_cmd(cfgs, 'keep1.py', tmp_path, '--resume'), run_env(cfgs)))
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith('.pth') and n.startswith('epoch')) == ['epoch_3.pth']
    assert_same_run(reference, tmp_path)


def test_a_stop_and_a_kill_during_validation(cfgs, reference, tmp_path):
    """SIGTERM during epoch 1's validation stops at a validation iteration, with the validation pending;
    SIGKILL during epoch 2's leaves epoch_2.pth, written before it.  Each resume validates that epoch
    first, once, and training is the uninterrupted run's (validation draws no random numbers)."""
    env = run_env(cfgs)
    cmd = train_cmd(cfgs, 'slowval.py', tmp_path, '--resume')
    proc = start(cmd, env)
    wait_until(lambda: logged(tmp_path, r'Epoch\(val\)\s+\[1\]\[10/'), proc)
    os.killpg(proc.pid, signal.SIGTERM)
    rc, out = finish(proc)
    assert rc == 75 and 'during the validation after epoch 1' in out, out[-3000:]
    proc = start(cmd, env)
    wait_until(lambda: logged(tmp_path, r'Epoch\(val\)\s+\[2\]\[10/'), proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    ok(run(cmd, env))
    logs = launch_logs(tmp_path)
    done = [[int(e) for e in re.findall(r'Epoch\(val\) \[(\d+)\]\[64/64\]\s+accuracy', log)] for log in logs]
    assert done == [[], [1], [2, 3]], done           # each epoch validated once, after the resume that owed it
    assert 'validating iteration 4 first' in logs[1] and 'validating iteration 8 first' in logs[2]   # 4 per epoch
    assert_same_run(reference, tmp_path)


def test_auto_resume_skips_an_unreadable_checkpoint(cfgs, reference, tmp_path):
    """last_checkpoint names a file that is cut short (a disk filled up, a copy interrupted): one line
    says so and the run resumes from the newest readable checkpoint, still exact."""
    env = run_env(cfgs)
    proc = start(train_cmd(cfgs, 'base.py', tmp_path), env)
    wait_until(lambda: os.path.isfile(tmp_path / 'epoch_1.pth') and train_iterations(tmp_path) >= 6, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    good = (tmp_path / 'epoch_1.pth').read_bytes()
    (tmp_path / 'epoch_2.pth').write_bytes(good[: len(good) // 3])
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_2.pth'))
    out = ok(run(train_cmd(cfgs, 'base.py', tmp_path, '--resume'), env))
    text = out.stdout + out.stderr
    assert 'epoch_2.pth (named by last_checkpoint) is truncated' in text, text[-3000:]
    assert f'resuming from {tmp_path / "epoch_1.pth"}' in text
    assert_same_run(reference, tmp_path)


def test_without_the_random_states_a_resumed_run_departs(cfgs, reference, tmp_path):
    """The comparison can fail: when RandomStatesHook does not restore the states (random erasing and drop
    path draw from the processes' generators, which mmengine re-seeds from the config) the run departs."""
    (tmp_path / 'nostates.py').write_text(f"_base_ = [{str(cfgs / 'base.py')!r}]\n"
                                          "default_hooks = dict(random_states=dict(restore=False))\n")
    env = run_env(cfgs)
    cmd = train_cmd(cfgs, tmp_path / 'nostates.py', tmp_path / 'wd', '--resume')
    proc = start(cmd, env)
    wait_until(lambda: train_iterations(tmp_path / 'wd') >= 6, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    assert finish(proc)[0] == 75
    ok(run(cmd, env))
    with pytest.raises(AssertionError, match='final weights differ'):
        assert_same_run(reference, tmp_path / 'wd')



def test_a_resume_with_another_config_names_the_keys(cfgs, tmp_path):
    env = run_env(cfgs)
    proc = start(train_cmd(cfgs, 'base.py', tmp_path), env)
    wait_until(lambda: train_iterations(tmp_path) >= 2, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    assert finish(proc)[0] == 75
    changed = run(train_cmd(cfgs, 'base.py', tmp_path, '--resume', '--cfg-options', 'optim_wrapper.optimizer.lr=0.002'),
                   env)
    assert changed.returncode == 1
    assert changed.stderr.strip().splitlines()[-1].startswith(
        'train.py: error: the checkpoint in ') and 'optim_wrapper.optimizer.lr (0.001 in the checkpoint, 0.002 now)' \
        in changed.stderr and '--allow-config-change' in changed.stderr
