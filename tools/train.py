"""Train a model from an mmengine config (TL-Align pretraining, or mmseg / mmdet downstream).

The same command line as OpenMMLab's ``tools/train.py`` (mmseg 1.x / mmdet 3.x)::

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
                          [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

    bash tools/dist_train.sh CONFIG GPUS [ARGS]          # torchrun, one process per GPU
    bash tools/slurm_train.sh PARTITION JOB CONFIG WORK_DIR [ARGS]

What it does, in order:

1. imports :mod:`tlalign_mm` before anything loads a checkpoint: that fills tlalign_mm's
   registries and allow-lists the types in mmengine checkpoints for torch >= 2.6's
   ``weights_only`` loading (otherwise ``--resume`` fails with ``UnpicklingError``);
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
   none: ``tlalign_mm.utils.checkpoint_io.find_resumable_checkpoint``); ``--resume CKPT``: resume
   from that file (weights, optimizer, scheduler, epoch/iteration, and with ``RandomStatesHook`` the
   random states); a missing, empty, truncated or foreign checkpoint file (``--resume``,
   ``load_from``, ``init_cfg``) ends the run with one line naming it;
6. ``--amp``: ``optim_wrapper.type = 'AmpOptimWrapper'``, ``loss_scale = 'dynamic'``; on a
   machine without CUDA a warning is printed and training stays fp32, and a config's own
   ``AmpOptimWrapper`` becomes ``OptimWrapper`` (with a warning: mmengine's ``AmpOptimWrapper``
   asserts a GPU);
7. distributed without CUDA (CPU processes, e.g. ``dist_train.sh CONFIG 2`` on a laptop / CI;
   ``--launcher pytorch`` only, ``slurm`` / ``mpi`` are refused without CUDA):
   ``env_cfg.dist_cfg.backend`` becomes ``'gloo'`` (mmengine's default is nccl), the gloo process
   group is initialised here from torchrun's environment (mmengine 0.10.7's ``init_dist`` calls
   ``torch.cuda.set_device``, which raises without a GPU), and DDP is built with
   ``device_ids=None`` (mmengine passes ``[LOCAL_RANK]``, which DDP refuses for a CPU module);
   ``SyncBN`` norm configs become ``BN`` (printed; torch's ``SyncBatchNorm`` needs GPU tensors) --
   see ``tools/launch.py``; that process group is destroyed after training;
8. builds the runner with ``Runner.from_cfg`` (or the config's ``runner_type``) and trains.
"""
from __future__ import annotations

import argparse
import logging

import launch
import torch
from config_checks import amp_to_fp32_without_cuda, check_downstream_config
from launch import build_runner, prepare_cpu_distributed_cfg, register_scope, setup_cpu_distributed
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper

# the registries and torch>=2.6's safe globals for resuming, filled at import, before main() runs.
# The installed package (pip install -e ., tools/setup_env.sh): launch.py says so when it is another checkout's.
import tlalign_mm  # noqa: F401
from tlalign_mm.utils.checkpoint_io import (
    exit_on_checkpoint_error,
    find_resumable_checkpoint,
    register_checkpoint_loader,
)

__all__ = ['parse_args', 'setup_cfg', 'register_scope', 'prepare_cpu_distributed_cfg', 'setup_cpu_distributed',
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
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models (default: the config\'s '
                        'work_dir, else ./work_dirs/<config file stem>)')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='without a value: resume from the latest checkpoint in the work dir (if any); '
             'with a checkpoint path: resume from that file')
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
    register_checkpoint_loader()   # a bad --resume / load_from / init_cfg file: one line, not a traceback
    args = parse_args(argv)
    with exit_on_checkpoint_error('train.py'):
        return _train(args)


def _train(args):
    cfg = setup_cfg(args)
    check_downstream_config(cfg)
    register_scope(cfg)
    cpu_dist = setup_cpu_distributed(cfg, args.launcher, 'training')
    runner = build_runner(cfg)
    model = runner.train()
    if is_model_wrapper(model):
        model = model.module
    del runner  # the group's last owner (DDP): freed by end_cpu_distributed, not at interpreter exit
    launch.end_cpu_distributed(cpu_dist)
    return model


if __name__ == '__main__':
    main()
