"""The command-line tools: ``tools/train.py``, ``tools/test.py``, ``tools/dist_train.sh``, ``tools/dist_test.sh``.

Fast tests load the two Python tools in-process and check how the command line changes the config
(``--resume`` / ``--amp`` / work dir / ``--show-dir`` / ``--tta`` / ``--out``, the mmseg / mmdet scope
dispatch with stand-in modules, the CPU gloo fallback).  The ``slow`` tests run the tools as real
subprocesses on a tiny self-contained config written to ``tmp_path``: a 2-layer, 32-wide
``TLAVisionTransformer`` (patch 8 on 32x32 images, 16 tokens) inside ``TLAImageClassifier`` with 4
classes, trained with AdamW on an ``ImageFolderDataset`` of 4 class folders x 4 PNGs (deterministic
eval transform, ``DefaultSampler(shuffle=False)``, ``num_workers=0``, ``randomness`` seed 0 and
deterministic).  Every subprocess runs with ``OMP_NUM_THREADS=1`` (faster on a 2-core machine and the
same float reduction order in every run).

The subprocess runs (each pays an interpreter + torch / mmengine start-up) are:

* train (mixer on) 2 epochs, then ``test.py`` on the last checkpoint (metric equals the last val);
* a reference ``train.py`` run, mixer off, 3 epochs, batch 4 -- shared (module fixture) by
* ``dist_train.sh CFG 1`` (batch 4: bit-identical) and ``dist_train.sh CFG 2`` (batch 2 per process,
  same total batch: equal within 1e-5, see :func:`test_dist_train_matches_single_process`);
* a real interruption: ``train.py`` (3 epochs) SIGKILLed after the epoch-1 checkpoint, then
  ``train.py CFG --resume`` -- bit-identical to the reference;
* ``dist_test.sh CFG CKPT 2`` -- the same accuracy as ``test.py``.
"""
from __future__ import annotations

import ast
import gc
import importlib.util
import os
import os.path as osp
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import types
import weakref

import numpy as np
import pytest
import torch

pytest.importorskip('mmengine')

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.join(REPO, 'tools')
SUBPROCESS_TIMEOUT = 300
_NUM_CUDA = torch.cuda.device_count()


