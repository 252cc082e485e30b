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
2. reads the config (its ``custom_imports`` are imported), applies ``--cfg-options``;
3. by the config's ``default_scope`` registers mmseg's (``'mmseg'``) or mmdet's (``'mmdet'``)
   modules -- those packages are imported only then;
4. work dir: ``--work-dir`` > the config's ``work_dir`` > ``./work_dirs/<config file stem>``;
5. ``--resume`` alone: resume from the latest checkpoint in the work dir (the ``last_checkpoint``
   file the ``CheckpointHook`` writes; from scratch when there is none); ``--resume CKPT``: resume
   from that file (weights, optimizer, scheduler, epoch/iteration);
6. ``--amp``: ``optim_wrapper.type = 'AmpOptimWrapper'``, ``loss_scale = 'dynamic'``; on a
   machine without CUDA a warning is printed and training stays fp32;
7. distributed without CUDA (CPU processes, e.g. ``dist_train.sh CONFIG 2`` on a laptop / CI):
   ``env_cfg.dist_cfg.backend`` becomes ``'gloo'`` (mmengine's default is nccl), the process group
   is initialised here without ``torch.cuda.set_device`` (mmengine 0.10.7 calls it unconditionally
   and it raises without a GPU), and DDP is built with ``device_ids=None`` (mmengine passes
   ``[LOCAL_RANK]``, which DDP refuses for a CPU module);
8. builds the runner with ``Runner.from_cfg`` (or the config's ``runner_type``) and trains.
"""
from __future__ import annotations

import argparse
import logging
import os
import os.path as osp
import sys

try:  # 1. first: registries + torch>=2.6 safe globals for resuming
    import tlalign_mm  # noqa: F401
except ImportError:  # running from a source checkout without PYTHONPATH / install
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    import tlalign_mm  # noqa: F401

import torch  # noqa: E402
from mmengine.config import Config, ConfigDict, DictAction  # noqa: E402
from mmengine.logging import print_log  # noqa: E402
from mmengine.registry import RUNNERS  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

__all__ = ['parse_args', 'setup_cfg', 'register_scope', 'prepare_cpu_distributed_cfg', 'setup_cpu_distributed',
           'build_runner', 'main']


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Train a model (TL-Align pretraining with default_scope tlalign_mm, or '
                    'mmseg / mmdet downstream) from an mmengine config.',
        epilog='Examples:\n'
               '  python tools/train.py configs/pretrain/deit_small_tla.py\n'
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
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override some settings in the used config, the key-value pair in xxx=yyy format will '
             'be merged into config file. If the value to be overwritten is a list, it should be '
             'like key="[a,b]" or key=a,b It also allows nested list/tuple values, e.g. '
             'key="[(a,b),(c,d)]" Note that the quotation marks are necessary and that no white '
             'space is allowed.')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher (pytorch: torchrun / dist_train.sh; slurm: srun)')
    # torch.distributed.launch passes --local_rank (older) or --local-rank (torch >= 2.0);
    # torchrun sets the LOCAL_RANK environment variable instead.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help='set by torch.distributed.launch; exported as LOCAL_RANK')
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def register_scope(cfg: Config) -> str | None:
    """Register the modules of the codebase named by ``cfg.default_scope``.

    'mmseg' -> ``mmseg.utils.register_all_modules(init_default_scope=False)``, 'mmdet' -> the same
    from ``mmdet.utils``; anything else (e.g. 'tlalign_mm', whose registries ``import tlalign_mm``
    already filled) needs nothing.  mmseg / mmdet are imported only in their branch.

    Returns:
        The scope, or None when the config sets none.
    """
    scope = cfg.get('default_scope', None)
    if scope == 'mmseg':
        from mmseg.utils import register_all_modules
        register_all_modules(init_default_scope=False)
    elif scope == 'mmdet':
        from mmdet.utils import register_all_modules
        register_all_modules(init_default_scope=False)
    return scope


def prepare_cpu_distributed_cfg(cfg: Config) -> None:
    """Make a distributed config usable without CUDA: gloo backend (printed), DDP ``device_ids=None``
    (mmengine passes ``[LOCAL_RANK]``, which DDP refuses for a CPU module)."""
    # (assigning a dict to a Config / ConfigDict stores a converted copy: re-read after setting)
    if cfg.get('env_cfg', None) is None:
        cfg.env_cfg = ConfigDict()
    env_cfg = cfg.env_cfg
    if env_cfg.get('dist_cfg', None) is None:
        env_cfg.dist_cfg = ConfigDict()
    dist_cfg = env_cfg.dist_cfg
    backend = dist_cfg.get('backend', 'nccl')
    if backend != 'gloo':
        print(f'[tlalign_mm] CUDA is not available: env_cfg.dist_cfg.backend {backend!r} -> \'gloo\' '
              '(distributed training on CPU processes)', flush=True)
        dist_cfg.backend = 'gloo'
    wrapper = cfg.get('model_wrapper_cfg', None)
    if wrapper is None:
        # what Runner.wrap_model builds by default, minus the GPU device id
        cfg.model_wrapper_cfg = ConfigDict(
            type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    elif 'device_ids' not in wrapper:
        from mmengine.registry import MODEL_WRAPPERS
        from torch.nn.parallel import DistributedDataParallel
        wrapper_type = MODEL_WRAPPERS.get(wrapper.get('type', 'MMDistributedDataParallel'))
        if isinstance(wrapper_type, type) and issubclass(wrapper_type, DistributedDataParallel):
            wrapper.device_ids = None


def setup_cpu_distributed(cfg: Config, launcher: str) -> bool:
    """On a machine without CUDA, prepare ``cfg`` for a distributed run and start the process group.

    Does nothing (returns False) for ``launcher='none'`` or when CUDA is available.  Otherwise sets
    ``env_cfg.dist_cfg.backend='gloo'`` (printing that), gives DDP ``device_ids=None``, and calls
    ``mmengine.dist.init_dist(launcher, **dist_cfg)`` with ``torch.cuda.set_device`` made a no-op
    for the call (mmengine 0.10.7 calls it for every launcher and it raises without a GPU).  The
    Runner then finds the process group initialised and uses it.  Returns True in that case.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return False
    prepare_cpu_distributed_cfg(cfg)
    from unittest import mock

    from mmengine.dist import init_dist, is_distributed
    if not is_distributed():
        with mock.patch.object(torch.cuda, 'set_device', lambda *a, **k: None):
            init_dist(launcher, **cfg.env_cfg.dist_cfg)
    return True


def setup_cfg(args: argparse.Namespace) -> Config:
    """Load the config and apply the command line to it (no runner, no process group)."""
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)

    # work_dir is determined in this priority: CLI > segment in file > filename
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])

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

    # resume is determined in this priority: resume from > auto_resume
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def build_runner(cfg: Config):
    """``Runner.from_cfg(cfg)``, or the registered ``cfg.runner_type``."""
    if 'runner_type' not in cfg:
        return Runner.from_cfg(cfg)
    return RUNNERS.build(cfg)


def main(argv=None):
    args = parse_args(argv)
    cfg = setup_cfg(args)
    register_scope(cfg)
    setup_cpu_distributed(cfg, args.launcher)
    runner = build_runner(cfg)
    return runner.train()


if __name__ == '__main__':
    main()
