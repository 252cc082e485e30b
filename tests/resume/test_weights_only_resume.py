"""Resuming an mmengine 0.10.7 run under torch >= 2.6 (``weights_only=True`` by default).

What: a real mmengine ``Runner`` (CPU, tiny deterministic regressor, synthetic data, ``CheckpointHook``
every epoch, ``LoggerHook``, SGD-with-momentum optimizer wrapper, ``MultiStepLR``) writes checkpoints
whose ``meta`` holds the MessageHub's ``HistoryBuffer`` logs (numpy arrays) and numpy scalars.

Why: mmengine calls ``torch.load`` without ``weights_only``; on torch >= 2.6 that refuses these
checkpoints, so ``Runner(resume=True, load_from=...)`` dies with ``UnpicklingError``.
:func:`tlalign_mm.checkpoint.register_checkpoint_loader` (what ``tools/train.py`` and ``tools/test.py``
call; ``import tlalign_mm`` registers nothing) routes mmengine's local loads through our loader, which
hands just the needed types (:func:`tlalign_mm.checkpoint.io.mmengine_safe_globals`) to each load, never
process-wide.  The tests show (a) the failure is real without it (checked in a fresh subprocess, so no
registration leaks in), (b) with it, resuming from epoch 1 and training to epoch 3 reproduces an
uninterrupted 3-epoch run bit for bit, with torch's process-wide allow-list untouched, and (c) the
allow-list does not open the door to arbitrary pickles.

``tlalign_mm`` is imported lazily inside the tests: a subprocess imports this module to build the
same Runner and must not trigger any registration.
"""
from __future__ import annotations

import io
import os
import pickle
import random
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

pytest.importorskip('mmengine')
from mmengine.logging import HistoryBuffer  # noqa: E402
from mmengine.model import BaseModel  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

TORCH_LOADS_WEIGHTS_ONLY_BY_DEFAULT = tuple(int(x) for x in torch.__version__.split('.')[:2]) >= (2, 6)
needs_torch26 = pytest.mark.skipif(not TORCH_LOADS_WEIGHTS_ONLY_BY_DEFAULT,
                                   reason='torch < 2.6 does not load with weights_only=True by default')

MAX_EPOCHS = 3
_RUN_ID = [0]