# --------------------------------------------------------------------------- the tiny config
def _write_images(root: str) -> None:
    """4 class folders x 4 RGB 32x32 PNGs; each class has its own dominant colour (learnable)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]
    for c, colour in enumerate(colours):
        d = osp.join(root, 'train', f'class{c}')
        os.makedirs(d, exist_ok=True)
        for i in range(4):
            img = np.asarray(colour, dtype=np.int64) + rng.integers(-30, 31, size=(32, 32, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(osp.join(d, f'{i}.png'))


CONFIG = '''\
default_scope = 'tlalign_mm'
custom_imports = dict(imports=['tlalign_mm'], allow_failed_imports=False)
data_root = {data_root!r}
pipeline = [
    dict(type='TimmClassificationTransform', input_size=32, is_training=False, crop_pct=1.0),
    dict(type='PackClsInputs'),
]
model = dict(
    type='TLAImageClassifier',
    backbone=dict(type='TLAVisionTransformer', arch=dict(embed_dims=32, num_layers=2, num_heads=2),
                  img_size=32, patch_size=8, out_type='cls_token', drop_path_rate=0.0),
    head=dict(type='TLALinearClsHead', num_classes=4),
    data_preprocessor=dict(type='TLAClsDataPreprocessor', mixer=dict(cutmix_alpha=1.0, patch_size=8), seed=0))
dataset = dict(type='ImageFolderDataset', data_root=data_root, split='train', pipeline=pipeline)
train_dataloader = dict(batch_size=4, num_workers=0, dataset=dataset,
                        sampler=dict(type='DefaultSampler', shuffle=False),
                        collate_fn=dict(type='default_collate'))
val_dataloader = dict(batch_size=4, num_workers=0, dataset=dict(dataset, test_mode=True),
                      sampler=dict(type='DefaultSampler', shuffle=False),
                      collate_fn=dict(type='default_collate'))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=1)
test_evaluator = val_evaluator
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3))
train_cfg = dict(by_epoch=True, max_epochs=2, val_interval=1)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1),
                     logger=dict(type='LoggerHook', interval=1))
randomness = dict(seed=0, deterministic=True)
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork'), dist_cfg=dict(backend='gloo'))
log_level = 'INFO'
'''

#: mixer off, 3 epochs: the configuration of the equivalence and kill-and-resume runs
NO_MIX = '''\
_base_ = ['./tiny.py']
model = dict(data_preprocessor=dict(mixer=None))
train_cfg = dict(max_epochs=3)
'''

#: NO_MIX with a slow validation (64 single-image batches after each epoch).  Validation does not
#: touch the weights, so the trained weights are those of NO_MIX; it only widens the window between
#: the epoch-1 checkpoint and the end of the run, so the kill reliably lands mid-run.
SLOW_VAL = '''\
_base_ = ['./tiny_nomix.py']
val_dataloader = dict(batch_size=1, dataset=dict(_delete_=True, type='RepeatDataset', times=4,
                                                 dataset={{_base_.dataset}}))
'''


@pytest.fixture(scope='module')
def cfgs(tmp_path_factory):
    """Paths of the tiny config (``tiny``), its mixer-off variant (``nomix``) and ``slow_val``."""
    root = tmp_path_factory.mktemp('tools_cfg')
    _write_images(str(root / 'data'))
    paths = {}
    for name, text in (('tiny', CONFIG.format(data_root=str(root / 'data'))), ('nomix', NO_MIX),
                       ('slow_val', SLOW_VAL)):
        path = root / ('tiny.py' if name == 'tiny' else f'tiny_{name}.py')
        path.write_text(text)
        paths[name] = str(path)
    return paths


# --------------------------------------------------------------------------- helpers
def _load_tool(name: str) -> types.ModuleType:
    """Import ``tools/<name>.py`` as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f'_tlalign_tools_{name}', osp.join(TOOLS, f'{name}.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope='module')
def train_tool():
    return _load_tool('train')


@pytest.fixture(scope='module')
def test_tool():
    return _load_tool('test')


class _CurrentStdout:
    """A stream that writes to whatever ``sys.stdout`` is at the time of the write."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


@pytest.fixture
def mm_capsys(capsys):
    """``capsys`` that also sees mmengine's log (``print_log(..., logger='current')``).

    ``MMLogger``'s ``StreamHandler`` keeps the ``sys.stdout`` of the moment the logger was created:
    under pytest an earlier test's capture, closed by now (pytest also swaps ``sys.stdout`` between a
    test's setup and call).  For this test it writes to the current ``sys.stdout`` instead.
    """
    import logging

    from mmengine.logging import MMLogger
    handlers = [h for h in MMLogger.get_current_instance().handlers if type(h) is logging.StreamHandler]
    saved = [h.stream for h in handlers]
    for h in handlers:
        h.stream = _CurrentStdout()
    yield capsys
    for h, stream in zip(handlers, saved):
        h.stream = stream


def _env(**extra) -> dict:
    env = dict(os.environ)
    env['PYTHONPATH'] = REPO + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
    env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHON=sys.executable, PYTHONUNBUFFERED='1')
    env.pop('LOCAL_RANK', None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _free_port() -> int:
    """A port that was free a moment ago (29500 + random would also do; this avoids collisions)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _run(cmd: list[str], log_path, **env) -> str:
    """Run ``cmd`` in the repo root, tee stdout+stderr to ``log_path``; fail with the log's tail."""
    proc = subprocess.run(cmd, cwd=REPO, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=SUBPROCESS_TIMEOUT)
    with open(log_path, 'w') as f:
        f.write(proc.stdout)
    assert proc.returncode == 0, f'{" ".join(cmd)} exited with {proc.returncode}:\n{proc.stdout[-6000:]}'
    return proc.stdout


def _train(cfg: str, work_dir, *args: str) -> str:
    return _run([sys.executable, osp.join(TOOLS, 'train.py'), cfg, '--work-dir', str(work_dir), *args],
                osp.join(str(work_dir) + '.log'))


def _weights(path) -> dict:
    from tlalign_mm.checkpoint import load_checkpoint_file  # weights_only, with mmengine's types allow-listed
    return load_checkpoint_file(str(path))['state_dict']


def _metrics(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith('metrics: ')]
    assert lines, f'no "metrics: " line in the output:\n{stdout[-3000:]}'
    return ast.literal_eval(lines[-1][len('metrics: '):])


def _last_val_top1(stdout: str) -> float:
    hits = re.findall(r'Epoch\(val\).*accuracy/top1: ([0-9.]+)', stdout)
    assert hits, 'no validation accuracy in the training log'
    return float(hits[-1])


# =========================================================================== fast, in-process
@pytest.mark.parametrize('tool', ['train', 'test'])
def test_help(tool, capsys, request):
    mod = request.getfixturevalue(f'{tool}_tool')
    assert mod.__doc__ and mod.main.__module__ == mod.__name__
    with pytest.raises(SystemExit) as exc:
        mod.parse_args(['--help'])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for opt in ('--work-dir', '--cfg-options', '--launcher', '--local_rank'):
        assert opt in out
    extra = ('--resume', '--amp') if tool == 'train' else ('--out', '--show-dir', '--tta', 'checkpoint')
    for opt in extra:
        assert opt in out


@pytest.mark.slow
def test_train_resume_workdir_local_rank(train_tool, cfgs, monkeypatch, tmp_path):
    monkeypatch.delenv('LOCAL_RANK', raising=False)
    tiny = cfgs['tiny']
    cfg = train_tool.setup_cfg(train_tool.parse_args([tiny, '--local-rank', '3']))
    assert os.environ['LOCAL_RANK'] == '3'
    assert cfg.work_dir == osp.join('./work_dirs', 'tiny') and not cfg.get('resume', False)
    assert cfg.launcher == 'none'

    # mmdet semantics: `--resume` alone -> auto (latest readable in work dir, else a fresh start);
    # `--resume PATH` -> that file
    wd = str(tmp_path / 'wd')
    cfg = train_tool.setup_cfg(train_tool.parse_args([tiny, '--resume', '--work-dir', wd]))
    assert cfg.resume is False and cfg.load_from is None and cfg.work_dir == wd
    os.makedirs(wd)
    torch.save({'state_dict': {}}, osp.join(wd, 'epoch_2.pth'))
    with open(osp.join(wd, 'last_checkpoint'), 'w') as f:
        f.write(osp.join(wd, 'epoch_2.pth'))
    cfg = train_tool.setup_cfg(train_tool.parse_args([tiny, '--resume', '--work-dir', wd]))
    assert cfg.resume is True and cfg.load_from == osp.join(wd, 'epoch_2.pth')
    cfg = train_tool.setup_cfg(train_tool.parse_args([tiny, '--resume', 'some/epoch_3.pth']))
    assert cfg.resume is True and cfg.load_from == 'some/epoch_3.pth'

    cfg = train_tool.setup_cfg(train_tool.parse_args(
        [tiny, '--cfg-options', 'train_cfg.max_epochs=7', 'work_dir=/tmp/from_cfg']))
    assert cfg.train_cfg.max_epochs == 7 and cfg.work_dir == '/tmp/from_cfg'


@pytest.mark.slow
def test_train_amp(train_tool, cfgs, mm_capsys):
    capsys = mm_capsys
    cfg = train_tool.setup_cfg(train_tool.parse_args([cfgs['tiny'], '--amp']))
    if torch.cuda.is_available():
        assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and cfg.optim_wrapper.loss_scale == 'dynamic'
    else:  # AMP on CPU is not what users mean: warn, keep fp32
        assert cfg.optim_wrapper.type == 'OptimWrapper' and 'loss_scale' not in cfg.optim_wrapper
        assert 'CUDA is not available' in capsys.readouterr().out


@pytest.mark.parametrize('tool', ['train', 'test'])
def test_cpu_distributed_cfg(tool, request, cfgs, capsys):
    """Without CUDA: nccl -> gloo (printed) and CPU DDP (``device_ids=None``)."""
    mod = request.getfixturevalue(f'{tool}_tool')
    argv = [cfgs['tiny']] + (['x.pth'] if tool == 'test' else []) + [
        '--launcher', 'pytorch', '--cfg-options', 'env_cfg.dist_cfg.backend=nccl']
    cfg = mod.setup_cfg(mod.parse_args(argv))
    assert cfg.env_cfg.dist_cfg.backend == 'nccl' and cfg.launcher == 'pytorch'
    mod.prepare_cpu_distributed_cfg(cfg)
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg.type == 'MMDistributedDataParallel' and cfg.model_wrapper_cfg.device_ids is None
    out = capsys.readouterr().out
    assert "-> 'gloo'" in out and 'SyncBN' not in out  # the tiny model has no SyncBN
    # a config without env_cfg at all, and one with its own DDP wrapper
    cfg.pop('env_cfg')
    cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
    mod.prepare_cpu_distributed_cfg(cfg)
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg.device_ids is None and cfg.model_wrapper_cfg.find_unused_parameters
    # nothing to do without a launcher
    assert mod.setup_distributed(cfg, 'none') is False


@pytest.mark.parametrize('tool', ['train', 'test'])
def test_cpu_distributed_sync_bn_to_bn(tool, request, capsys):
    """Without CUDA a distributed run also gets ``SyncBN`` -> ``BN`` (torch's SyncBatchNorm refuses CPU
    tensors), printed with the changed config paths; an already-gloo config prints no backend line."""
    from mmengine.config import Config
    mod = request.getfixturevalue(f'{tool}_tool')
    cfg = Config(dict(
        env_cfg=dict(dist_cfg=dict(backend='gloo')),
        model=dict(type='EncoderDecoder', backbone=dict(type='TLASwinTransformer', norm_cfg=dict(type='LN')),
                   decode_head=dict(type='UPerHead', norm_cfg=dict(type='SyncBN', requires_grad=True)),
                   auxiliary_head=[dict(type='FCNHead', norm_cfg=dict(type='SyncBN', requires_grad=True))])))
    mod.prepare_cpu_distributed_cfg(cfg)
    assert cfg.model.decode_head.norm_cfg == dict(type='BN', requires_grad=True)
    assert cfg.model.auxiliary_head[0].norm_cfg.type == 'BN' and cfg.model.backbone.norm_cfg.type == 'LN'
    out = capsys.readouterr().out
    assert ('[tlalign_mm] CUDA is not available: SyncBN -> BN in model.decode_head.norm_cfg, '
            'model.auxiliary_head[0].norm_cfg (torch SyncBatchNorm needs GPU tensors; statistics are per process)'
            in out)
    assert 'gloo' not in out
    mod.prepare_cpu_distributed_cfg(cfg)  # nothing left to change: silent
    assert capsys.readouterr().out == ''


def test_launch_module_imports():
    """``tools/launch.py`` needs only torch, mmengine, ``tools/config_checks.py`` and the package's
    checkout check at module level (mmseg / mmdet are imported inside ``register_scope``); both
    tools use its functions, not copies."""
    launch = _load_tool('train').launch
    assert osp.samefile(launch.__file__, osp.join(TOOLS, 'launch.py'))

    with open(launch.__file__) as f:
        tree = ast.parse(f.read())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top.update(a.name.split('.')[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            top.add(node.module.split('.')[0])
    assert top <= {'__future__', 'argparse', 'contextlib', 'datetime', 'gc', 'os', 'sys', 'collections', 'torch',
                   'mmengine', 'config_checks', 'tlalign_mm'}, top
    for name in ('train', 'test'):
        mod = _load_tool(name)
        for fn in ('register_scope', 'prepare_cpu_distributed_cfg', 'setup_distributed', 'build_runner'):
            assert getattr(mod, fn) is getattr(launch, fn), (name, fn)


def test_lines_that_every_rank_prints_at_once_stay_whole(tmp_path):
    """Two processes (the ranks under torchrun or srun) write their lines to one stderr pipe at once; each line
    arrives whole.  ``print`` to a stderr that is not a terminal writes the text and the newline in two calls,
    and the ranks' messages came out glued (``...continuetrain.py: SIGTERM received ...``).  A one-line error
    (:func:`exit_on_checkpoint_error`) is written the same way and still exits with status 1."""
    script = tmp_path / 'rank.py'
    script.write_text(f'import os, sys, time\nsys.path.insert(0, {TOOLS!r})\nimport launch\n'
                      f'open(os.path.join({str(tmp_path)!r}, "ready" + sys.argv[1]), "w").close()\n'
                      'deadline = time.time() + 60\n'   # both ranks write at once, as after an agreed stop
                      f'while len([n for n in os.listdir({str(tmp_path)!r}) if n.startswith("ready")]) < 2 '
                      'and time.time() < deadline:\n'
                      '    time.sleep(0.01)\n'
                      'for i in range(3000):\n'
                      '    launch.stderr_line(f"train.py: rank {sys.argv[1]} stopped at iteration {i}" + "." * 60)\n'
                      'with launch.exit_on_checkpoint_error("train.py"):\n'
                      '    raise launch.CheckpointFileError(f"rank {sys.argv[1]}: empty (0 bytes)")\n')
    # one reader for both: a pipe that both ranks write to, as torchrun's and srun's output is
    read_fd, write_fd = os.pipe()
    ranks = [subprocess.Popen([sys.executable, str(script), str(r)], stderr=write_fd, stdout=subprocess.DEVNULL)
             for r in range(2)]
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        lines = f.read().splitlines()
    assert [p.wait() for p in ranks] == [1, 1]
    for r in range(2):
        mine = [ln for ln in lines if ln.startswith(f'train.py: rank {r} ')]
        assert mine == [f'train.py: rank {r} stopped at iteration {i}' + '.' * 60 for i in range(3000)]
    assert sorted(ln for ln in lines if ': error: ' in ln) == [f'train.py: error: rank {r}: empty (0 bytes)'
                                                               for r in range(2)]
    assert not [ln for ln in lines if 'train.py: ' in ln[1:]]           # no line carries a second one


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU process group is for machines without CUDA')
def test_cpu_distributed_launchers(train_tool, cfgs, monkeypatch):
    """Without CUDA: ``--launcher mpi`` is refused by name (the config untouched), ``slurm`` outside
    srun names its missing variables; ``pytorch`` initialises the gloo process group from torchrun's
    environment, itself (no mmengine ``init_dist``, whose ``torch.cuda.set_device`` raises without a GPU)."""
    launch = train_tool.launch
    cfg = train_tool.setup_cfg(train_tool.parse_args([cfgs['tiny'], '--launcher', 'mpi']))
    with pytest.raises(RuntimeError, match='--launcher mpi needs CUDA.*--launcher pytorch'):
        launch.setup_distributed(cfg, 'mpi')
    assert 'model_wrapper_cfg' not in cfg
    for k in launch.SLURM_ENV:
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(RuntimeError, match='--launcher slurm: SLURM_PROCID, SLURM_NTASKS, SLURM_NODELIST not set'):
        launch.setup_distributed(cfg, 'slurm')

    cfg = train_tool.setup_cfg(train_tool.parse_args([cfgs['tiny'], '--launcher', 'pytorch']))
    for k in launch.TORCHRUN_ENV:
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(RuntimeError, match='RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT not set.*torchrun'):
        launch.setup_distributed(cfg, 'pytorch')

    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('WORLD_SIZE', '1')
    monkeypatch.setenv('MASTER_ADDR', '127.0.0.1')
    monkeypatch.setenv('MASTER_PORT', str(_free_port()))
    cfg.env_cfg.dist_cfg.timeout = 60
    assert not torch.distributed.is_initialized()
    try:
        assert launch.setup_distributed(cfg, 'pytorch') is True
        assert torch.distributed.is_initialized()
        assert torch.distributed.get_backend() == 'gloo' and torch.distributed.get_world_size() == 1
        from mmengine.dist import get_dist_info, is_distributed
        assert is_distributed() and get_dist_info() == (0, 1)  # what the Runner then finds
        assert launch.setup_distributed(cfg, 'pytorch') is True  # already initialised: kept
        launch.end_distributed(False)  # not ours: kept
        assert torch.distributed.is_initialized()
        # a runner's DDP model in a reference cycle (as the runner's hooks make it) owns the group too:
        # end_distributed frees it with the group, not interpreter shutdown (SIGABRT in gloo)
        gc.disable()  # no automatic collection in between: only end_distributed's
        runner = types.SimpleNamespace(model=torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2)))
        runner.self_ref = runner
        ddp = weakref.ref(runner.model)
        del runner
        assert ddp() is not None  # the cycle keeps it: refcounting alone does not free it
        launch.end_distributed(True)   # after the run: destroyed (gloo would abort at exit)
        assert not torch.distributed.is_initialized()
        assert ddp() is None
    finally:
        gc.enable()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


DET_CFG = osp.join(REPO, 'configs', 'cascade_mask_rcnn',
                   'cascade-mask-rcnn_swin-t_in1k-tla-pre_fpn_ms-crop-3x_8xb2_coco.py')


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason='the fp32 fallback is for machines without CUDA')
def test_train_config_amp_falls_back_to_fp32_without_cuda(train_tool, mm_capsys):
    """The Cascade Mask R-CNN configs ask for ``AmpOptimWrapper``, whose constructor asserts a GPU:
    without CUDA ``setup_cfg`` switches to ``OptimWrapper`` (warning) and the optimizer builds."""
    cfg = train_tool.setup_cfg(train_tool.parse_args([DET_CFG, '--work-dir', 'unused']))
    assert cfg.optim_wrapper.type == 'OptimWrapper' and 'loss_scale' not in cfg.optim_wrapper
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'  # the rest untouched
    assert 'optim_wrapper: AmpOptimWrapper needs CUDA, which is not available; training in fp32 (OptimWrapper).' \
        in mm_capsys.readouterr().out
    # what Runner.build_optim_wrapper does with it (the AmpOptimWrapper would raise here), on a stand-in
    # model with the parameter names the paramwise_cfg custom_keys look for
    from mmengine.optim import OptimWrapper, build_optim_wrapper
    model = torch.nn.Module()
    model.norm = torch.nn.LayerNorm(4)
    model.fc = torch.nn.Linear(4, 2)
    ow = build_optim_wrapper(model, cfg.optim_wrapper)
    assert type(ow) is OptimWrapper and type(ow.optimizer).__name__ == 'AdamW'
    # also with --amp (ignored without CUDA: same result)
    cfg = train_tool.setup_cfg(train_tool.parse_args([DET_CFG, '--amp']))
    assert cfg.optim_wrapper.type == 'OptimWrapper'


