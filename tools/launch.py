"""What ``tools/train.py`` and ``tools/test.py`` share: command line, config loading, scope, CPU DDP.

A tools-side module (not part of the ``tlalign_mm`` package), imported as ``launch`` by the
scripts next to it (a script's own folder is on ``sys.path``; the tests put it there too).  On
import it warns on stderr when the imported ``tlalign_mm`` is not this checkout's
(:func:`tlalign_mm.utils.checkout.checkout_mismatch`).

Both tools take the same trailing options (``--cfg-options``, ``--launcher``, ``--local_rank``),
load the config the same way (``--cfg-options`` merged, work dir ``--work-dir`` > the config's
``work_dir`` > ``./work_dirs/<config file stem>``), register mmseg's / mmdet's modules by the
config's ``default_scope``, and make a distributed run work on a machine without CUDA:

* :func:`add_launch_args` / :func:`parse_launch_args` -- the shared options; ``LOCAL_RANK``
  exported from ``--local_rank`` when the environment does not set it (torchrun does);
* :func:`load_cfg` -- ``Config.fromfile`` + ``launcher`` + ``--cfg-options`` + work dir;
* :func:`register_scope` -- ``register_all_modules(init_default_scope=False)`` of mmseg / mmdet;
* :func:`prepare_cpu_distributed_cfg` / :func:`setup_cpu_distributed` -- gloo backend, DDP with
  ``device_ids=None``, ``SyncBN`` -> ``BN``, and the gloo process group initialised from the
  torchrun environment (``--launcher pytorch``; mmengine's ``init_dist`` would call
  ``torch.cuda.set_device``, which raises without a GPU); ``slurm`` / ``mpi`` without CUDA are
  refused with an error naming ``--launcher pytorch``; :func:`end_cpu_distributed` destroys that
  process group after the run;
* :func:`build_runner` -- ``Runner.from_cfg`` or the config's ``runner_type``.

Only torch, mmengine and ``config_checks`` (next to this file; standard library only) are imported
at module level: mmseg / mmdet are imported inside :func:`register_scope`'s branches.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import os
import os.path as osp
import sys
from collections.abc import Sequence

import torch
from config_checks import sync_bn_to_bn
from mmengine.config import Config, ConfigDict, DictAction

from tlalign_mm.utils.checkout import checkout_mismatch

__all__ = ['add_launch_args', 'parse_launch_args', 'load_cfg', 'register_scope',
           'prepare_cpu_distributed_cfg', 'TORCHRUN_ENV', 'init_gloo_from_torchrun_env', 'setup_cpu_distributed',
           'end_cpu_distributed', 'build_runner']

if (_other := checkout_mismatch(__file__)) is not None:       # two clones: this one is not installed
    print(f'warning: {_other}', file=sys.stderr)


def add_launch_args(parser: argparse.ArgumentParser, dist_script: str) -> argparse.ArgumentParser:
    """Add ``--cfg-options``, ``--launcher`` and ``--local_rank`` / ``--local-rank`` to ``parser``.

    Args:
        parser: the tool's parser (its own arguments added already: these come last in ``--help``).
        dist_script: the tool's torchrun wrapper named in ``--launcher``'s help, e.g.
            ``'dist_train.sh'``.

    Returns:
        ``parser``.
    """
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override some settings in the used config, the key-value pair in xxx=yyy format will '
             'be merged into config file. If the value to be overwritten is a list, it should be '
             'like key="[a,b]" or key=a,b It also allows nested list/tuple values, e.g. '
             'key="[(a,b),(c,d)]" Note that the quotation marks are necessary and that no white '
             'space is allowed.')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help=f'job launcher (pytorch: torchrun / {dist_script}; slurm: srun)')
    # torch.distributed.launch passes --local_rank (older) or --local-rank (torch >= 2.0);
    # torchrun sets the LOCAL_RANK environment variable instead.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help='set by torch.distributed.launch; exported as LOCAL_RANK')
    return parser


def parse_launch_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, then export ``--local_rank`` as ``LOCAL_RANK`` unless it is set."""
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def load_cfg(config: str, launcher: str = 'none', cfg_options: dict | None = None,
             work_dir: str | None = None) -> Config:
    """Read ``config`` and apply the options both tools share.

    ``cfg.launcher = launcher``; ``cfg_options`` (``--cfg-options``) merged in; ``cfg.work_dir``:
    ``work_dir`` (``--work-dir``) > the config's own ``work_dir`` > ``./work_dirs/<config file stem>``.
    """
    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)

    # work_dir is determined in this priority: CLI > segment in file > filename
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    return cfg


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


def prepare_cpu_distributed_cfg(cfg: Config, task: str = 'training') -> None:
    """Make a distributed config usable without CUDA, in place.

    * ``env_cfg.dist_cfg.backend`` -> ``'gloo'`` (printed when it changes; mmengine's default is nccl);
    * DDP gets ``device_ids=None``: a default ``MMDistributedDataParallel`` ``model_wrapper_cfg`` is
      written when the config has none, and a DDP-derived wrapper without ``device_ids`` gets it
      (mmengine passes ``[LOCAL_RANK]``, which DDP refuses for a CPU module);
    * ``norm_cfg`` ``SyncBN`` -> ``BN`` under ``cfg.model``
      (:func:`config_checks.sync_bn_to_bn`; printed when anything changed): torch's
      ``SyncBatchNorm`` refuses CPU tensors, so the statistics are per process.

    Args:
        cfg: the config.
        task: the word in the backend message, ``'training'`` or ``'testing'``.
    """
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
              f'(distributed {task} on CPU processes)', flush=True)
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

    changed = sync_bn_to_bn(cfg)
    if changed:
        print(f'[tlalign_mm] CUDA is not available: SyncBN -> BN in {", ".join(changed)} '
              '(torch SyncBatchNorm needs GPU tensors; statistics are per process)', flush=True)


