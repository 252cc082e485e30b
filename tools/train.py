"""Train a model from an mmengine config (TL-Align pretraining, or mmseg / mmdet downstream).

The same command line as OpenMMLab's ``tools/train.py`` (mmseg 1.x / mmdet 3.x)::

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
                          [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

    bash tools/dist_train.sh CONFIG GPUS [ARGS]          # torchrun, one process per GPU
    bash tools/slurm_train.sh PARTITION JOB CONFIG WORK_DIR [ARGS]

What it does, in order:

1. imports :mod:`tlalign_mm` (its registries) and, before anything loads a checkpoint, has mmengine
   read local checkpoints through ``tlalign_mm.checkpoint.register_checkpoint_loader``: ``weights_only``
   with the allow-list of the types mmengine checkpoints hold (else ``--resume`` fails under torch >= 2.6
   with ``UnpicklingError``), and one line for a bad file;
2. reads the config (its ``custom_imports`` are imported), applies ``--cfg-options``, and checks
   a downstream config (:func:`config_checks.check_downstream_config`, ``tools/config_checks.py``:
   crop / pad sizes divisible by the backbone's output stride, heads' ``num_classes`` equal to the
   datasets' classes where the config or the registered dataset class tells them; other configs
   pass unchanged);
3. by the config's ``default_scope`` registers mmseg's (``'mmseg'``) or mmdet's (``'mmdet'``)
   modules -- those packages are imported only then;
4. work dir: ``--work-dir`` > the config's ``work_dir`` > ``./work_dirs/<config file stem>``;
5. ``--resume`` alone: resume from the latest checkpoint in the work dir (the one the
   ``last_checkpoint`` file the ``CheckpointHook`` writes names, when it is readable; else the newest
   readable ``epoch_N.pth`` / ``iter_N.pth``, with one line saying why; from scratch when there is
   none: ``tlalign_mm.engine.find_resumable_checkpoint``); ``--resume CKPT``: resume
   from that file (weights, optimizer, scheduler, epoch/iteration, and with ``RandomStatesHook`` the
   random states); a missing, empty, truncated or foreign checkpoint file (``--resume``,
   ``load_from``, ``init_cfg``) ends the run with one line naming it;
6. ``--amp``: ``optim_wrapper.type = 'AmpOptimWrapper'``, ``loss_scale = 'dynamic'``; on a
   machine without CUDA a warning is printed and training stays fp32, and a config's own
   ``AmpOptimWrapper`` becomes ``OptimWrapper`` (with a warning: mmengine's ``AmpOptimWrapper``
   asserts a GPU);
7. distributed without CUDA (CPU processes, e.g. ``dist_train.sh CONFIG 2`` on a laptop / CI;
   ``--launcher pytorch`` or ``slurm``, ``mpi`` is refused without CUDA):
   ``env_cfg.dist_cfg.backend`` becomes ``'gloo'`` (mmengine's default is nccl), the gloo process
   group is initialised here from torchrun's environment, or Slurm's (mmengine 0.10.7's ``init_dist``
   calls ``torch.cuda.set_device``, which raises without a GPU), and DDP is built with
   ``device_ids=None`` (mmengine passes ``[LOCAL_RANK]``, which DDP refuses for a CPU module);
   ``SyncBN`` norm configs become ``BN`` (printed; torch's ``SyncBatchNorm`` needs GPU tensors) --
   see ``tools/launch.py``; that process group is destroyed after training;
8. builds the runner with ``Runner.from_cfg`` (or the config's ``runner_type``) and trains.

On a cluster (the resumable loops and ``PreemptionHook`` of ``configs/_base_/*runtime.py``):

* the same command on every launch, with ``--resume``: nothing saved -> start; a checkpoint -> resume
  (mid-epoch, to the same run); ``finished.json`` in the work dir with this run config -> print one
  line and exit 0, writing nothing; a checkpoint of another run config -> one line naming the keys that
  differ (``--allow-config-change`` resumes anyway);
* a relaunch by torchrun (``TORCHELASTIC_RESTART_COUNT`` > 0, ``MAX_RESTARTS`` of ``dist_train.sh``) or
  a requeued Slurm job (``SLURM_RESTART_COUNT`` > 0) resumes without ``--resume``;
* a stop on a signal (or on too many bad samples) ends every rank with the loop's exit status, 75
  (or 65), and one line naming the checkpoint; ``--requeue`` makes rank 0 run ``scontrol requeue``.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os.path as osp
import signal
import time

import launch
import torch
from config_checks import (
    DataRootError,
    DownstreamConfigError,
    amp_to_fp32_without_cuda,
    check_data_roots,
    check_downstream_config,
    config_file,
    writable_dir,
)
from launch import (
    build_runner,
    exit_on_checkpoint_error,
    prepare_cpu_distributed_cfg,
    register_scope,
    setup_distributed,
)
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper

# the registries, filled at import. The installed package (pip install -e ., tools/setup_env.sh): launch.py
# says so when it is another checkout's.
import tlalign_mm  # noqa: F401
from tlalign_mm.checkpoint import register_checkpoint_loader
from tlalign_mm.checkpoint.io import atomic_write
from tlalign_mm.engine import (
    IncompatibleResumeError,
    TrainingStopped,
    find_resumable_checkpoint,
    run_config,
    run_config_digest,
)

__all__ = ['parse_args', 'setup_cfg', 'register_scope', 'prepare_cpu_distributed_cfg', 'setup_distributed',
           'build_runner', 'main']


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Train a model (TL-Align pretraining with default_scope tlalign_mm, or '
                    'mmseg / mmdet downstream) from an mmengine config.',
        epilog='Examples:\n'
               '  python tools/train.py configs/pretrain/deit-small_tla_8xb128-300e_in1k.py\n'
               '  python tools/train.py CFG --resume                 # auto-resume in the work dir\n'
               '  python tools/train.py CFG --resume work_dirs/x/epoch_10.pth\n'
               '  bash tools/dist_train.sh CFG 8 --amp\n'
               'Note: `--resume` takes an optional value, so put it after CONFIG '
               '(`train.py --resume CFG` would read CFG as the checkpoint).',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', type=config_file, help='train config file path')
    parser.add_argument('--work-dir', type=writable_dir, help='the dir to save logs and models (default: the config\'s '
                        'work_dir, else ./work_dirs/<config file stem>)')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='without a value: resume from the latest checkpoint in the work dir (if any); '
             'with a checkpoint path: resume from that file')
    parser.add_argument(
        '--allow-config-change', action='store_true',
        help='resume a checkpoint whose run config (model, data, optimizer, schedule, seed) differs from this '
             'config; without it such a resume stops with one line naming the differing keys')
    parser.add_argument(
        '--requeue', action='store_true',
        help='after a stop on a signal (PreemptionHook), rank 0 runs `scontrol requeue $SLURM_JOB_ID` '
             '(tools/slurm_train.sh --requeue passes it)')
    parser.add_argument(
        '--amp', action='store_true', default=False,
        help='enable automatic mixed precision (AmpOptimWrapper, dynamic loss scale); ignored with '
             'a warning when CUDA is not available')
    launch.add_launch_args(parser, 'dist_train.sh')
    return launch.parse_launch_args(parser, argv)


def setup_cfg(args: argparse.Namespace) -> Config:
    """Load the config and apply the command line to it (no runner, no process group)."""
    cfg = launch.load_cfg(args.config, args.launcher, args.cfg_options, args.work_dir)

    if args.amp:
        if not torch.cuda.is_available():
            print_log('--amp: CUDA is not available; AMP on CPU is not supported here, training in '
                      'fp32 (optim_wrapper left unchanged).', logger='current', level=logging.WARNING)
        else:
            optim_wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
            if optim_wrapper == 'AmpOptimWrapper':
                print_log('AMP training is already enabled in your config.', logger='current',
                          level=logging.WARNING)
            else:
                if optim_wrapper != 'OptimWrapper':
                    raise ValueError(f'--amp is only supported when the optim_wrapper type is '
                                     f"'OptimWrapper', but got {optim_wrapper!r}.")
                cfg.optim_wrapper.type = 'AmpOptimWrapper'
                cfg.optim_wrapper.loss_scale = 'dynamic'
    if amp_to_fp32_without_cuda(cfg):
        print_log('optim_wrapper: AmpOptimWrapper needs CUDA, which is not available; training in fp32 '
                  '(OptimWrapper).', logger='current', level=logging.WARNING)

    if args.allow_config_change:
        launch.set_resumable_loop_option(cfg, 'allow_config_change', True)
    if args.requeue and not launch.set_hook_option(cfg, 'PreemptionHook', 'requeue', True):
        raise ValueError('--requeue: the config has no PreemptionHook (default_hooks.preemption in '
                         'configs/_base_/*runtime.py)')

    # resume is determined in this priority: resume from > auto_resume
    if args.resume == 'auto':
        # the checkpoint last_checkpoint names, if it is readable; else the newest readable one
        ckpt = find_resumable_checkpoint(cfg.work_dir, log=lambda msg: print_log(msg, logger='current',
                                                                                 level=logging.WARNING))
        cfg.resume = ckpt is not None
        cfg.load_from = ckpt
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def main(argv=None):
    register_checkpoint_loader()   # resume under torch >= 2.6; a bad --resume / load_from / init_cfg file: one line
    args = parse_args(argv)
    if args.resume is None and launch.restart_count() > 0:
        launch.stderr_line(f'train.py: relaunch {launch.restart_count()} of this job '
                           f'({" / ".join(launch.RESTART_ENV)}): resuming from the latest checkpoint in the work dir '
                           '(--resume)')
        args.resume = 'auto'
    with exit_on_checkpoint_error('train.py', IncompatibleResumeError, DataRootError, DownstreamConfigError):
        return _train(args)


def _finished(cfg, args) -> bool:
    """With ``--resume`` (auto): whether the work dir holds this run finished (``finished.json`` written by
    an earlier launch with the same run config); then nothing is to be done."""
    if args.resume != 'auto':
        return False
    path = osp.join(cfg.work_dir, launch.FINISHED_FILE)
    if not osp.isfile(path):
        return False
    with open(path) as f:
        done = json.load(f)
    if done.get('run_config_digest') != run_config_digest(run_config(cfg)):
        return False     # another run's: resuming it reports what differs
    launch.stderr_line(f'train.py: {cfg.work_dir} holds this run finished ({done.get("checkpoint")}, iteration '
                       f'{done.get("iter")}); nothing to do')
    return True


def _write_finished(runner, digest: str) -> None:
    if runner.rank == 0:
        atomic_write(json.dumps(dict(
            run_config_digest=digest, iter=runner.iter, epoch=runner.epoch,
            checkpoint=runner.message_hub.get_info('last_ckpt'),
            time=time.strftime('%Y-%m-%d %H:%M:%S')), indent=1) + '\n', osp.join(runner.work_dir, launch.FINISHED_FILE))


def _exit_stopped(runner, dist_started: bool, code: int, message: str) -> None:
    """Every rank stopped at the same iteration after its checkpoint was written: leave cleanly.

    Further stop signals are ignored from here on (torchrun signals the ranks still exiting once one has
    exited with a non-zero status); the data-loader workers are ended and the runner freed before the
    process group goes.
    """
    for name in ('SIGTERM', 'SIGINT', 'SIGUSR1'):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    launch.release_loader_workers(runner.train_dataloader, runner.val_dataloader)
    del runner
    gc.collect()
    launch.end_distributed(dist_started)
    launch.stderr_line(f'train.py: {message}')
    raise SystemExit(code)


def _train(args):
    cfg = setup_cfg(args)
    if _finished(cfg, args):
        return None
    digest = run_config_digest(run_config(cfg))
    check_downstream_config(cfg)
    check_data_roots(cfg, ['train_dataloader'] + ['val_dataloader'] * (cfg.get('val_cfg') is not None))
    launch.check_checkpoint_file(cfg.get('load_from'))
    register_scope(cfg)
    dist_started = setup_distributed(cfg, args.launcher, 'training')
    runner = build_runner(cfg)
    try:
        model = runner.train()
    except TrainingStopped as stop:
        stopped = (stop.code, stop.message)     # the exception (and the runner its traceback holds) goes here
    else:
        stopped = None
    if stopped is not None:
        _exit_stopped(runner, dist_started, *stopped)
    if is_model_wrapper(model):
        model = model.module
    _write_finished(runner, digest)
    launch.release_loader_workers(runner.train_dataloader, runner.val_dataloader)
    del runner  # the group's last owner (DDP): freed by end_distributed, not at interpreter exit
    launch.end_distributed(dist_started)
    return model


if __name__ == '__main__':
    main()