BAD_SEG = '''\
default_scope = 'mmseg'
crop_size = (500, 500)
model = dict(type='EncoderDecoder', data_preprocessor=dict(size=crop_size),
             backbone=dict(type='TLASwinTransformer', arch='tiny'),
             decode_head=dict(type='UPerHead', num_classes=150))
'''


@pytest.mark.slow
def test_downstream_config_checked_first(train_tool, test_tool, tmp_path, monkeypatch, capsys):
    """Both tools reject an invalid downstream config by its field before anything is registered or
    built: train.py in ``main`` before ``register_scope`` (an error naming each field); test.py in
    ``setup_cfg`` before ``--tta``."""
    from config_checks import DownstreamConfigError  # tools/config_checks.py (on sys.path: tests/conftest.py)
    bad = tmp_path / 'bad_seg.py'
    bad.write_text(BAD_SEG)
    calls = []
    monkeypatch.setattr(train_tool, 'register_scope', lambda cfg: calls.append(cfg))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:                                  # one line, no traceback
        train_tool.main([str(bad), '--work-dir', str(tmp_path / 'wd')])
    assert exc.value.code == 1 and calls == []
    assert re.fullmatch(r'train\.py: error: invalid downstream config:.*model\.data_preprocessor\.size=\(500, 500\) '
                        r'is not divisible.*\n', capsys.readouterr().err, re.S)
    # setup_cfg itself does not check (main does), so it can still be used to inspect a config
    assert train_tool.setup_cfg(train_tool.parse_args([str(bad)])).crop_size == (500, 500)

    with pytest.raises(DownstreamConfigError, match='crop_size=.*not divisible'):
        test_tool.setup_cfg(test_tool.parse_args([str(bad), 'ck.pth', '--tta']))  # not the --tta error
    # fixed by --cfg-options: passes the check, then --tta complains about the missing tta_model
    with pytest.raises(ValueError, match='tta_model / tta_pipeline'):
        test_tool.setup_cfg(test_tool.parse_args(
            [str(bad), 'ck.pth', '--tta', '--cfg-options', 'crop_size=(512,512)',
             'model.data_preprocessor.size=(512,512)']))