#: what ``torch.distributed``'s ``env://`` initialisation reads; torchrun sets all four
TORCHRUN_ENV = ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')


def init_gloo_from_torchrun_env(dist_cfg: dict | None = None) -> None:
    """``torch.distributed.init_process_group(backend='gloo')`` from the torchrun environment.

    What mmengine's ``init_dist('pytorch', **dist_cfg)`` does, minus its ``torch.cuda.set_device``:
    ``rank`` / ``world_size`` from ``RANK`` / ``WORLD_SIZE``, the rendezvous ``env://`` from
    ``MASTER_ADDR`` / ``MASTER_PORT``; ``dist_cfg`` (``env_cfg.dist_cfg``) passes its other keys on,
    ``timeout`` in seconds (mmengine's convention) turned into a ``timedelta``; its ``backend`` is
    ignored (gloo: the only CPU backend here).

    Raises:
        RuntimeError: a variable of :data:`TORCHRUN_ENV` is not set (not started by torchrun /
            ``tools/dist_train.sh`` / ``tools/dist_test.sh``).
    """
    missing = [k for k in TORCHRUN_ENV if k not in os.environ]
    if missing:
        raise RuntimeError(f'--launcher pytorch: {", ".join(missing)} not set; start the processes with '
                           'torchrun (tools/dist_train.sh / tools/dist_test.sh), which sets '
                           f'{", ".join(TORCHRUN_ENV)}')
    kwargs = dict(dist_cfg or {})
    kwargs.pop('backend', None)
    if kwargs.get('timeout') is not None:
        kwargs['timeout'] = datetime.timedelta(seconds=kwargs['timeout'])
    torch.distributed.init_process_group(backend='gloo', init_method='env://', rank=int(os.environ['RANK']),
                                         world_size=int(os.environ['WORLD_SIZE']), **kwargs)


def setup_cpu_distributed(cfg: Config, launcher: str, task: str = 'training') -> bool:
    """On a machine without CUDA, prepare ``cfg`` for a distributed run and start the process group.

    Does nothing (returns False) for ``launcher='none'`` or when CUDA is available.  Otherwise
    :func:`prepare_cpu_distributed_cfg` (gloo, DDP ``device_ids=None``, SyncBN -> BN), then, unless
    a process group exists already, :func:`init_gloo_from_torchrun_env`; the Runner then finds the
    process group initialised and uses it.  Returns True in that case.

    Args:
        cfg: the config (changed in place).
        launcher: ``'none'``, ``'pytorch'``, ``'slurm'`` or ``'mpi'``.
        task: passed to :func:`prepare_cpu_distributed_cfg` (``'training'`` / ``'testing'``).

    Raises:
        RuntimeError: ``launcher`` ``'slurm'`` or ``'mpi'`` without CUDA (distributed CPU runs are
            supported with ``--launcher pytorch`` only); as :func:`init_gloo_from_torchrun_env`.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return False
    if launcher != 'pytorch':
        raise RuntimeError(f'--launcher {launcher} needs CUDA, which is not available; distributed runs on CPU '
                           'processes are supported with --launcher pytorch (torchrun: tools/dist_train.sh, '
                           'tools/dist_test.sh)')
    prepare_cpu_distributed_cfg(cfg, task)
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        init_gloo_from_torchrun_env(cfg.env_cfg.dist_cfg)
    return True


def end_cpu_distributed(started: bool) -> None:
    """Destroy the process group of a CPU distributed run once the run has finished.

    Call it with :func:`setup_cpu_distributed`'s return value after a successful ``train()`` /
    ``test()`` (not on an error: a rank that destroys while others still communicate can hang),
    and after dropping the caller's last reference to the runner (``del runner``).

    A gloo process group whose last owner is freed during interpreter shutdown aborts the process
    (SIGABRT, "terminate called without an active exception", no Python frame) after the run has
    finished.  ``destroy_process_group()`` alone does not prevent that: it drops only
    ``torch.distributed``'s own reference, while the DDP wrapper of the runner's model (and its
    C++ reducer) keeps the group alive, and the runner sits in reference cycles (hooks, message
    hub) that only the garbage collector frees.  So: a barrier (a rank that destroys the group while
    another still finishes its last collective aborts in gloo), ``destroy_process_group()``, then
    ``gc.collect()``, which frees the runner and with it the group while the interpreter is still
    whole.  Nothing happens when ``started`` is False or no process group exists.
    """
    if started and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        gc.collect()


def build_runner(cfg: Config):
    """``Runner.from_cfg(cfg)``, or the registered ``cfg.runner_type``."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if 'runner_type' not in cfg:
        return Runner.from_cfg(cfg)
    return RUNNERS.build(cfg)
