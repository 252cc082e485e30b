"""Test (evaluate) a checkpoint with an mmengine config (TL-Align pretraining, mmseg, mmdet).

The same command line as OpenMMLab's ``tools/test.py`` (mmseg 1.x / mmdet 3.x)::

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl] [--show-dir DIR]
                         [--tta] [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

    bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [ARGS]
    bash tools/slurm_test.sh PARTITION JOB CONFIG CHECKPOINT [ARGS]

* :mod:`tlalign_mm` is imported first (registries; torch >= 2.6 ``weights_only`` allow-list for
  mmengine checkpoints), the config's ``default_scope`` selects mmseg's / mmdet's
  ``register_all_modules`` (imported only then), ``cfg.load_from = CHECKPOINT``, and the runner
  (``Runner.from_cfg`` or the config's ``runner_type``) runs ``test()`` on ``test_dataloader`` with
  ``test_evaluator``.  The metrics are logged (e.g. ``accuracy/top1: 76.5``) and, on the main
  process, printed as a last line ``metrics: {...}``; :func:`main` returns them.
* ``--out results.pkl`` additionally dumps the raw predictions (mmengine ``DumpResults``; under
  ``default_scope='mmdet'`` mmdet's ``DumpDetResults``, which stores them in its json-able form).
* ``--show-dir DIR`` turns on the config's visualization hook (``default_hooks.visualization``:
  ``draw=True``, ``test_out_dir=DIR`` as in mmdet; under ``default_scope='mmseg'``
  ``visualizer.save_dir=DIR`` as in mmseg, whose hook has no ``test_out_dir``); a config without
  such a hook is an error.
* ``--tta`` wraps the model in ``cfg.tta_model`` and replaces the test dataset's pipeline with
  ``cfg.tta_pipeline`` (as mmseg / mmdet do); a config without them is an error.
* Distributed without CUDA: gloo backend and CPU DDP, as in ``tools/train.py``.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys

try:  # first: registries + torch>=2.6 safe globals for loading mmengine checkpoints
    import tlalign_mm  # noqa: F401
except ImportError:  # running from a source checkout without PYTHONPATH / install
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    import tlalign_mm  # noqa: F401

import torch  # noqa: E402
from mmengine.config import Config, ConfigDict, DictAction  # noqa: E402
from mmengine.registry import RUNNERS  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

__all__ = ['parse_args', 'setup_cfg', 'register_scope', 'prepare_cpu_distributed_cfg', 'setup_cpu_distributed',
           'trigger_visualization_hook', 'apply_tta', 'main']


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Test (evaluate) a checkpoint with an mmengine config: TL-Align pretraining '
                    '(default_scope tlalign_mm) or mmseg / mmdet downstream.',
        epilog='Examples:\n'
               '  python tools/test.py CFG work_dirs/cfg/epoch_300.pth\n'
               '  python tools/test.py CFG CKPT --out results.pkl\n'
               '  bash tools/dist_test.sh CFG CKPT 8 --tta',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the directory to save the file containing evaluation '
                        'metrics (default: the config\'s work_dir, else ./work_dirs/<config stem>)')
    parser.add_argument('--out', type=str,
                        help='dump the predictions to a pickle file (.pkl / .pickle)')
    parser.add_argument(
        '--show-dir',
        help='directory where painted images will be saved (turns on the config\'s '
             'default_hooks.visualization: draw=True and test_out_dir=DIR, or visualizer.save_dir=DIR '
             'for mmseg configs)')
    parser.add_argument('--tta', action='store_true',
                        help='test-time augmentation: needs tta_model and tta_pipeline in the config')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override some settings in the used config, the key-value pair in xxx=yyy format will '
             'be merged into config file. If the value to be overwritten is a list, it should be '
             'like key="[a,b]" or key=a,b It also allows nested list/tuple values, e.g. '
             'key="[(a,b),(c,d)]" Note that the quotation marks are necessary and that no white '
             'space is allowed.')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher (pytorch: torchrun / dist_test.sh; slurm: srun)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help='set by torch.distributed.launch; exported as LOCAL_RANK')
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def register_scope(cfg: Config) -> str | None:
    """mmseg / mmdet ``register_all_modules(init_default_scope=False)`` by ``cfg.default_scope``
    (imported only in that branch); nothing for other scopes.  Returns the scope."""
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
              '(distributed testing on CPU processes)', flush=True)
        dist_cfg.backend = 'gloo'
    wrapper = cfg.get('model_wrapper_cfg', None)
    if wrapper is None:
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
    """Without CUDA and with a launcher: :func:`prepare_cpu_distributed_cfg`, then start the process
    group here with ``torch.cuda.set_device`` a no-op (mmengine 0.10.7 calls it for every launcher
    and it raises without a GPU); the Runner then uses that group.  Same as ``tools/train.py``.
    Returns whether it did anything."""
    if launcher == 'none' or torch.cuda.is_available():
        return False
    prepare_cpu_distributed_cfg(cfg)
    from unittest import mock

    from mmengine.dist import init_dist, is_distributed
    if not is_distributed():
        with mock.patch.object(torch.cuda, 'set_device', lambda *a, **k: None):
            init_dist(launcher, **cfg.env_cfg.dist_cfg)
    return True


def trigger_visualization_hook(cfg: Config, show_dir: str) -> Config:
    """Turn on the config's visualization hook and send the painted images to ``show_dir``.

    ``default_hooks.visualization.draw = True`` and, as mmdet does, ``test_out_dir = show_dir``
    (mmdet's ``DetVisualizationHook`` saves there, relative to the run's log dir).  Under
    ``default_scope='mmseg'`` the directory goes to ``cfg.visualizer.save_dir`` instead, as mmseg's
    ``tools/test.py`` does: mmseg's ``SegVisualizationHook`` has no ``test_out_dir`` argument.

    Raises:
        RuntimeError: the config has no ``default_hooks.visualization`` (or, for mmseg, no
            ``visualizer``).
    """
    default_hooks = cfg.get('default_hooks', None) or {}
    if default_hooks.get('visualization', None) is None:
        raise RuntimeError(
            f'--show-dir: the config {cfg.filename!r} has no visualization hook; add one to '
            "default_hooks, e.g. visualization=dict(type='SegVisualizationHook') (mmseg) or "
            "dict(type='DetVisualizationHook') (mmdet), and a visualizer.")
    hook = default_hooks['visualization']
    hook['draw'] = True
    if cfg.get('default_scope', None) == 'mmseg':
        if cfg.get('visualizer', None) is None:
            raise RuntimeError(f'--show-dir: the mmseg config {cfg.filename!r} has no visualizer '
                               "(e.g. visualizer=dict(type='SegLocalVisualizer', "
                               "vis_backends=[dict(type='LocalVisBackend')]))")
        cfg.visualizer['save_dir'] = show_dir
    else:
        hook['test_out_dir'] = show_dir
    return cfg


def apply_tta(cfg: Config) -> Config:
    """Wrap ``cfg.model`` in ``cfg.tta_model`` and use ``cfg.tta_pipeline`` for the test dataset.

    The test dataset is looked up through dataset wrappers (``dataset=dict(dataset=...)``) as
    mmdet does, and its ``batch_shapes_cfg`` (YOLO-style fixed shapes) is turned off.

    Raises:
        ValueError: the config lacks ``tta_model`` or ``tta_pipeline``.
    """
    missing = [k for k in ('tta_model', 'tta_pipeline') if cfg.get(k, None) is None]
    if missing:
        raise ValueError(
            f'--tta: the config {cfg.filename!r} has no {" / ".join(missing)}; test-time '
            'augmentation needs both, e.g. tta_model=dict(type=\'SegTTAModel\') and a '
            "tta_pipeline with dict(type='TestTimeAug', transforms=[...]) (see mmseg / mmdet configs).")
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    test_data_cfg = cfg.test_dataloader.dataset
    while 'dataset' in test_data_cfg:
        test_data_cfg = test_data_cfg['dataset']
    if 'batch_shapes_cfg' in test_data_cfg:
        test_data_cfg.batch_shapes_cfg = None
    test_data_cfg.pipeline = cfg.tta_pipeline
    return cfg


def setup_cfg(args: argparse.Namespace) -> Config:
    """Load the config and apply the command line to it (no runner, no process group)."""
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)

    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])

    cfg.load_from = args.checkpoint
    cfg.resume = False

    if args.show_dir:
        trigger_visualization_hook(cfg, args.show_dir)
    if args.tta:
        apply_tta(cfg)
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        raise ValueError(f'--out must be a .pkl / .pickle file, got {args.out!r}')
    return cfg


def build_runner(cfg: Config):
    """``Runner.from_cfg(cfg)``, or the registered ``cfg.runner_type``."""
    if 'runner_type' not in cfg:
        return Runner.from_cfg(cfg)
    return RUNNERS.build(cfg)


def add_dump_metric(runner, out: str, scope: str | None) -> None:
    """Append a metric that pickles the raw predictions to ``out``."""
    if scope == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=out))
    else:
        from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=out))


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = setup_cfg(args)
    scope = register_scope(cfg)
    setup_cpu_distributed(cfg, args.launcher)
    runner = build_runner(cfg)
    if args.out is not None:
        add_dump_metric(runner, args.out, scope)
    metrics = runner.test()
    if runner.rank == 0:
        print(f'metrics: {dict(metrics)}', flush=True)
    return metrics


if __name__ == '__main__':
    main()
