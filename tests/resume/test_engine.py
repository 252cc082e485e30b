"""The cluster runtime's parts, one at a time (the runs through the tools are in tests/resume/test_cluster_*.py).

* the run config: which keys decide the weights, and the one phrase that names what changed;
* :class:`OptimizerParamNamesHook`: a PVT v1 run saved before ``stages[i]`` (flat names, the
  position embeddings and class token first, as the release's module order puts them) resumes its
  AdamW moments onto the right parameters; loaded by position instead, the next step fails on a shape
  mismatch (the failure it prevents);
* :class:`AtomicLocalBackend`: removals wait until the block that writes the new file has finished,
  and are dropped when it fails;
* :class:`WatchdogHook`, in a real process: a main thread that stops making progress is ended with
  status 124 and a report; a run that raised and is slow to exit (a collective whose peer the watchdog
  ended) exits with its own error, not a report naming itself;
* the random states: every CPU generator comes back, and CUDA states saved on another number of devices
  restore the devices both have, with a note for the log, instead of stopping a requeued job;
* the hooks' bad input: unknown signal names, a train loop that cannot resume, a zero timeout or
  interval; a resume position from a loader of another length, in both loops.
"""
from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmengine.logging import MMLogger
from mmengine.optim import build_optim_wrapper

import tlalign_mm  # noqa: F401
from tlalign_mm.engine import AtomicLocalBackend, PreemptionHook, WatchdogHook, run_config
from tlalign_mm.engine.hooks.optimizer_names import PARAM_NAMES_KEY, OptimizerParamNamesHook
from tlalign_mm.engine.hooks.random_states import capture_random_states, restore_random_states
from tlalign_mm.engine.run_config import config_changes, run_config_digest
from tlalign_mm.models import TLAPyramidVisionTransformer


# ------------------------------------------------------------------------------ run config
def test_run_config_names_what_changed():
    cfg = dict(model=dict(type='M', head=dict(num_classes=10)),
               train_dataloader=dict(batch_size=64, num_workers=8, dataset=dict(pipeline=[dict(type='A')])),
               optim_wrapper=dict(optimizer=dict(lr=1e-3)), train_cfg=dict(max_epochs=10, val_interval=2),
               default_hooks=dict(logger=dict(interval=10)), work_dir='a')
    leaves = run_config(cfg)
    assert leaves['train_dataloader.dataset.pipeline.0.type'] == "'A'"
    assert leaves['optim_wrapper.optimizer.lr'] == '0.001'
    assert not any(k.startswith(('default_hooks', 'work_dir')) for k in leaves)
    assert 'train_dataloader.num_workers' not in leaves and 'train_cfg.val_interval' not in leaves
    # how a run is carried out changes nothing; what it computes does
    same = dict(cfg, train_dataloader=dict(cfg['train_dataloader'], num_workers=2), work_dir='b',
                train_cfg=dict(max_epochs=10, val_interval=5))
    assert config_changes(leaves, run_config(same)) is None
    assert run_config_digest(leaves) == run_config_digest(dict(reversed(list(run_config(same).items()))))
    other = dict(cfg, train_cfg=dict(max_epochs=12), optim_wrapper=dict(optimizer=dict(lr=2e-3)))
    assert config_changes(leaves, run_config(other)) == ('optim_wrapper.optimizer.lr (0.001 in the checkpoint, 0.002 '
                                                         'now), train_cfg.max_epochs (10 in the checkpoint, 12 now)')
    assert run_config_digest(leaves) != run_config_digest(run_config(other))


# ------------------------------------------------------------------------------ optimizer state by name
ARCH = dict(embed_dims=(16, 32, 32, 64), depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4), version=1)