@pytest.mark.parametrize('tool', ['train', 'test'])
def test_missing_dataset_folder_is_one_line_naming_the_field(tool, tmp_path):
    """A dataset folder that is not there stops the real tool before any model or process group is built:
    exit status 1, one line naming the config field, the folder and the fix; no traceback."""
    cfg = 'configs/demo/deit-demo_tla_1xb64-10e_fashion-mnist.py'
    loader = 'train_dataloader' if tool == 'train' else 'test_dataloader'
    missing = str(tmp_path / 'no_such_folder')
    args = [cfg] + ([] if tool == 'train' else [str(tmp_path / 'ck.pth')])
    proc = subprocess.run([sys.executable, osp.join(TOOLS, f'{tool}.py'), *args, '--work-dir', str(tmp_path / 'wd'),
                           '--cfg-options', f'{loader}.dataset.data_root={missing}'], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"{tool}.py: error: no dataset folder at {loader}.dataset.data_root={missing!r} "
        f"(relative to {osp.realpath(REPO)}): "
        'prepare the data as docs/user_guides/data.md says, or point the config at it, e.g. --cfg-options '
        f'{loader}.dataset.data_root=PATH')
    assert not osp.exists(tmp_path / 'wd' / 'last_checkpoint')


@pytest.mark.parametrize('tool,loader', [('token_fluctuation', 'train_dataloader'),
                                         ('rule_lambdas', 'train_dataloader'),
                                         ('visualize_aligned_labels', 'val_dataloader')])
