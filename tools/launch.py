"""What ``tools/train.py`` and ``tools/test.py`` share: command line, config loading, scope, process group.

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
* :func:`setup_distributed` -- the process group from torchrun's environment, in a store prefix of its
  own per launch attempt (:func:`init_from_torchrun_env`: a job torchrun relaunches meets again); on a
  machine without CUDA also :func:`prepare_cpu_distributed_cfg` (gloo backend, DDP with
  ``device_ids=None``, ``SyncBN`` -> ``BN``; mmengine's ``init_dist`` would call
  ``torch.cuda.set_device``, which raises without a GPU; ``--launcher slurm`` sets torchrun's
  variables from Slurm's first, :func:`slurm_to_torchrun_env`); ``mpi`` without CUDA is refused
  with an error naming ``--launcher pytorch``; :func:`end_distributed` destroys that process group
  after the run, :func:`release_loader_workers` ends the loaders' workers before;
* :func:`restart_count`, :func:`set_resumable_loop_option`, :func:`set_hook_option` -- what
  ``tools/train.py``'s cluster options read and set;
* :func:`build_runner` -- ``Runner.from_cfg`` or the config's ``runner_type``;
* :func:`exit_on_checkpoint_error` -- a bad checkpoint file (or another named error) ends a tool with one
  line, not a traceback;
* :func:`stderr_line` -- a line on stderr in one write, so that the lines the ranks print at once stay whole.

Only torch, mmengine, ``config_checks`` (next to this file; standard library only) and tlalign_mm are
imported at module level: mmseg / mmdet are imported inside :func:`register_scope`'s branches.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import os
import os.path as osp
import sys
from collections.abc import Sequence

import torch
from config_checks import CfgOptions, sync_bn_to_bn
from mmengine.config import Config, ConfigDict

from tlalign_mm.checkpoint import CheckpointFileError
from tlalign_mm.checkpoint.io import diagnose_checkpoint_file
from tlalign_mm.utils.checkout import checkout_mismatch

__all__ = ['add_launch_args', 'parse_launch_args', 'load_cfg', 'register_scope',
           'prepare_cpu_distributed_cfg', 'TORCHRUN_ENV', 'init_from_torchrun_env', 'SLURM_ENV',
           'slurm_to_torchrun_env', 'setup_distributed', 'release_loader_workers', 'end_distributed',
           'build_runner', 'RESTART_ENV', 'FINISHED_FILE', 'restart_count', 'set_resumable_loop_option',
           'set_hook_option', 'exit_on_checkpoint_error', 'stderr_line']


def stderr_line(text: str) -> None:
    """``text`` and a newline on stderr in one write, so that the lines every rank prints at once stay whole:
    ``print`` to a stderr that is not a terminal writes the text and the newline separately, and two ranks
    writing through one pipe (torchrun, srun) then glue their lines together."""
    sys.stderr.write(text + '\n')
    sys.stderr.flush()


if (_other := checkout_mismatch(__file__)) is not None:       # two clones: this one is not installed
    stderr_line(f'warning: {_other}')


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
        '--cfg-options', nargs='+', action=CfgOptions,
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


def init_from_torchrun_env(backend: str = 'gloo', dist_cfg: dict | None = None) -> None:
    """``torch.distributed.init_process_group(backend)`` from the torchrun environment, in a store of its own
    for each launch attempt.

    What mmengine's ``init_dist('pytorch', **dist_cfg)`` does, minus its ``torch.cuda.set_device``
    (:func:`setup_distributed` sets the device on GPUs): ``rank`` / ``world_size`` from ``RANK`` /
    ``WORLD_SIZE``, the store from ``MASTER_ADDR`` / ``MASTER_PORT`` (``torch.distributed.rendezvous
    ('env://')``); ``dist_cfg`` (``env_cfg.dist_cfg``) passes its other keys on, ``timeout`` in seconds
    (mmengine's convention) turned into a ``timedelta``; its ``backend`` is ignored for ``backend``.

    The store is seen through a prefix naming the attempt (``TORCHELASTIC_RESTART_COUNT``): torchrun keeps
    one store for every restart of a job, and a relaunched rank would otherwise read the addresses (gloo)
    or communicator ids (NCCL) its peers published in the attempt before, and wait for them forever.

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
    rank, world_size = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
    store, _, _ = next(torch.distributed.rendezvous(
        'env://', rank, world_size, timeout=kwargs.get('timeout', datetime.timedelta(minutes=30))))
    attempt = os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')
    store = torch.distributed.PrefixStore(f'tlalign_mm/attempt_{attempt}', store)
    torch.distributed.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size, **kwargs)