def _flat_name(key: str) -> str:
    """Ours -> the flat name (PVT release, and ours before the stages), written independently."""
    m = re.fullmatch(r'backbone\.stages\.(\d+)\.(patch_embed|pos_embed|blocks|norm)(\..*)?', key)
    if m is None:
        return key
    flat = {'patch_embed': 'patch_embed', 'pos_embed': 'pos_embed', 'blocks': 'block', 'norm': 'norm'}[m.group(2)]
    return f'backbone.{flat}{int(m.group(1)) + 1}{m.group(3) or ""}'


def _release_order(flat: str) -> tuple:
    """Where a flat v1 parameter sat in the former module (whai362/PVT ``classification/pvt.py``): a
    module's own parameters before its children's, so ``pos_embed1..4`` and ``cls_token`` first, then
    ``patch_embed{i}`` and ``block{i}`` stage by stage, then the final ``norm``."""
    name = flat[len('backbone.'):]
    if m := re.fullmatch(r'pos_embed(\d)', name):
        return 0, int(m.group(1))
    if name == 'cls_token':
        return 0, 5
    if m := re.match(r'(patch_embed|block)(\d)\.', name):
        return 1, int(m.group(2)), m.group(1) == 'block'
    return 2,


def _model(seed):
    torch.manual_seed(seed)
    model = torch.nn.Module()
    model.backbone = TLAPyramidVisionTransformer(ARCH, img_size=64, out_indices=(3,), out_type='cls_token')
    model.backbone.init_weights()
    return model


def _optim(model):
    return build_optim_wrapper(model, dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
                                           paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)})))


def _trained():
    model = _model(0)
    wrapper = _optim(model)
    for _ in range(2):
        out = model.backbone(torch.randn(2, 3, 64, 64))[0]
        wrapper.update_params(out.square().mean())
    return model, wrapper


def _former_checkpoint(model, wrapper) -> dict:
    """The checkpoint the former PVT v1 would have written: flat keys in the former module order and the
    optimizer state numbered in that order."""
    names = [n for n, _ in model.named_parameters()]
    flat = sorted((_flat_name(n) for n in names), key=lambda f: (_release_order(f), names.index(
        next(n for n in names if _flat_name(n) == f))))
    state_dict = {f: dict(model.named_parameters())[next(n for n in names if _flat_name(n) == f)].detach().clone()
                  for f in flat}
    current = wrapper.state_dict()
    was = {_flat_name(n): i for i, n in enumerate(names)}          # our index of each parameter
    state = {j: current['state'][was[f]] for j, f in enumerate(flat) if was[f] in current['state']}
    groups = [dict({k: v for k, v in current['param_groups'][was[f]].items() if k != 'params'}, params=[j])
              for j, f in enumerate(flat)]
    assert flat[:5] == ['backbone.pos_embed1', 'backbone.pos_embed2', 'backbone.pos_embed3', 'backbone.pos_embed4',
                        'backbone.cls_token'] and names[:2] == ['backbone.cls_token', 'backbone.stages.0.pos_embed']
    return dict(state_dict=state_dict, optimizer=dict(state=state, param_groups=groups), meta=dict(epoch=1))


def test_former_pvt_v1_optimizer_state_resumes_by_name():
    model, wrapper = _trained()
    ckpt = _former_checkpoint(model, wrapper)
    fresh = _model(1)
    fresh_wrapper = _optim(fresh)
    runner = SimpleNamespace(model=fresh, optim_wrapper=fresh_wrapper, logger=MMLogger.get_current_instance())
    OptimizerParamNamesHook().after_load_checkpoint(runner, ckpt)
    fresh_wrapper.load_state_dict(ckpt['optimizer'])
    by_name = dict(model.named_parameters())
    fresh_by_name = dict(fresh.named_parameters())
    for name in by_name:
        want = wrapper.optimizer.state[by_name[name]]
        got = fresh_wrapper.optimizer.state[fresh_by_name[name]]
        assert torch.equal(got['exp_avg'], want['exp_avg']) and torch.equal(got['exp_avg_sq'], want['exp_avg_sq'])
    for got, want in zip(fresh_wrapper.optimizer.param_groups, wrapper.optimizer.param_groups):
        assert got['weight_decay'] == want['weight_decay']                   # decay_mult follows its parameter
    fresh.load_state_dict({n: v for n, v in model.state_dict().items()})
    fresh_wrapper.update_params(fresh.backbone(torch.randn(2, 3, 64, 64))[0].square().mean())   # steps