def test_analysis_tools_name_a_missing_dataset_folder_before_building(tool, loader, tmp_path):
    """The analysis tools that read a dataset check its folder when they read the config, as train.py does:
    exit status 1, the same one line naming the field and the fix, no traceback, nothing written."""
    cfg = 'configs/demo/deit-demo_tla_1xb64-10e_fashion-mnist.py'
    missing = str(tmp_path / 'no_such_folder')
    argv = [osp.join(TOOLS, 'analysis', f'{tool}.py'), cfg, '--device', 'cpu', '--out-dir', str(tmp_path / 'out'),
            '--cfg-options', f'{loader}.dataset.data_root={missing}']
    proc = subprocess.run([sys.executable, *argv], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"{tool}.py: error: no dataset folder at {loader}.dataset.data_root={missing!r} "
        f"(relative to {osp.realpath(REPO)}): "
        'prepare the data as docs/user_guides/data.md says, or point the config at it, e.g. --cfg-options '
        f'{loader}.dataset.data_root=PATH')
    assert not osp.exists(tmp_path / 'out')


@pytest.mark.parametrize('argv,message', [
    (['analysis/plot_curves.py', 'wd'], "no <timestamp>/vis_data/scalars.json under 'wd': pass an mmengine work dir "
     "of a run that logged with visualizer=dict(vis_backends=[dict(type='LocalVisBackend')])"),
    (['analysis/demo_results.py', 'wd', '--seconds', '1', '2', '3', '4', '5', '--results-json', 'r.json'],
     'wd/pretrain/test.txt: no such file (that stage of tools/run_demo.sh did not finish)'),
])
def test_an_input_folder_without_its_files_is_one_line(argv, message, tmp_path):
    """A work dir that exists but holds nothing the tool reads: exit status 1 and one line naming the file
    looked for, no traceback, nothing written."""
    (tmp_path / 'wd').mkdir()
    proc = subprocess.run([sys.executable, osp.join(TOOLS, *argv[0].split('/')), *argv[1:]], cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [f'{osp.basename(argv[0])}: error: {message}']
    assert sorted(os.listdir(tmp_path)) == ['wd'] and not os.listdir(tmp_path / 'wd')


@pytest.mark.parametrize('argv,message', [
    (['train.py', 'nope.py'], "argument config: config file not found: 'nope.py'"),
    (['test.py', 'ck.pth', 'CFG'], "argument config: 'ck.pth' is not a config file (.py, .json, .yml, .yaml); the "
                                   'tools take the config first, then the checkpoint'),
    (['train.py', 'CFG', '--cfg-options', 'model.backbone.arch'],
     "--cfg-options 'model.backbone.arch': expected KEY=VALUE"),
    (['train.py', 'CFG', '--work-dir', 'notes.txt/wd'],
     "argument --work-dir: 'notes.txt/wd' cannot be written: TMP/notes.txt is a file, not a folder"),
    (['test.py', 'CFG', 'ck.pth', '--out', 'notes.txt/r.pkl'],
     "argument --out: 'notes.txt/r.pkl' cannot be written: TMP/notes.txt is a file, not a folder"),
    (['analysis/get_flops.py', 'CFG', '--results-json', 'flops.txt'],
     "argument --results-json: must name a .json file, got 'flops.txt'"),
    (['analysis/get_flops.py', 'CFG', '--results-json', 'notes.txt/flops.json'],
     "argument --results-json: 'notes.txt/flops.json' cannot be written: TMP/notes.txt is a file, not a folder"),
    (['test_tiers.py', '--results-json', 'notes.txt/tiers.json'],
     "argument --results-json: 'notes.txt/tiers.json' cannot be written: TMP/notes.txt is a file, not a folder"),
    (['convert_checkpoint.py', 'ck.pth', 'ck.pth'],
     'DST is SRC (ck.pth): writing it would replace the source; choose another output path'),
    (['analysis/benchmark_official.py', '--device', 'gpu'],
     "argument --device: 'gpu' is not a torch device (cpu, cuda, cuda:1 ...)"),
    (['analysis/token_fluctuation.py', 'CFG', '--device', 'cuda:99'],
     f"argument --device: 'cuda:99': this machine has {_NUM_CUDA} CUDA device(s)"
     + ('' if _NUM_CUDA else ' (torch.cuda.is_available() is False); use --device cpu')),
    (['analysis/plot_curves.py', 'no_run'], "argument runs: no such work dir or scalars.json file: 'no_run'"),
    (['analysis/demo_results.py', 'no_wd', '--seconds', '1', '2', '3', '4', '5', '--results-json', 'r.json'],
     "argument work_dir: no such folder: 'no_wd' (the work dir run_demo.sh wrote)"),
    (['results_tables.py', '--check', 'no.md'], "argument files: no such file: 'no.md'"),
])
def test_bad_arguments_are_one_usage_line_before_any_work(argv, message, tmp_path):
    """A missing or swapped config, a --cfg-options item without '=', an output under a file, a results file
    that is not .json, an export over its own source, a device this machine lacks, or an input folder / file
    that is not there: exit status 2 and one line naming the argument, before anything is built or written
    (the source checkpoint is untouched)."""
    cfg = osp.join(REPO, 'configs', 'demo', 'deit-demo_tla_1xb64-10e_fashion-mnist.py')
    (tmp_path / 'notes.txt').write_text('notes')
    torch.save({'state_dict': {}}, tmp_path / 'ck.pth')
    before = (tmp_path / 'ck.pth').read_bytes()
    args = [cfg if a == 'CFG' else a for a in argv[1:]]
    proc = subprocess.run([sys.executable, osp.join(TOOLS, argv[0]), *args], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    prog = {'convert_checkpoint.py': 'convert_checkpoint'}.get(argv[0], osp.basename(argv[0]))   # as each prints it
    want = message.replace('TMP', osp.realpath(tmp_path))
    assert proc.stderr.strip().splitlines()[-1] == f'{prog}: error: {want}'
    assert (tmp_path / 'ck.pth').read_bytes() == before and sorted(os.listdir(tmp_path)) == ['ck.pth', 'notes.txt']


@pytest.mark.parametrize('script,args,after', [('dist_train.sh', ['CFG', '--amp'], 'CONFIG'),
                                               ('dist_test.sh', ['CFG', 'ck.pth', '0'], 'CHECKPOINT')])
def test_dist_scripts_name_a_gpus_that_is_no_count(script, args, after):
    """GPUS forgotten (the next option in its place) or 0: exit status 2 and a line naming GPUS, before
    torchrun starts (it would fail on --nproc_per_node with its own traceback)."""
    cfg = osp.join(REPO, 'configs', 'demo', 'deit-demo_tla_1xb64-10e_fashion-mnist.py')
    proc = subprocess.run(['bash', osp.join(TOOLS, script), *[cfg if a == 'CFG' else a for a in args]], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines()[0] == (f'{script}: error: GPUS (the processes per node, after {after}) must be '
                                           f"a positive integer, got '{args[-1]}'")


@pytest.mark.parametrize('tool', ['train', 'test'])
def test_a_bad_checkpoint_stops_before_the_work_dir_is_touched(tool, tmp_path):
    """test.py CHECKPOINT / train.py --resume naming an empty file: exit status 1, one line naming it, and the
    work dir (here a training run's, with its config copy) is left as it was: nothing is built first."""
    cfg = osp.join(REPO, 'configs', 'demo', 'deit-demo_tla_1xb64-10e_fashion-mnist.py')
    work = tmp_path / 'work'
    work.mkdir()
    (work / osp.basename(cfg)).write_text('the training run\'s config copy')
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    args = [cfg, str(empty)] if tool == 'test' else [cfg, '--resume', str(empty)]
    proc = subprocess.run([sys.executable, osp.join(TOOLS, f'{tool}.py'), *args, '--work-dir', str(work)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f'{tool}.py: error: {empty}: empty (0 bytes): an interrupted save or download')
    assert os.listdir(work) == [osp.basename(cfg)]
    assert (work / osp.basename(cfg)).read_text() == "the training run's config copy"


@pytest.mark.parametrize('scope', ['mmseg', 'mmdet'])
@pytest.mark.parametrize('tool', ['train', 'test'])
def test_scope_dispatch(tool, scope, request, monkeypatch):
    """default_scope 'mmseg'/'mmdet' -> that codebase's register_all_modules(init_default_scope=False)."""
    mod = request.getfixturevalue(f'{tool}_tool')
    calls = []
    fake_pkg, fake_utils = types.ModuleType(scope), types.ModuleType(f'{scope}.utils')
    fake_utils.register_all_modules = lambda init_default_scope=True: calls.append((scope, init_default_scope))
    fake_pkg.utils = fake_utils
    monkeypatch.setitem(sys.modules, scope, fake_pkg)
    monkeypatch.setitem(sys.modules, f'{scope}.utils', fake_utils)
    from mmengine.config import Config
    assert mod.register_scope(Config(dict(default_scope=scope))) == scope
    assert calls == [(scope, False)]
    assert mod.register_scope(Config(dict(default_scope='tlalign_mm'))) == 'tlalign_mm'
    assert calls == [(scope, False)]


@pytest.mark.slow
def test_test_tool_options(test_tool, cfgs, tmp_path):
    tiny = cfgs['tiny']
    cfg = test_tool.setup_cfg(test_tool.parse_args([tiny, 'ck.pth', '--work-dir', str(tmp_path)]))
    assert cfg.load_from == 'ck.pth' and cfg.work_dir == str(tmp_path) and not cfg.resume

    with pytest.raises(RuntimeError, match='no visualization hook'):
        test_tool.setup_cfg(test_tool.parse_args([tiny, 'ck.pth', '--show-dir', 'vis']))
    cfg = test_tool.setup_cfg(test_tool.parse_args(
        [tiny, 'ck.pth', '--show-dir', 'vis', '--cfg-options', 'default_hooks.visualization.type=VisualizationHook']))
    assert cfg.default_hooks.visualization.draw is True and cfg.default_hooks.visualization.test_out_dir == 'vis'
    # mmseg: SegVisualizationHook has no test_out_dir; mmseg's test.py sets visualizer.save_dir
    seg = ['default_scope=mmseg', 'default_hooks.visualization.type=SegVisualizationHook']
    with pytest.raises(RuntimeError, match='no visualizer'):
        test_tool.setup_cfg(test_tool.parse_args([tiny, 'ck.pth', '--show-dir', 'vis', '--cfg-options', *seg]))
    cfg = test_tool.setup_cfg(test_tool.parse_args(
        [tiny, 'ck.pth', '--show-dir', 'vis', '--cfg-options', *seg, 'visualizer.type=SegLocalVisualizer']))
    assert cfg.default_hooks.visualization.draw is True and 'test_out_dir' not in cfg.default_hooks.visualization
    assert cfg.visualizer.save_dir == 'vis'

    with pytest.raises(ValueError, match='tta_model / tta_pipeline'):
        test_tool.setup_cfg(test_tool.parse_args([tiny, 'ck.pth', '--tta']))
    with pytest.raises(SystemExit, match='2'):      # a usage error at parsing, before any work
        test_tool.parse_args([tiny, 'ck.pth', '--out', 'results.json'])

    # --tta: model wrapped in tta_model, pipeline of the (wrapped) test dataset replaced
    tta_cfg = tmp_path / 'tta.py'
    tta_cfg.write_text(textwrap.dedent(f'''\
        _base_ = [{tiny!r}]
        test_dataloader = dict(dataset=dict(_delete_=True, type='RepeatDataset', times=2,
                                            dataset={{{{_base_.dataset}}}}))
        tta_model = dict(type='SomeTTAModel')
        tta_pipeline = [dict(type='TestTimeAug', transforms=[])]
        '''))
    cfg = test_tool.setup_cfg(test_tool.parse_args([str(tta_cfg), 'ck.pth', '--tta']))
    assert cfg.model.type == 'SomeTTAModel' and cfg.model.module.type == 'TLAImageClassifier'
    assert cfg.test_dataloader.dataset.dataset.pipeline == [dict(type='TestTimeAug', transforms=[])]


def test_shell_scripts_are_executable():
    for name in ('dist_train.sh', 'dist_test.sh', 'slurm_train.sh', 'slurm_test.sh'):
        path = osp.join(TOOLS, name)
        assert os.access(path, os.X_OK), f'{name} is not executable'
        subprocess.run(['bash', '-n', path], check=True)


# =========================================================================== slow, subprocesses
@pytest.fixture(scope='module')
def trained_tiny(cfgs, tmp_path_factory):
    """train.py on the tiny config (TL-Align with token CutMix), 2 epochs: (work dir, log)."""
    work = tmp_path_factory.mktemp('trained_tiny') / 'train'
    return work, _train(cfgs['tiny'], work)


@pytest.mark.slow
def test_train_then_test(cfgs, trained_tiny, tmp_path):
    """train.py writes per-epoch checkpoints; test.py on the last one reports accuracy/top1 equal to
    the last validation (same data, same weights) and dumps the predictions with --out."""
    work, log = trained_tiny
    assert (work / 'epoch_1.pth').is_file() and (work / 'epoch_2.pth').is_file()
    assert (work / 'last_checkpoint').read_text().strip().endswith('epoch_2.pth')
    assert 'Epoch(train) [2][4/4]' in log

    out_pkl = tmp_path / 'results.pkl'
    stdout = _run([sys.executable, osp.join(TOOLS, 'test.py'), cfgs['tiny'], str(work / 'epoch_2.pth'),
                   '--work-dir', str(tmp_path / 'test'), '--out', str(out_pkl)], tmp_path / 'test.log')
    metrics = _metrics(stdout)
    assert set(metrics) == {'accuracy/top1'}
    assert metrics['accuracy/top1'] == pytest.approx(_last_val_top1(log), abs=1e-3)
    import pickle
    with open(out_pkl, 'rb') as f:
        results = pickle.load(f)
    assert len(results) == 16 and all('pred_score' in r for r in results)


@pytest.mark.slow
def test_dist_test_two_processes(cfgs, trained_tiny, tmp_path):
    """dist_test.sh with 2 CPU processes (gloo, the config asks for nccl) reports the accuracy that
    the single-process validation of the same checkpoint logged."""
    work, log = trained_tiny
    stdout = _run(['bash', osp.join(TOOLS, 'dist_test.sh'), cfgs['tiny'], str(work / 'epoch_2.pth'), '2',
                   '--work-dir', str(tmp_path / 'dist_test'), '--cfg-options', 'env_cfg.dist_cfg.backend=nccl'],
                  tmp_path / 'dist_test.log', PORT=_free_port())
    if not torch.cuda.is_available():
        assert "env_cfg.dist_cfg.backend 'nccl' -> 'gloo' (distributed testing on CPU processes)" in stdout
    assert 'GPU number: 2' in stdout
    assert _metrics(stdout)['accuracy/top1'] == pytest.approx(_last_val_top1(log), abs=1e-3)


@pytest.fixture(scope='module')
def reference_run(cfgs, tmp_path_factory):
    """Uninterrupted single-process train.py, mixer off, 3 epochs, batch 4: the final state dict."""
    work = tmp_path_factory.mktemp('reference')
    _train(cfgs['nomix'], work)
    return _weights(work / 'epoch_3.pth')


@pytest.mark.slow
@pytest.mark.parametrize('nproc', [1, 2])
def test_dist_train_matches_single_process(nproc, cfgs, reference_run, tmp_path):
    """``dist_train.sh CFG N`` on CPU processes (gloo, set by train.py itself) with a batch of 4 // N
    per process trains the same weights as one process with batch 4.

    Why they should agree: with the mixer off (``mixer=None``: the mixing draw is per-process and its
    generator state is not shared) and no dropout / drop-path, the loss is the mean over the batch,
    so the gradient of one 4-sample mean equals the average of two 2-sample means, which is what DDP's
    all-reduce computes; ``DefaultSampler(shuffle=False)`` gives rank r the indices r, r + N, ... so
    each step's two half-batches together are the single process's batch.

    Tolerance: N=1 is the same computation (bit-identical).  For N=2 the float32 sums happen in a
    different order (~1e-7 relative); AdamW's step ``lr * m / (sqrt(v) + eps)`` is smooth in the
    gradient when ``|g| >> eps``, so over 12 steps of at most ``lr = 1e-3`` the weights differ by
    ~1e-8..1e-7 (observed max ~1e-7): atol 1e-5 leaves two orders of magnitude.  One exception is
    excluded: the key bias (the middle third of each ``qkv.bias``).  Softmax attention is invariant
    to it (``q.(k + b)`` shifts a query's logits by a constant), so its true gradient is 0 and what
    autograd returns is rounding noise, which Adam normalises into O(lr) steps -- the two runs'
    key biases wander by different noise (observed ~2e-5 after 12 steps).  The test checks that it
    is the only tensor slice beyond 1e-5, and that it stays within 12 * lr of the reference.
    """
    work = tmp_path / f'dist{nproc}'
    log = _run(['bash', osp.join(TOOLS, 'dist_train.sh'), cfgs['nomix'], str(nproc), '--work-dir', str(work),
                '--cfg-options', f'train_dataloader.batch_size={4 // nproc}', 'env_cfg.dist_cfg.backend=nccl'],
               str(work) + '.log', PORT=_free_port())
    if not torch.cuda.is_available():
        assert "env_cfg.dist_cfg.backend 'nccl' -> 'gloo' (distributed training on CPU processes)" in log
    assert 'Distributed training: True' in log and f'GPU number: {nproc}' in log  # mmengine's world size
    got = _weights(work / 'epoch_3.pth')
    assert got.keys() == reference_run.keys()
    if nproc == 1:
        for k in got:
            assert torch.equal(got[k], reference_run[k]), k
        return
    beyond = []
    for k, ref in reference_run.items():
        diff = (got[k] - ref).abs()
        if k.endswith('attn.qkv.bias'):
            c = ref.numel() // 3
            diff = torch.cat([diff[:c], diff[2 * c:]])  # drop the key bias (see docstring)
        if float(diff.max()) > 1e-5:
            beyond.append((k, float(diff.max())))
    assert not beyond, f'tensors differing by more than 1e-5: {beyond}'
    # the key bias did move (it is not that nothing trained) and stayed within a few lr of the reference
    for k in (k for k in got if k.endswith('attn.qkv.bias')):
        c = got[k].numel() // 3
        assert (got[k][c:2 * c] - reference_run[k][c:2 * c]).abs().max() < 12 * 1e-3


@pytest.mark.slow
def test_kill_and_auto_resume(cfgs, reference_run, tmp_path):
    """A real interruption: train.py (3 epochs) is SIGKILLed after its epoch-1 checkpoint, then
    ``train.py CFG --resume`` (auto: latest checkpoint in the work dir) finishes the run; the final
    weights equal those of the uninterrupted run exactly (CPU, deterministic, ``num_workers=0``).

    The mixer is off here (``mixer=None``): the data preprocessor's mixing generator state is not
    saved in the checkpoint, so with mixing on a resumed run draws different boxes than an
    uninterrupted one.  We wait for the ``last_checkpoint`` file to name ``epoch_1.pth`` (written
    after the checkpoint file is complete), not merely for ``epoch_1.pth`` to appear, so the kill
    cannot hit a half-written checkpoint.  The config has a slow validation (weights unaffected)
    so the kill lands while epochs 2-3 are still to run.
    """
    work = tmp_path / 'killed'
    cmd = [sys.executable, osp.join(TOOLS, 'train.py'), cfgs['slow_val'], '--work-dir', str(work)]
    with open(str(work) + '.first.log', 'w') as first_log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=first_log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        marker, deadline = work / 'last_checkpoint', time.time() + SUBPROCESS_TIMEOUT
        try:
            while time.time() < deadline and proc.poll() is None:
                if marker.is_file() and marker.read_text().strip().endswith('epoch_1.pth'):
                    break
                time.sleep(0.01)
            finished_early = proc.poll() is not None
            if not finished_early:
                os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    first = open(str(work) + '.first.log').read()
    assert not finished_early, f'the first run ended (rc {proc.returncode}) before it could be killed:\n{first[-3000:]}'
    assert proc.returncode == -signal.SIGKILL
    assert not (work / 'epoch_3.pth').exists(), 'killed too late: the run had already finished'
    epoch1_mtime = (work / 'epoch_1.pth').stat().st_mtime_ns

    log = _train(cfgs['slow_val'], work, '--resume')
    assert f'Load checkpoint from {work / "epoch_1.pth"}' in log   # the one last_checkpoint names
    assert re.search(r'resumed epoch: [12], iter: [48]', log), log[-3000:]
    assert 'Epoch(train) [1][' not in log and 'Epoch(train) [3][4/4]' in log
    assert (work / 'epoch_1.pth').stat().st_mtime_ns == epoch1_mtime  # epoch 1 was not redone

    got = _weights(work / 'epoch_3.pth')
    assert got.keys() == reference_run.keys()
    for k in got:
        assert torch.equal(got[k], reference_run[k]), f'{k}: max diff {(got[k] - reference_run[k]).abs().max()}'


def test_config_paths_named_in_tools_and_readme_exist(repo_root):
    """Every ``configs/....py`` path that a tool's help or a script's comment shows names a real file (a
    newcomer copies them; README and docs/ paths, brace patterns included, are tests/test_docs.py's)."""
    import glob
    import re
    files = glob.glob(os.path.join(repo_root, 'tools', '**', '*.py'), recursive=True)
    files += glob.glob(os.path.join(repo_root, 'tools', '*.sh'))
    named = set()
    for f in files:
        named |= set(re.findall(r'configs/[\w./-]+?\.py', open(f).read()))
    assert len(named) >= 8
    missing = sorted(p for p in named if '{' not in p and not os.path.exists(os.path.join(repo_root, p)))
    assert not missing, missing


def _import_launch(tools_dir):
    """stderr of ``import launch`` run the way a tool runs it: ``tools_dir`` first on sys.path, no
    PYTHONPATH (the installed tlalign_mm: this checkout, as tools/setup_env.sh installs it)."""
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    r = subprocess.run([sys.executable, '-c', 'import launch'], cwd=str(tools_dir), env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stderr


def test_tools_warn_when_the_package_is_another_checkouts(tmp_path):
    """The tools run over the installed package (no sys.path inserts); a second clone whose tools
    would run the first clone's package says so in one line that names both folders and the fix.
    Its own checkout's tools are silent."""
    import tlalign_mm
    from tlalign_mm.utils.checkout import checkout_mismatch, checkout_root
    installed = osp.dirname(osp.realpath(tlalign_mm.__file__))
    if osp.realpath(osp.join(REPO, 'tlalign_mm')) != installed:
        pytest.skip(f'the installed tlalign_mm is {installed}, not this checkout (run tools/setup_env.sh here)')
    assert 'warning' not in _import_launch(TOOLS)
    assert checkout_mismatch(osp.join(TOOLS, 'train.py')) is None

    clone = tmp_path.resolve() / 'second-clone'
    (clone / 'tlalign_mm').mkdir(parents=True)
    (clone / 'tlalign_mm' / '__init__.py').write_text('')
    (clone / 'tools').mkdir()
    for f in ('launch.py', 'config_checks.py'):
        shutil.copy(osp.join(TOOLS, f), clone / 'tools' / f)
    err = _import_launch(clone / 'tools').strip()
    assert err.count('\n') == 0, err
    assert err.startswith('warning: ') and installed in err and str(clone / 'tlalign_mm') in err, err
    assert f'pip install -e {clone}' in err and 'PYTHONPATH' in err
    assert checkout_root(str(clone / 'tools' / 'launch.py')) == str(clone)
    assert checkout_root('/') is None


def test_test_tiers_reads_pytest_summary():
    """tools/test_tiers.py counts what pytest's summary line says, and refuses an unfinished run."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('test_tiers_tool', os.path.join(REPO, 'tools', 'test_tiers.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = '....\n=== 1 failed, 640 passed, 3 skipped, 12 deselected in 287.41s (0:04:47) ===\n'
    assert mod.summary_counts(out) == {'failed': 1, 'passed': 640, 'skipped': 3, 'deselected': 12}
    assert mod.summary_counts('5 passed in 1.0s') == {'passed': 5}
    with pytest.raises(ValueError, match='no summary line'):
        mod.summary_counts('....\nKeyboardInterrupt\n')


def test_test_tiers_shows_a_failing_tier_whole(monkeypatch, capsys):
    """A tier that fails prints all of pytest's output (the traceback comes long before the summary); a tier
    that passes prints its tail only."""
    import importlib.util
    import subprocess as sp
    spec = importlib.util.spec_from_file_location('test_tiers_tool', os.path.join(REPO, 'tools', 'test_tiers.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = '=== FAILURES ===\nE   AssertionError: the traceback\n' + 'warning line\n' * 400 + '1 failed in 1.0s\n'
    for rc in (1, 0):
        monkeypatch.setattr(mod.subprocess, 'run', lambda *a, rc=rc, **k: sp.CompletedProcess(a, rc, text, ''))
        assert mod.run_tier(['-m', 'not slow'], None)[2] == rc
        shown = capsys.readouterr().out
        assert ('E   AssertionError: the traceback' in shown) == (rc == 1) and shown.endswith('1 failed in 1.0s\n')