# --------------------------------------------------------------------------- tiny deterministic run
class _TinyRegressor(BaseModel):
    """4 -> 8 -> 1 MLP; ``mode='loss'`` returns the MSE (what mmengine's train loop wants)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, inputs, targets=None, mode='tensor'):
        out = self.net(inputs)
        if mode == 'loss':
            return dict(loss=((out - targets) ** 2).mean())
        return out


class _SyntheticRegression(Dataset):
    """32 fixed samples of y = x @ w + 0.1 (generator-seeded, independent of the global RNG)."""

    def __init__(self, n=32):
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return dict(inputs=self.x[i], targets=self.y[i])


def _build_runner(work_dir, resume=False, load_from=None, max_epochs=MAX_EPOCHS):
    """A CPU Runner that checkpoints every epoch; shuffled sampler so resume must restore the epoch."""
    _RUN_ID[0] += 1
    return Runner(
        model=_TinyRegressor(),
        work_dir=str(work_dir),
        experiment_name=f'tlalign_resume_{os.getpid()}_{_RUN_ID[0]}',
        train_dataloader=dict(dataset=_SyntheticRegression(), sampler=dict(type='DefaultSampler', shuffle=True),
                              batch_size=8, num_workers=0, collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.02, momentum=0.9)),
        param_scheduler=dict(type='MultiStepLR', milestones=[2], gamma=0.5, by_epoch=True),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1),
                           logger=dict(type='LoggerHook', interval=1)),
        randomness=dict(seed=0, deterministic=True),
        default_scope='mmengine',
        log_level='WARNING',
        resume=resume,
        load_from=None if load_from is None else str(load_from),
    )


def _weights(runner):
    return {k: v.detach().clone() for k, v in runner.model.state_dict().items()}


@pytest.fixture(scope='module', autouse=True)
def _restore_global_state():
    """The Runner reseeds every RNG and flips cuDNN flags: give them back to the other tests."""
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    yield
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.set_rng_state(states[2])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = states[3:]


@pytest.fixture(scope='module')
def full_run(tmp_path_factory):
    """Uninterrupted 3-epoch run: its per-epoch checkpoints, final weights and loss log."""
    work_dir = tmp_path_factory.mktemp('full_run')
    runner = _build_runner(work_dir)
    runner.train()
    loss_log = runner.message_hub.get_scalar('train/loss').data[0].copy()
    return dict(work_dir=work_dir, ckpt1=work_dir / 'epoch_1.pth', weights=_weights(runner), loss_log=loss_log)


# --------------------------------------------------------------------------- the checkpoint is the real thing
def test_checkpoint_meta_holds_history_buffer_and_numpy(full_run):
    """The saved file needs exactly the globals the fix is about (no loading involved)."""
    # list against torch's own allow-list only: another test module may have imported tlalign_mm
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(full_run['ckpt1'])))
    finally:
        torch.serialization.add_safe_globals(saved)
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in unsafe
    assert any(g.endswith('multiarray._reconstruct') for g in unsafe)
    assert 'numpy.ndarray' in unsafe and 'numpy.dtype' in unsafe


# --------------------------------------------------------------------------- (a) without the fix it fails
_NO_FIX_SCRIPT = textwrap.dedent('''
    import pickle, sys
    import torch
    sys.path.insert(0, {tests_dir!r})
    import test_weights_only_resume as T
    assert 'tlalign_mm' not in sys.modules, 'nothing may register safe globals here'
    # torch registers some of its own types; none of ours (numpy / mmengine / getattr) may be there yet
    for g in torch.serialization.get_safe_globals():
        f = g[0] if isinstance(g, tuple) else g
        assert not getattr(f, '__module__', '').startswith(('numpy', 'mmengine', 'tlalign_mm')), g
        assert f is not getattr and not (isinstance(g, tuple) and g[1] == 'builtins.getattr'), g
    try:
        torch.load({ckpt!r}, weights_only=True)
    except pickle.UnpicklingError as e:
        print('TORCH_LOAD_REFUSED:', 'HistoryBuffer' in str(e))
    runner = T._build_runner({work_dir!r}, resume=True, load_from={ckpt!r})
    try:
        runner.train()
    except pickle.UnpicklingError as e:
        print('RESUME_REFUSED:', type(e).__name__)
        sys.exit(0)
    print('RESUME_SUCCEEDED')
    sys.exit(1)
''')


@pytest.mark.slow
@needs_torch26
def test_resume_fails_without_registration(full_run, tmp_path):
    """In a fresh interpreter with no safe globals, Runner resume dies with UnpicklingError."""
    script = _NO_FIX_SCRIPT.format(tests_dir=os.path.dirname(os.path.abspath(__file__)),
                                   ckpt=str(full_run['ckpt1']), work_dir=str(tmp_path / 'no_fix'))
    env = dict(os.environ, OMP_NUM_THREADS='2')
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=env, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert 'TORCH_LOAD_REFUSED: True' in proc.stdout, out[-3000:]
    assert 'RESUME_REFUSED: UnpicklingError' in proc.stdout, out[-3000:]


# --------------------------------------------------------------------------- (b) with it, resume is exact
@pytest.mark.slow
def test_resume_with_registration_matches_uninterrupted(full_run, tmp_path):
    """Resume from epoch 1 -> train to epoch 3 == the uninterrupted 3-epoch run, bit for bit; nothing is
    added to torch's process-wide allow-list."""
    from tlalign_mm.checkpoint import load_checkpoint_file, register_checkpoint_loader

    register_checkpoint_loader()
    process_wide = set(torch.serialization.get_safe_globals())
    runner = _build_runner(tmp_path / 'resumed', resume=True, load_from=full_run['ckpt1'])
    runner.train()
    assert set(torch.serialization.get_safe_globals()) == process_wide

    assert runner.epoch == MAX_EPOCHS
    resumed = _weights(runner)
    assert resumed.keys() == full_run['weights'].keys()
    for k, ref in full_run['weights'].items():
        assert torch.equal(resumed[k], ref), f'{k} differs after resume'
    # the HistoryBuffer from the checkpoint's meta came back and was continued
    buf = runner.message_hub.get_scalar('train/loss')
    assert isinstance(buf, HistoryBuffer)
    np.testing.assert_array_equal(buf.data[0], full_run['loss_log'])
    # and the weights really changed after epoch 1 (resume did train, not just reload epoch 3)
    ckpt1 = load_checkpoint_file(str(full_run['ckpt1']))    # weights_only, the allow-list for this load only
    assert not all(torch.equal(ckpt1['state_dict'][k], v) for k, v in resumed.items())


