"""Test (evaluate) a checkpoint with an mmengine config (TL-Align pretraining, mmseg, mmdet).

The same command line as OpenMMLab's ``tools/test.py`` (mmseg 1.x / mmdet 3.x)::

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl] [--show-dir DIR]
                         [--tta] [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

    bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [ARGS]
    bash tools/slurm_test.sh PARTITION JOB CONFIG CHECKPOINT [ARGS]

* :mod:`tlalign_mm` is imported first (registries), mmengine reads local checkpoints through
  ``tlalign_mm.checkpoint.register_checkpoint_loader`` (``weights_only`` with the allow-list of the types
  mmengine checkpoints hold; one line for a bad file), the config's ``default_scope`` selects mmseg's / mmdet's
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
* A downstream config is checked before ``--show-dir`` / ``--tta`` change it
  (:func:`config_checks.check_downstream_config`, ``tools/config_checks.py``).
* Distributed without CUDA (``--launcher pytorch``): gloo backend, CPU DDP and ``SyncBN`` ->
  ``BN``, as in ``tools/train.py`` (``tools/launch.py``).
"""
from __future__ import annotations

import argparse

import launch
from config_checks import (
    DataRootError,
    DownstreamConfigError,
    check_data_roots,
    check_downstream_config,
    config_file,
    writable_dir,
    writable_file,
)
from launch import (
    build_runner,
    exit_on_checkpoint_error,
    prepare_cpu_distributed_cfg,
    register_scope,
    setup_distributed,
)
from mmengine.config import Config, ConfigDict

# the registries, filled at import. The installed package (pip install -e ., tools/setup_env.sh): launch.py says
# so when it is another checkout's.
import tlalign_mm  # noqa: F401
from tlalign_mm.checkpoint import register_checkpoint_loader

__all__ = ['parse_args', 'setup_cfg', 'register_scope', 'prepare_cpu_distributed_cfg', 'setup_distributed',
           'trigger_visualization_hook', 'apply_tta', 'plain_metrics', 'main']


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Test (evaluate) a checkpoint with an mmengine config: TL-Align pretraining '
                    '(default_scope tlalign_mm) or mmseg / mmdet downstream.',
        epilog='Examples:\n'
               '  python tools/test.py CFG work_dirs/cfg/epoch_300.pth\n'
               '  python tools/test.py CFG CKPT --out results.pkl\n'
               '  bash tools/dist_test.sh CFG CKPT 8 --tta',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', type=config_file, help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', type=writable_dir, help='the directory to save the file containing evaluation '
                        'metrics (default: the config\'s work_dir, else ./work_dirs/<config stem>)')
    parser.add_argument('--out', type=writable_file,
                        help='dump the predictions to a pickle file (.pkl / .pickle)')
    parser.add_argument(
        '--show-dir',
        help='directory where painted images will be saved (turns on the config\'s '
             'default_hooks.visualization: draw=True and test_out_dir=DIR, or visualizer.save_dir=DIR '
             'for mmseg configs)')
    parser.add_argument('--tta', action='store_true',
                        help='test-time augmentation: needs tta_model and tta_pipeline in the config')
    launch.add_launch_args(parser, 'dist_test.sh')
    args = launch.parse_launch_args(parser, argv)
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error(f'--out must be a .pkl / .pickle file, got {args.out!r}')
    return args


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
    cfg = launch.load_cfg(args.config, args.launcher, args.cfg_options, args.work_dir)
    cfg.load_from = args.checkpoint
    cfg.resume = False
    check_downstream_config(cfg)  # before --show-dir / --tta change the config

    if args.show_dir:
        trigger_visualization_hook(cfg, args.show_dir)
    if args.tta:
        apply_tta(cfg)
    return cfg


def add_dump_metric(runner, out: str, scope: str | None) -> None:
    """Append a metric that pickles the raw predictions to ``out``."""
    if scope == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=out))
    else:
        from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=out))


def plain_metrics(metrics: dict) -> dict:
    """The metrics with numpy / torch scalars turned into Python floats / ints, so that the
    printed ``metrics: {...}`` line is a Python literal (``ast.literal_eval`` reads it)."""
    out = {}
    for k, v in dict(metrics).items():
        if hasattr(v, 'item') and getattr(v, 'ndim', 0) == 0:
            v = v.item()
        out[k] = v
    return out


def main(argv=None) -> dict:
    register_checkpoint_loader()   # a bad CHECKPOINT: one line naming it, not a traceback
    args = parse_args(argv)
    with exit_on_checkpoint_error('test.py', DataRootError, DownstreamConfigError):
        return _test(args)


def _test(args) -> dict:
    cfg = setup_cfg(args)
    check_data_roots(cfg, ['test_dataloader'])
    launch.check_checkpoint_file(args.checkpoint)
    scope = register_scope(cfg)
    dist_started = setup_distributed(cfg, args.launcher, 'testing')
    runner = build_runner(cfg)
    if args.out is not None:
        add_dump_metric(runner, args.out, scope)
    metrics = runner.test()
    if runner.rank == 0:
        print(f'metrics: {plain_metrics(metrics)}', flush=True)
    launch.release_loader_workers(runner.test_dataloader)
    del runner  # the group's last owner (DDP): freed by end_distributed, not at interpreter exit
    launch.end_distributed(dist_started)
    return metrics


if __name__ == '__main__':
    main()
