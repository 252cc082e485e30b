"""UperNet and Cascade Mask R-CNN as a cluster runs them: stopped and resumed equals uninterrupted; a kill
inside a slowed save with ``max_keep_ckpts=1`` resumes to the same weights (the runs and the comparison:
``tests/resume/cluster_runs.py``).
"""
from __future__ import annotations

import os
import re
import signal

import pytest
from cluster_runs import (
    CLUSTER_MARKS,
    DATA,
    DEMO,
    assert_same_run,
    check_interrupted,
    finish,
    launch_logs,
    ok,
    run,
    run_env,
    start,
    train_cmd,
    wait_until,
)

from tlalign_mm.checkpoint.io import diagnose_checkpoint_file

pytest_plugins = ['cluster_runs']       # the fixtures cfgs, reference, reference2
pytestmark = CLUSTER_MARKS



# ------------------------------------------------------------------------------ downstream
SEG = f'''
_base_ = [{os.path.join(DEMO, 'upernet_swin-demo_fmnist-tla-pre_1xb4-400i_voc-seg-256x256.py')!r}]
custom_imports = dict(imports=['tlalign_mm.models', 'cluster_helper'], allow_failed_imports=False)
crop_size = (128, 128)
model = dict(data_preprocessor=dict(size=crop_size), backbone=dict(init_cfg=None))
_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=False),
             dict(type='RandomResize', scale=(256, 128), ratio_range=(0.75, 1.5), keep_ratio=True),
             dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75), dict(type='RandomFlip', prob=0.5),
             dict(type='PhotoMetricDistortion'), dict(type='PackSegInputs')]
_test = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(256, 128), keep_ratio=True),
         dict(type='LoadAnnotations', reduce_zero_label=False), dict(type='PackSegInputs')]
train_dataloader = dict(dataset=dict(data_root={os.path.join(DATA, 'voc_seg')!r}, pipeline=_pipeline))
val_dataloader = dict(dataset=dict(data_root={os.path.join(DATA, 'voc_seg')!r}, pipeline=_test))
test_dataloader = val_dataloader
param_scheduler = [dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=2),
                   dict(type='PolyLR', eta_min=0.0, power=1.0, begin=2, end=8, by_epoch=False)]
train_cfg = dict(max_iters=8, val_interval=8)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=4, max_keep_ckpts=1))
'''

DET = f'''
_base_ = [{os.path.join(DEMO, 'cascade-mask-rcnn_swin-demo_fmnist-tla-pre_fpn_1xb2-10e_coco-voc.py')!r}]
custom_imports = dict(imports=['tlalign_mm.models', 'cluster_helper'], allow_failed_imports=False)
data_root = {os.path.join(DATA, 'coco_voc') + os.sep!r}
img_scale = (256, 160)
model = dict(backbone=dict(init_cfg=None))
_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
             dict(type='RandomFlip', prob=0.5), dict(type='RandomResize', scale=img_scale, ratio_range=(0.8, 1.2),
             keep_ratio=True), dict(type='PackDetInputs')]
train_dataloader = dict(dataset=dict(times=2, dataset=dict(data_root=data_root, pipeline=_pipeline)))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=3, val_interval=3)
param_scheduler = [dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=3)]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, max_keep_ckpts=1))
'''


@pytest.mark.mm
@pytest.mark.parametrize('task', ['upernet', 'cascade'])
def test_downstream_stop_kill_and_resume(cfgs, tmp_path, task):
    """UperNet (iteration loop, InfiniteSampler, a checkpoint every 4 iterations) and Cascade Mask R-CNN
    (epoch loop, AspectRatioBatchSampler over a RepeatDataset, 3 iterations per epoch), one checkpoint
    kept: SIGTERM after iteration 2, the same command (its fsyncs slowed) SIGKILLed inside the next
    checkpoint's save, the same command again: the uninterrupted run's weights and losses."""
    cfg = tmp_path / f'{task}.py'
    cfg.write_text(SEG if task == 'upernet' else DET)
    final, saving = ('iter_8.pth', '.iter_8.pth.') if task == 'upernet' else ('epoch_3.pth', '.epoch_2.pth.')
    iterations = (re.compile(r'Iter\(train\)\s+\[\s*(\d+)/') if task == 'upernet'
                  else re.compile(r'Epoch\(train\)\s+\[(\d+)\]\[\s*(\d+)/'))

    def done(wd):
        logs = launch_logs(wd)
        found = iterations.findall(logs[-1]) if logs else []
        if not found:
            return 0
        return int(found[-1]) if task == 'upernet' else (int(found[-1][0]) - 1) * 3 + int(found[-1][1])

    env = run_env(cfgs)
    ref, wd = tmp_path / 'ref', tmp_path / 'wd'
    ok(run(train_cmd(cfgs, cfg, ref), env))
    cmd = train_cmd(cfgs, cfg, wd, '--resume')
    proc = start(cmd, env)
    wait_until(lambda: done(wd) >= 2, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    rc, out = finish(proc)
    assert rc == 75, out[-3000:]
    check_interrupted(wd, out)
    proc = start(cmd, run_env(cfgs, TLA_TEST_SLOW_FSYNC='1.5'))
    wait_until(lambda: any(n.startswith(saving) for n in os.listdir(wd)), proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    pointer = open(wd / 'last_checkpoint').read()
    assert os.path.isfile(pointer) and diagnose_checkpoint_file(pointer) is None      # a resumable set
    ok(run(cmd, env))
    assert_same_run(ref, wd, final=final, min_iters=8)