#: what a Slurm task (``srun``) gets and :func:`slurm_to_torchrun_env` reads
SLURM_ENV = ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST')


def slurm_to_torchrun_env() -> None:
    """Set torchrun's variables from a Slurm task's, as mmengine's ``init_dist('slurm')`` does (minus its
    ``torch.cuda.set_device``): ``RANK`` = ``SLURM_PROCID``, ``WORLD_SIZE`` = ``SLURM_NTASKS``,
    ``LOCAL_RANK`` = ``SLURM_LOCALID``, ``MASTER_ADDR`` = the first host of ``scontrol show hostnames
    $SLURM_NODELIST`` (unless set), ``MASTER_PORT`` = 29500 (unless set).

    Raises:
        RuntimeError: a variable of :data:`SLURM_ENV` is not set (not started by ``srun``), or
            ``scontrol`` cannot name the first host.
    """
    missing = [k for k in SLURM_ENV if k not in os.environ]
    if missing:
        raise RuntimeError(f'--launcher slurm: {", ".join(missing)} not set; start the tasks with srun '
                           '(tools/slurm_train.sh)')
    if not os.environ.get('MASTER_ADDR'):
        import subprocess
        out = subprocess.run(['scontrol', 'show', 'hostnames', os.environ['SLURM_NODELIST']], capture_output=True,
                             text=True)
        hosts = out.stdout.split()
        if out.returncode or not hosts:
            raise RuntimeError(f'--launcher slurm: `scontrol show hostnames {os.environ["SLURM_NODELIST"]}` '
                               f'named no host ({out.stderr.strip()})')
        os.environ['MASTER_ADDR'] = hosts[0]
    os.environ.setdefault('MASTER_PORT', '29500')
    os.environ['RANK'] = os.environ['SLURM_PROCID']
    os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
    os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', '0')


def setup_distributed(cfg: Config, launcher: str, task: str = 'training') -> bool:
    """Start the process group of a distributed run, or leave it to mmengine.

    * ``launcher='none'``: nothing (returns False);
    * a GPU machine, ``--launcher pytorch`` (torchrun): ``torch.cuda.set_device(LOCAL_RANK)``, then
      :func:`init_from_torchrun_env` with ``env_cfg.dist_cfg.backend`` (nccl): mmengine's set-up, in a
      store of its own per launch attempt, so that a job torchrun relaunches meets again;
    * a GPU machine, ``slurm`` / ``mpi``: nothing (returns False; mmengine's ``init_dist``);
    * no CUDA: :func:`prepare_cpu_distributed_cfg` (gloo, DDP ``device_ids=None``, SyncBN -> BN), then
      :func:`init_from_torchrun_env` with gloo (``--launcher slurm``: after :func:`slurm_to_torchrun_env`).

    The Runner then finds the process group initialised and uses it.  Returns True when the group was
    started here (or existed already), for :func:`end_distributed`.

    Args:
        cfg: the config (changed in place on CPU).
        launcher: ``'none'``, ``'pytorch'``, ``'slurm'`` or ``'mpi'``.
        task: passed to :func:`prepare_cpu_distributed_cfg` (``'training'`` / ``'testing'``).

    Raises:
        RuntimeError: ``launcher`` ``'mpi'`` without CUDA (distributed CPU runs are supported with
            ``--launcher pytorch`` and ``slurm``); as :func:`init_from_torchrun_env` and
            :func:`slurm_to_torchrun_env`.
    """
    if launcher == 'none':
        return False
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if torch.cuda.is_available():
        if launcher != 'pytorch':
            return False
        if not initialised:
            torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)))
            dist_cfg = (cfg.get('env_cfg', None) or {}).get('dist_cfg', None) or {}
            init_from_torchrun_env(dist_cfg.get('backend', 'nccl'), dist_cfg)
        return True
    if launcher not in ('pytorch', 'slurm'):
        raise RuntimeError(f'--launcher {launcher} needs CUDA, which is not available; distributed runs on CPU '
                           'processes are supported with --launcher pytorch (torchrun: tools/dist_train.sh, '
                           'tools/dist_test.sh) and --launcher slurm (srun: tools/slurm_train.sh)')
    if launcher == 'slurm':
        slurm_to_torchrun_env()
    prepare_cpu_distributed_cfg(cfg, task)
    if not initialised:
        init_from_torchrun_env('gloo', cfg.env_cfg.dist_cfg)
    return True