def test_former_pvt_v1_optimizer_state_by_position_fails():
    """What the hook prevents: loaded by position, the moments land on parameters of other shapes."""
    model, wrapper = _trained()
    ckpt = _former_checkpoint(model, wrapper)
    fresh = _model(1)
    fresh_wrapper = _optim(fresh)
    fresh_wrapper.load_state_dict(ckpt['optimizer'])
    with pytest.raises(RuntimeError, match='size of tensor'):
        fresh_wrapper.update_params(fresh.backbone(torch.randn(2, 3, 64, 64))[0].square().mean())


def test_names_travel_in_the_checkpoint():
    model, wrapper = _trained()
    runner = SimpleNamespace(model=model, optim_wrapper=wrapper, logger=MMLogger.get_current_instance())
    ckpt = dict(optimizer=wrapper.state_dict())
    OptimizerParamNamesHook().before_save_checkpoint(runner, ckpt)
    assert ckpt[PARAM_NAMES_KEY] == [n for n, _ in model.named_parameters()]
    before = ckpt['optimizer']
    OptimizerParamNamesHook().after_load_checkpoint(runner, ckpt)             # same order: left alone
    assert ckpt['optimizer'] is before


# ------------------------------------------------------------------------------ deferred removals
def test_removals_wait_for_the_write(tmp_path):
    backend = AtomicLocalBackend()
    old, new = tmp_path / 'epoch_1.pth', tmp_path / 'epoch_2.pth'
    old.write_bytes(b'old')
    with backend.deferred_removals():
        backend.remove(str(old))
        assert old.exists()                           # still there while the new file is written
        with backend.deferred_removals():             # nested (a best checkpoint's re-save)
            backend.put(b'new', str(new))
        assert old.exists()
    assert not old.exists() and new.read_bytes() == b'new'
    old.write_bytes(b'old')
    with pytest.raises(OSError), backend.deferred_removals():
        backend.remove(str(old))
        raise OSError('disk full')
    assert old.exists()                               # the write failed: nothing removed
    backend.remove(str(old))
    assert not old.exists()


# ------------------------------------------------------------------------------ watchdog
WATCHDOG_RUN = '''
import atexit, sys, time
from types import SimpleNamespace
from tlalign_mm.engine import WatchdogHook
atexit.register(time.sleep, 3)               # a slow exit (data-loader workers, a broken process group)
hook = WatchdogHook(timeout=1, interval=0.1)
hook.before_run(SimpleNamespace())
hook.after_train_iter(SimpleNamespace(iter=6), 6)
if sys.argv[1] == 'raise':
    raise RuntimeError('Connection closed by peer')
time.sleep(3)                                # stuck in the run
'''


@pytest.mark.parametrize('how', ['stuck', 'raise'])
def test_watchdog_ends_a_stuck_rank_and_not_one_that_is_exiting(how):
    env = {k: v for k, v in os.environ.items() if k not in ('MASTER_ADDR', 'MASTER_PORT', 'WORLD_SIZE', 'RANK')}
    proc = subprocess.run([sys.executable, '-c', WATCHDOG_RUN, how], capture_output=True, text=True, timeout=60,
                          env=env)
    if how == 'stuck':
        assert proc.returncode == 124, proc.stderr
        assert re.search(r'WatchdogHook: rank 0 made no progress for 1 s \(timeout 1 s\) after train iteration 7; '
                         r'held up by rank 0 \(.*in <module>, not in a collective, last: train iteration 7, '
                         r'idle 1 s\); ending rank 0 with exit status 124', proc.stderr), proc.stderr
    else:
        assert proc.returncode == 1 and 'Connection closed by peer' in proc.stderr, proc.stderr
        assert 'WatchdogHook' not in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------ bad input