def test_mmengine_loader_and_numpy1_checkpoint(full_run, tmp_path):
    """mmengine's own loader works, and a checkpoint written under numpy 1 (``numpy.core...``) loads too."""
    from mmengine.runner.checkpoint import _load_checkpoint

    from tlalign_mm.checkpoint import register_checkpoint_loader

    register_checkpoint_loader()
    ckpt = _load_checkpoint(str(full_run['ckpt1']), map_location='cpu')
    assert isinstance(ckpt['message_hub']['log_scalars']['train/loss'], HistoryBuffer)
    assert isinstance(ckpt['message_hub']['runtime_info']['eta'], np.generic)

    # rewrite the pickle's numpy-2 module path to the numpy-1 one (GLOBAL is a text line: no offsets move)
    np1 = tmp_path / 'numpy1_style.pth'
    zin = zipfile.ZipFile(full_run['ckpt1'])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w', zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name.endswith('/data.pkl'):
                data = data.replace(b'numpy._core.multiarray', b'numpy.core.multiarray')
                assert b'numpy.core.multiarray' in data
            zout.writestr(name, data)
    np1.write_bytes(buf.getvalue())
    old = _load_checkpoint(str(np1), map_location='cpu')
    np.testing.assert_array_equal(old['message_hub']['log_scalars']['train/loss'].data[0],
                                  ckpt['message_hub']['log_scalars']['train/loss'].data[0])


# --------------------------------------------------------------------------- (c) nothing else got through
class _OsSystem:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


class _Eval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


class _NotAllowListed:
    def __init__(self):
        self.payload = [1, 2, 3]


class _GetattrReduce:
    """Pickles as ``getattr(obj, name)`` -- the opcode HistoryBuffer needs, aimed elsewhere."""

    def __init__(self, obj, name):
        self.obj, self.name = obj, name

    def __reduce__(self):
        return getattr, (self.obj, self.name)


def _torch_load_bytes(obj):
    """``torch.load(weights_only=True)`` with the allow-list our loads hand to torch."""
    from tlalign_mm.checkpoint.io import mmengine_safe_globals
    buf = io.BytesIO()
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': obj}, buf)
    buf.seek(0)
    with torch.serialization.safe_globals(mmengine_safe_globals()):
        return torch.load(buf, weights_only=True)


@pytest.mark.parametrize('make_payload', [
    pytest.param(lambda m: _OsSystem(m), id='os.system'),
    pytest.param(lambda m: _Eval(m), id='builtins.eval'),
    pytest.param(lambda m: _NotAllowListed(), id='custom-class'),
    pytest.param(lambda m: _GetattrReduce(getattr, '__self__'), id='getattr-to-builtins-module'),
    pytest.param(lambda m: _GetattrReduce(HistoryBuffer, '__init__'), id='getattr-dunder-on-HistoryBuffer'),
    pytest.param(lambda m: _GetattrReduce(np.ndarray, 'tofile'), id='getattr-on-ndarray'),
    pytest.param(lambda m: np.array([1, 'a'], dtype=object), id='numpy-object-array'),
])
def test_allow_list_keeps_other_pickles_refused(make_payload, tmp_path):
    """With the allow-list in effect, a pickle with anything outside it still raises, and runs nothing."""
    marker = tmp_path / 'pwned'
    with pytest.raises(pickle.UnpicklingError):
        _torch_load_bytes(make_payload(marker))
    assert not marker.exists()


def test_allow_list_is_stable_and_narrow():
    """Same list every call, nothing registered process-wide, and neither the real ``getattr`` nor eval/exec
    is allow-listed."""
    from tlalign_mm.checkpoint.io import mmengine_safe_globals

    n = len(torch.serialization.get_safe_globals())
    first = mmengine_safe_globals()
    assert mmengine_safe_globals() == first
    assert len(torch.serialization.get_safe_globals()) == n
    # (object, 'module.name') entries stand in for that name: check the objects themselves, and that the
    # stand-ins for builtins.getattr / builtins.bytes are ours, never the real ones
    registered = [e[0] if isinstance(e, tuple) else e for e in first]
    for dangerous in (getattr, eval, exec, os.system, setattr, __import__, open, bytes):
        assert dangerous not in registered
    assert type(np.dtype(object)) not in registered
    named = {e[1]: e[0] for e in first if isinstance(e, tuple)}
    assert {named['builtins.getattr'].__module__, named['builtins.bytes'].__module__} == {'tlalign_mm.checkpoint.io'}
    # the restricted getattr still serves what HistoryBuffer pickles
    assert _torch_load_bytes(_GetattrReduce(HistoryBuffer, 'mean'))['meta'] is HistoryBuffer.mean
