"""One clear line for a bad checkpoint file, on every path a user hands one to.

Kinds of bad file: missing, empty, truncated (a real checkpoint cut short: a zip without its central
directory), a text file (the 43-byte file that used to end in ``IndexError: pop from empty list``),
random bytes, a zip that is not a torch file, a truncated ``.safetensors`` file, and a pickle holding a
type ``weights_only`` loading refuses.  Paths: :func:`load_checkpoint_file` (our backbones'
``init_cfg``, the analysis builder, TokenMix's teacher), mmengine's ``CheckpointLoader`` once
:func:`register_checkpoint_loader` has run (``--resume``, ``load_from`` and ``init_cfg=Pretrained``
of any mmengine / mmseg / mmdet module), and the tools' command lines: ``tools/train.py --resume``,
``tools/train.py`` with ``load_from``, ``tools/test.py``, ``tools/convert_checkpoint.py`` and
``tools/analysis/token_fluctuation.py``.  Each message names the path and the kind, is one line, and
never suggests ``weights_only=False``.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch

from tlalign_mm.checkpoint.io import (
    CheckpointFileError,
    CheckpointNotFoundError,
    atomic_save,
    diagnose_checkpoint_file,
    load_checkpoint_file,
    register_checkpoint_loader,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CFG = os.path.join(REPO, 'configs', 'demo', 'deit-demo_tla_1xb64-10e_fashion-mnist.py')
#: the tool runs build the demo config's data loaders before they read the checkpoint
needs_demo_data = pytest.mark.skipif(not os.path.isdir(os.path.join(REPO, 'data', 'demo', 'fashion_mnist', 'train')),
                                     reason='demo data missing: run tools/prepare_demo_data.py --only cls')
TEXT_43 = b'this is not a checkpoint, only 43 bytes!!\n\n'[:43]


class Evil:
    def __reduce__(self):
        return (os.system, ('echo pwned',))


def _good(tmp_path) -> bytes:
    p = tmp_path / 'good.pth'
    torch.save({'state_dict': {'w': torch.randn(64, 64)}, 'meta': {'epoch': 1}}, p)
    return p.read_bytes()


def make_bad(tmp_path, kind: str):
    """(path, the phrase its message must hold) for one kind of bad file."""
    if kind == 'missing':
        return tmp_path / 'gone.pth', 'not found'
    p = tmp_path / f'{kind}.pth'
    if kind == 'empty':
        p.write_bytes(b'')
        return p, 'empty (0 bytes)'
    if kind == 'truncated':
        good = _good(tmp_path)
        p.write_bytes(good[: len(good) // 2])
        return p, 'truncated: a zip archive without its central directory'
    if kind == 'text':
        p.write_bytes(TEXT_43)
        return p, 'a text file, not a checkpoint'
    if kind == 'random':
        p.write_bytes(bytes(range(7, 250)) * 3)
        return p, 'neither a torch zip archive nor a pickle'
    if kind == 'foreign_zip':
        with zipfile.ZipFile(p, 'w') as z:
            z.writestr('readme.txt', 'hello')
        return p, 'not a torch checkpoint (it has no data.pkl)'
    if kind == 'safetensors':
        p = tmp_path / 'cut.safetensors'
        atomic_save({'w': torch.randn(128, 128)}, p)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        return p, 'truncated .safetensors file'
    if kind == 'refused':
        torch.save({'state_dict': {'w': torch.ones(1)}, 'x': Evil()}, p)
        return p, 'holds types that weights_only loading refuses'
    raise ValueError(kind)


KINDS = ['missing', 'empty', 'truncated', 'text', 'random', 'foreign_zip', 'safetensors', 'refused']


def _one_line(msg: str, path, says: str) -> None:
    assert str(path) in msg, msg
    assert says in msg, msg
    assert '\n' not in msg.strip(), msg
    assert 'weights_only=False' not in msg and 'weights_only` set to `False' not in msg, msg


@pytest.mark.parametrize('kind', KINDS)
def test_load_checkpoint_file_names_each_kind(tmp_path, kind):
    path, says = make_bad(tmp_path, kind)
    with pytest.raises(CheckpointFileError) as info:
        load_checkpoint_file(path)
    _one_line(str(info.value), path, says)
    if kind == 'missing':
        assert isinstance(info.value, (CheckpointNotFoundError, FileNotFoundError))
    else:
        assert diagnose_checkpoint_file(path) is not None or kind == 'refused'


@pytest.mark.parametrize('kind', KINDS)
def test_mmengine_loading_paths_name_each_kind(tmp_path, kind):
    """``Runner.resume`` / ``load_from`` / ``PretrainedInit`` all read through CheckpointLoader."""
    from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint
    register_checkpoint_loader()
    path, says = make_bad(tmp_path, kind)
    with pytest.raises(CheckpointFileError) as info:
        _load_checkpoint(str(path), map_location='cpu')
    _one_line(str(info.value), path, says)
    good = tmp_path / 'ok.pth'
    torch.save({'state_dict': {'w': torch.arange(3.)}}, good)
    assert torch.equal(CheckpointLoader.load_checkpoint(str(good))['state_dict']['w'], torch.arange(3.))


def test_pretrained_init_cfg_of_a_stock_module_names_the_file(tmp_path):
    from mmengine.model import BaseModule
    register_checkpoint_loader()
    path, says = make_bad(tmp_path, 'text')

    class M(BaseModule):
        def __init__(self):
            super().__init__(init_cfg=dict(type='Pretrained', checkpoint=str(path)))
            self.fc = torch.nn.Linear(2, 2)

    with pytest.raises(CheckpointFileError) as info:
        M().init_weights()
    _one_line(str(info.value), path, says)


def test_our_backbone_init_cfg_names_the_file(tmp_path):
    from tlalign_mm import TLAVisionTransformer
    path, says = make_bad(tmp_path, 'truncated')
    bb = TLAVisionTransformer(dict(embed_dims=32, num_layers=1, num_heads=2, feedforward_channels=64),
                              img_size=32, patch_size=8, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(CheckpointFileError) as info:
        bb.init_weights()
    _one_line(str(info.value), path, says)


def _tool(args, timeout=300):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _assert_tool_line(proc, path, says):
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert 'error:' in last
    _one_line(last, path, says)


@pytest.mark.slow
@needs_demo_data
@pytest.mark.parametrize('kind', ['text', 'truncated', 'empty'])
def test_train_resume_from_a_bad_file_is_one_line(tmp_path, kind):
    path, says = make_bad(tmp_path, kind)
    proc = _tool(['tools/train.py', DEMO_CFG, '--work-dir', str(tmp_path / 'wd'), '--resume', str(path)])
    _assert_tool_line(proc, path, says)


@pytest.mark.slow
@needs_demo_data
def test_train_load_from_a_bad_file_is_one_line(tmp_path):
    path, says = make_bad(tmp_path, 'random')
    proc = _tool(['tools/train.py', DEMO_CFG, '--work-dir', str(tmp_path / 'wd'),
                  '--cfg-options', f'load_from={path}'])
    _assert_tool_line(proc, path, says)


@pytest.mark.slow
@needs_demo_data
@pytest.mark.parametrize('kind', ['text', 'refused'])
def test_test_tool_with_a_bad_file_is_one_line(tmp_path, kind):
    path, says = make_bad(tmp_path, kind)
    proc = _tool(['tools/test.py', DEMO_CFG, str(path), '--work-dir', str(tmp_path / 'wd')])
    _assert_tool_line(proc, path, says)
    assert 'pwned' not in proc.stdout


@pytest.mark.parametrize('kind', ['text', 'truncated', 'missing'])
def test_convert_checkpoint_with_a_bad_file_is_one_line(tmp_path, kind):
    path, says = make_bad(tmp_path, kind)
    proc = _tool(['tools/convert_checkpoint.py', str(path), str(tmp_path / 'out.pth')])
    _assert_tool_line(proc, path, says)
    assert not (tmp_path / 'out.pth').exists()


def test_analysis_tool_with_a_bad_file_is_one_line(tmp_path):
    path, says = make_bad(tmp_path, 'text')
    proc = _tool(['tools/analysis/token_fluctuation.py', DEMO_CFG, str(path), '--num-batches', '1',
                  '--device', 'cpu', '--out-dir', str(tmp_path / 'out')])
    _assert_tool_line(proc, path, says)


def test_refused_pickle_runs_nothing(tmp_path, capfd):
    path, _ = make_bad(tmp_path, 'refused')
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint_file(path)
    assert 'pwned' not in capfd.readouterr().out


def test_safetensors_save_takes_shared_and_strided_tensors_and_refuses_the_rest(tmp_path):
    """``atomic_save`` to ``.safetensors``: tensors that share storage (tied weights, views) and strided ones
    (a transpose) are written as copies and read back equal, dtypes kept; a non-tensor value is a TypeError
    naming its key, and the file already there is left as it was."""
    from safetensors.torch import load_file
    w = torch.randn(6, 4)
    tied = {'embed.weight': w, 'head.weight': w, 'rows': w[2:4], 't': w.t(),
            'half': torch.ones(3, dtype=torch.bfloat16)}
    p = tmp_path / 'tied.safetensors'
    atomic_save(tied, p)
    back = load_file(str(p))
    assert set(back) == set(tied)
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in tied.items())
    before = p.read_bytes()
    with pytest.raises(TypeError, match="'step' is a int"):
        atomic_save({'w': w, 'step': 3}, p)
    assert p.read_bytes() == before and os.listdir(tmp_path) == ['tied.safetensors']
