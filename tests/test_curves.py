"""tools/analysis/curves.py and plot_curves.py on mmengine-format scalars files.

The fabricated files follow what mmengine 0.10's LoggerHook writes through LocalVisBackend (one
JSON object per line; training rows carry lr / base_lr and the global iteration as ``step``,
epoch-based loops add ``epoch``; validation rows carry the metrics and no lr).  One check reads a
file written by a real mmengine Runner visualizer to pin that format.
"""
from __future__ import annotations

import json
import os
import os.path as osp
import subprocess
import sys

import pytest
from curves import find_scalars, loss_keys, metric_keys, plot_curves, read_scalars  # tools/analysis/curves.py

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(REPO, 'tools', 'analysis', 'plot_curves.py')


def write_run(root, timestamp, rows):
    d = osp.join(root, timestamp, 'vis_data')
    os.makedirs(d, exist_ok=True)
    path = osp.join(d, 'scalars.json')
    with open(path, 'w') as f:
        for r in rows:
            f.write(json.dumps(r) + '\n')
    return path


EPOCH_ROWS = [
    {'base_lr': 1e-3, 'lr': 1e-3, 'loss': 2.3, 'grad_norm': 1.0, 'epoch': 1, 'iter': 10, 'step': 10},
    {'base_lr': 1e-3, 'lr': 1e-3, 'loss': 2.1, 'grad_norm': 1.0, 'epoch': 1, 'iter': 20, 'step': 20},
    {'accuracy/top1': 30.0, 'accuracy/top5': 80.0, 'data_time': 0.1, 'time': 0.4, 'step': 1},
    {'base_lr': 1e-3, 'lr': 1e-3, 'loss': float('nan'), 'epoch': 2, 'iter': 30, 'step': 30},
    {'base_lr': 1e-3, 'lr': 1e-3, 'loss': 1.9, 'epoch': 2, 'iter': 40, 'step': 40},
    {'accuracy/top1': 41.5, 'accuracy/top5': 90.0, 'data_time': 0.1, 'time': 0.4, 'step': 2},
]
ITER_ROWS = [
    {'base_lr': 2e-4, 'lr': 2e-4, 'loss': 4.0, 'decode.loss_ce': 2.9, 'aux.loss_ce': 1.1, 'decode.acc_seg': 5.0,
     'iter': 20, 'step': 20},
    {'base_lr': 2e-4, 'lr': 2e-4, 'loss': 3.0, 'decode.loss_ce': 2.2, 'aux.loss_ce': 0.8, 'decode.acc_seg': 40.0,
     'iter': 40, 'step': 40},
    {'aAcc': 60.0, 'mIoU': 19.0, 'mAcc': 37.0, 'step': 40},
]


def test_read_scalars_splits_train_and_val_rows(tmp_path):
    run = read_scalars(write_run(str(tmp_path), '20260101_000000', EPOCH_ROWS))
    assert len(run.train) == 4 and len(run.val) == 2
    assert run.val_unit == 'epoch'
    assert run.series('loss') == ([10, 20, 40], [2.3, 2.1, 1.9])  # the NaN row is skipped
    assert run.series('accuracy/top1', 'val') == ([1, 2], [30.0, 41.5])
    assert loss_keys(run) == ['loss']
    assert metric_keys(run) == ['accuracy/top1', 'accuracy/top5']


def test_iteration_based_run_and_loss_key_order(tmp_path):
    run = read_scalars(write_run(str(tmp_path), '20260101_000000', ITER_ROWS))
    assert run.val_unit == 'iter'
    assert loss_keys(run) == ['loss', 'aux.loss_ce', 'decode.loss_ce']  # acc_seg is not a loss
    assert metric_keys(run) == ['mIoU', 'mAcc', 'aAcc']
    assert metric_keys(run, ['mIoU', 'coco/bbox_mAP']) == ['mIoU']


def test_find_scalars_takes_the_newest_timestamp(tmp_path):
    old = write_run(str(tmp_path), '20260101_000000', EPOCH_ROWS)
    new = write_run(str(tmp_path), '20260102_000000', ITER_ROWS)
    os.utime(old, (1, 1))
    assert find_scalars(str(tmp_path)) == new
    assert find_scalars(old) == old


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='LocalVisBackend'):
        read_scalars(str(tmp_path))
    bad = write_run(str(tmp_path), 'x', [])
    with open(bad, 'w') as f:
        f.write('{"loss": 1.0}\n')
    with pytest.raises(ValueError, match=r'scalars.json:1: no "step"'):
        read_scalars(bad)
    with open(bad, 'w') as f:
        f.write('not json\n')
    with pytest.raises(ValueError, match=r'scalars.json:1: not a JSON line'):
        read_scalars(bad)
    run = read_scalars(write_run(str(tmp_path), 'y', ITER_ROWS))
    with pytest.raises(ValueError, match='2 titles for 1 runs'):
        plot_curves([run], str(tmp_path / 'c.png'), titles=['a', 'b'])


def test_real_mmengine_visualizer_file_is_read(tmp_path):
    """A scalars.json written by mmengine's own Visualizer + LocalVisBackend (the format we parse)."""
    from mmengine.visualization import LocalVisBackend, Visualizer
    vis = Visualizer(name='curves_test', vis_backends=[dict(type='LocalVisBackend')],
                     save_dir=str(tmp_path / '20260101_000000'))
    assert isinstance(vis._vis_backends['LocalVisBackend'], LocalVisBackend)
    vis.add_scalars({'lr': 1e-3, 'loss': 2.0, 'epoch': 1, 'iter': 5}, step=5)
    vis.add_scalars({'accuracy/top1': 12.5}, step=1)
    run = read_scalars(str(tmp_path))
    assert run.series('loss') == ([5], [2.0]) and run.series('accuracy/top1', 'val') == ([1], [12.5])


def test_plot_curves_cli(tmp_path):
    a = str(tmp_path / 'pretrain')
    b = str(tmp_path / 'upernet')
    write_run(a, '20260101_000000', EPOCH_ROWS)
    write_run(b, '20260101_000000', ITER_ROWS)
    out = str(tmp_path / 'pics' / 'curves.png')
    r = subprocess.run([sys.executable, TOOL, a, b, '--out', out, '--titles', 'pre', 'seg'],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert 'loss 1.9, accuracy/top1 41.5' in r.stdout and 'loss 3, mIoU 19' in r.stdout
    with open(out, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    assert os.path.getsize(out) > 10_000
