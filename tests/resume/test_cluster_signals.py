"""Signals, restarts and hangs, as a cluster delivers them: torchrun with gloo on 2 ranks and
``tools/slurm_train.sh`` with a stand-in ``srun`` / ``scontrol`` on ``PATH`` that records its arguments and
starts the tasks here (the runs and the comparison: ``tests/resume/cluster_runs.py``).

* SIGTERM to one rank mid-epoch, and to the launcher: every rank exits with 75 within torchrun's 30 s,
  ``iter_<N>_interrupted.pth`` holds that iteration, ``--resume`` continues the same run;
* SIGUSR1 through ``slurm_train.sh --requeue``: ``--signal=USR1@120`` reaches srun, the tasks stop and
  rank 0 runs ``scontrol requeue`` once; the same command again finishes the run;
* a rank that dies (``os._exit(1)``) with a restart budget of 1: torchrun relaunches, the job resumes by
  itself; with no budget the job exits non-zero promptly;
* a rank asleep while the other waits in a collective: the watchdog ends the job within its timeout,
  naming the rank.
"""
from __future__ import annotations

import os
import re
import signal
import stat
import time

import pytest
from cluster_runs import (
    CLUSTER_MARKS,
    REPO,
    assert_same_run,
    check_interrupted,
    finish,
    ok,
    rank_pid,
    run,
    run_env,
    start,
    torchrun_pid,
    train_cmd,
    train_iterations,
    wait_until,
)

pytest_plugins = ['cluster_runs']       # the fixtures cfgs, reference, reference2
pytestmark = CLUSTER_MARKS



# ------------------------------------------------------------------------------ signals
@pytest.mark.parametrize('target', ['one rank', 'the launcher'])
def test_sigterm_saves_that_iteration_and_resume_is_the_same_run(cfgs, reference2, tmp_path, target):
    env = run_env(cfgs)
    proc = start(train_cmd(cfgs, 'base.py', tmp_path, procs=2), env)
    wait_until(lambda: train_iterations(tmp_path) >= 3, proc)
    t0 = time.time()
    os.kill(rank_pid(proc.pid, 1) if target == 'one rank' else torchrun_pid(proc.pid), signal.SIGTERM)
    rc, out = finish(proc)
    assert time.time() - t0 < 30, 'the ranks did not exit within torchrun\'s 30 s'
    assert rc != 0 and len(re.findall(r'^train\.py: .* stopped at iteration', out, re.M)) == 2, out[-3000:]
    if target == 'one rank':                                         # torchrun's summary: both ranks 75
        assert len(re.findall(r'exitcode\s*: 75 ', out)) == 2, out[-3000:]
    ckpt = check_interrupted(tmp_path, out)
    ok(run(train_cmd(cfgs, 'base.py', tmp_path, '--resume', procs=2), env))
    assert not os.path.exists(ckpt)                                  # superseded by the next regular checkpoint
    assert_same_run(reference2, tmp_path)


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
    env = run_env(cfgs, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', GPUS='2', GPUS_PER_NODE='2')
    cmd = ['bash', os.path.join(REPO, 'tools', 'slurm_train.sh'), '--requeue', 'gpu', 'tla', str(cfgs / 'base.py'),
           str(wd)]
    proc = start(cmd, env)
    wait_until(lambda: train_iterations(wd) >= 3, proc)
    for pid in open(log_dir / 'srun.pids').read().split():       # Slurm signals every task
        os.kill(int(pid), signal.SIGUSR1)
    rc, out = finish(proc)
    assert rc == 75, out[-3000:]
    check_interrupted(wd, out)
    srun_args = open(log_dir / 'srun.args').read().split()
    assert {'--signal=USR1@120', '--ntasks=2', '--kill-on-bad-exit=1', '--launcher=slurm', '--requeue',
            '--resume'} <= set(srun_args)
    scontrol = open(log_dir / 'scontrol.args').read().splitlines()
    assert scontrol.count('requeue 4242') == 1 and 'show hostnames localhost' in scontrol
    ok(run(cmd, env))                                              # the requeued job: the same command
    assert_same_run(reference2, wd)


# ------------------------------------------------------------------------------ restarts and hangs
def test_a_dead_rank_is_relaunched_and_the_job_resumes(cfgs, reference2, tmp_path):
    ok(run(train_cmd(cfgs, 'die.py', tmp_path / 'budget1', procs=2), run_env(cfgs, MAX_RESTARTS='1')))
    assert (tmp_path / 'budget1' / 'fault_exit').exists()
    assert_same_run(reference2, tmp_path / 'budget1')
    proc = run(train_cmd(cfgs, 'die.py', tmp_path / 'budget0', procs=2), run_env(cfgs, MAX_RESTARTS='0'))
    died = float((tmp_path / 'budget0' / 'fault_exit').read_text())
    assert proc.returncode != 0 and time.time() - died < 30, proc.stderr[-3000:]


def test_a_rank_stuck_in_a_collective_ends_the_job(cfgs, tmp_path):
    """Rank 1 sleeps after iteration 4, the last of epoch 2; rank 0 waits for it in the epoch end's
    all-gather of the random states.  The watchdog (timeout 10 s) ends the job, naming rank 1.

    Both watchdogs fire about 10 s after the same iteration.  Whichever ends its rank first, the other
    rank's report (if it comes before its own exit) names rank 1 too: rank 0, woken by its collective's
    error, stops watching as it exits rather than reporting itself."""
    proc = run(train_cmd(cfgs, 'hang.py', tmp_path, procs=2), run_env(cfgs))
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