def release_loader_workers(*loaders) -> None:
    """End the persistent workers of ``loaders`` now, while their queues are alive.

    torch keeps a loader's persistent iterator in ``DataLoader._iterator`` and ends its workers from the
    iterator's ``__del__`` by sending each one ``None`` through its index queue.  When a runner is freed by
    the garbage collector (:func:`end_distributed`), the queues' own finalizers run first and stop
    their feeder threads, so the ``None`` never leaves the main process: every worker then costs two 5 s
    timeouts before it is terminated.  Dropping the iterators while the runner still holds everything
    frees them by reference count instead, in order.  Call it once the runner's loop has returned or
    stopped, with its loaders (``runner.train_dataloader``, ``runner.val_dataloader``, ...); anything that
    is not a ``DataLoader`` is skipped.
    """
    from torch.utils.data import DataLoader
    for loader in loaders:
        if isinstance(loader, DataLoader) and loader.persistent_workers:
            loader._iterator = None


def end_distributed(started: bool) -> None:
    """Destroy the process group of a distributed run once the run has finished.

    Call it with :func:`setup_distributed`'s return value after a successful ``train()`` /
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


#: the environment variables a relaunch sets: torchrun's restart counter, Slurm's requeue counter
RESTART_ENV = ('TORCHELASTIC_RESTART_COUNT', 'SLURM_RESTART_COUNT')

#: ``<work_dir>/FINISHED_FILE``: written by ``tools/train.py`` when a run has finished (``--resume`` then exits 0)
FINISHED_FILE = 'finished.json'

_RESUMABLE_LOOPS = ('ResumableEpochBasedTrainLoop', 'ResumableIterBasedTrainLoop')


def restart_count() -> int:
    """How many times this job was relaunched: ``TORCHELASTIC_RESTART_COUNT`` (torchrun ``--max-restarts``)
    or ``SLURM_RESTART_COUNT`` (a requeued Slurm job), 0 when neither is set."""
    return max(int(os.environ.get(k) or 0) for k in RESTART_ENV)


def _type_name(entry) -> str:
    t = entry.get('type', '') if isinstance(entry, dict) else ''
    return (t.__name__ if isinstance(t, type) else str(t)).rsplit('.', 1)[-1]


def set_resumable_loop_option(cfg: Config, key: str, value) -> None:
    """``cfg.train_cfg[key] = value`` for a resumable train loop.

    Raises:
        ValueError: the config's train loop is not ``ResumableEpochBasedTrainLoop`` /
            ``ResumableIterBasedTrainLoop`` (the message names ``train_cfg.type``).
    """
    train_cfg = cfg.get('train_cfg', None)
    if _type_name(train_cfg or {}) not in _RESUMABLE_LOOPS:
        raise ValueError(f'{key}: train_cfg.type must be one of {_RESUMABLE_LOOPS} (tlalign_mm.engine), got '
                         f'{(train_cfg or {}).get("type")!r}')
    train_cfg[key] = value


def set_hook_option(cfg: Config, hook_type: str, key: str, value) -> int:
    """Set ``key=value`` on every hook of type ``hook_type`` in ``default_hooks`` and ``custom_hooks``.

    Returns:
        How many hooks were changed.
    """
    hooks = [h for h in (cfg.get('default_hooks', None) or {}).values() if h is not None]
    hooks += list(cfg.get('custom_hooks', None) or [])
    changed = 0
    for hook in hooks:
        if _type_name(hook) == hook_type:
            hook[key] = value
            changed += 1
    return changed


def build_runner(cfg: Config):
    """``Runner.from_cfg(cfg)``, or the registered ``cfg.runner_type``."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if 'runner_type' not in cfg:
        return Runner.from_cfg(cfg)
    return RUNNERS.build(cfg)


def check_checkpoint_file(path) -> None:
    """A local checkpoint the run will load (``CHECKPOINT``, ``--resume``, ``load_from``), checked before the
    runner is built or anything is written into the work dir; a missing or unreadable one is a
    :class:`~tlalign_mm.checkpoint.CheckpointFileError` naming it.  URLs and None pass."""
    if isinstance(path, str) and '://' not in path and (reason := diagnose_checkpoint_file(path)) is not None:
        raise CheckpointFileError(f'{path}: {reason}')


@contextlib.contextmanager
def exit_on_checkpoint_error(prog: str, *also: type[Exception]):
    """A :class:`~tlalign_mm.checkpoint.CheckpointFileError` (or one of ``also``: a tool's own one-line errors)
    raised inside ends the program with its one line, ``PROG: error: MESSAGE`` on stderr and exit status 1, instead
    of a traceback."""
    try:
        yield
    except (CheckpointFileError, *also) as e:
        stderr_line(f'{prog}: error: {e}')
        raise SystemExit(1) from None