def test_hooks_refuse_bad_arguments():
    with pytest.raises(ValueError, match=r"signals must be among .*'SIGKILL'"):
        PreemptionHook(signals=('SIGTERM', 'SIGKILL'))
    with pytest.raises(ValueError, match='timeout must be > 0'):
        WatchdogHook(timeout=0)
    for interval in (0, -1.0):      # a check thread that never waits would spin on a core
        with pytest.raises(ValueError, match=f'interval must be > 0 seconds, got {interval}'):
            WatchdogHook(timeout=60, interval=interval)
    runner = SimpleNamespace(train_loop=object())
    with pytest.raises(TypeError, match="PreemptionHook needs a resumable train loop.*ResumableEpochBasedTrainLoop"):
        PreemptionHook().before_train(runner)


def _draws():
    return random.random(), float(np.random.rand()), torch.rand(3)


def test_every_cpu_generator_comes_back():
    states = capture_random_states()
    first = _draws()
    _draws()
    assert restore_random_states(states) is None
    again = _draws()
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


def test_cuda_states_of_another_device_count_restore_the_common_devices(monkeypatch):
    """Unit test with torch.cuda stubbed (no GPU here): saved on 2 devices, seen 1 -> device 0 restored
    from saved device 0 and a note; seen 2 -> both, no note."""
    saved = [torch.full((4,), 7, dtype=torch.uint8), torch.full((4,), 9, dtype=torch.uint8)]
    states = dict(capture_random_states(), cuda=saved)
    calls = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'set_rng_state', lambda state, device: calls.append((device, state)))
    for seen, want_note in ((1, True), (2, False), (3, True)):
        calls.clear()
        monkeypatch.setattr(torch.cuda, 'device_count', lambda n=seen: n)
        note = restore_random_states(states)
        assert [(d, s.tolist()) for d, s in calls] == [(i, saved[i].tolist()) for i in range(min(2, seen))]
        if want_note:
            assert note.startswith(f'the checkpoint holds CUDA random states for 2 devices, this process sees '
                                   f'{seen}: restored those of devices 0..{min(2, seen) - 1} only')
        else:
            assert note is None


@pytest.mark.parametrize('loop', ['epoch', 'iter'])
def test_a_position_from_a_loader_of_another_length_is_refused(loop):
    """A checkpoint that stopped after batch 5 of a 10-batch pass resumes on a loader of 10 batches per pass,
    and is refused (naming both lengths) on one of 12: the skipped batches would not be the trained ones.
    Both loops (the iteration loop said nothing before).  Unit test: the loop without its runner."""
    from mmengine.logging import MessageHub

    from tlalign_mm.engine import ResumableEpochBasedTrainLoop, ResumableIterBasedTrainLoop
    from tlalign_mm.engine.loops import _POSITION
    from tlalign_mm.engine.run_config import IncompatibleResumeError
    cls = ResumableEpochBasedTrainLoop if loop == 'epoch' else ResumableIterBasedTrainLoop
    hub = MessageHub.get_instance(f'test_position_{loop}')
    hub.update_info(_POSITION, [0, 5, 10])
    for n, ok in ((10, True), (12, False)):
        self = cls.__new__(cls)
        self._runner = SimpleNamespace(message_hub=hub, logger=MMLogger.get_current_instance())
        self.dataloader, self._epoch, self._iter = [None] * n, 0, 5
        if ok:
            assert self._resume_position() == (0, 5)
        else:
            where = 'epoch 1' if loop == 'epoch' else 'sampler pass 1'
            with pytest.raises(IncompatibleResumeError, match=f'stopped after batch 5 of 10 in {where}, but this '
                                                              'run has 12 batches per pass'):
                self._resume_position()
