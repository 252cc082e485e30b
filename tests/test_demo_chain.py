"""README command one, shortened: ``bash tools/run_demo.sh --quick`` end to end on the real demo data.

The same script, configs and tools as the full demo (set-up skipped: CI has just run it):
TL-Align pretraining of the demo Swin on Fashion-MNIST -> backbone export -> UperNet on the VOC
demo masks -> Cascade Mask R-CNN on the VOC demo polygons -> evaluation of each stage with
``tools/test.py`` -> pictures.  Schedules are cut to about 20 iterations a stage, so the metrics
are real but low; what is asserted is that every stage ran from the exported backbone, that each
evaluation printed its metrics, and that the pictures were written.  About 2-4 minutes on 2 cores.
"""
from __future__ import annotations

import ast
import glob
import os
import os.path as osp
import re
import subprocess

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DATA = osp.join(REPO, 'data', 'demo')
needs_data = pytest.mark.skipif(
    not all(osp.isdir(osp.join(DATA, d)) for d in ('fashion_mnist', 'voc_seg', 'coco_voc')),
    reason='demo data missing: run tools/prepare_demo_data.py')


def _metrics(path: str) -> dict:
    with open(path) as f:
        lines = [ln for ln in f if ln.startswith('metrics: ')]
    assert lines, f'{path} has no "metrics:" line'
    return ast.literal_eval(lines[-1][len('metrics: '):])


@pytest.mark.slow
@pytest.mark.mm
@needs_data
def test_run_demo_quick_chain(tmp_path):
    wd = str(tmp_path / 'demo')
    env = dict(os.environ, WORK_DIR=wd, SKIP_SETUP='1', PORT='29517')
    r = subprocess.run(['bash', osp.join(REPO, 'tools', 'run_demo.sh'), '--quick'], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=1800)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    for n in range(1, 8):
        assert f'] {n}/7 ' in out, f'step {n}/7 missing from the progress output'

    backbone = osp.join(wd, 'pretrain', 'backbone.pth')
    assert osp.isfile(backbone)
    # both downstream trainings initialised their backbone from the export, by path
    for stage in ('upernet', 'cascade'):
        logs = glob.glob(osp.join(wd, stage, '2*', '2*.log'))
        text = ''.join(open(p).read() for p in logs)
        assert re.search(r"TLASwinTransformer: loaded \d+/\d+ parameter tensors .* from '"
                         + re.escape(backbone) + "'", text), f'{stage} did not load {backbone}'

    top = _metrics(osp.join(wd, 'pretrain', 'test.txt'))
    assert 0.0 <= top['accuracy/top1'] <= 100.0 and top['accuracy/top5'] >= top['accuracy/top1']
    seg = _metrics(osp.join(wd, 'upernet', 'test.txt'))
    assert 0.0 <= seg['mIoU'] <= 100.0 and 0.0 < seg['aAcc'] <= 100.0
    det = _metrics(osp.join(wd, 'cascade', 'test.txt'))
    for k in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'):
        assert 0.0 <= det[k] <= 1.0, (k, det)

    pics = osp.join(wd, 'pictures')
    assert osp.getsize(osp.join(pics, 'curves.png')) > 10_000
    seg_pngs = glob.glob(osp.join(pics, 'upernet', '**', '*.png'), recursive=True)
    det_pngs = glob.glob(osp.join(pics, 'cascade', '**', '*.jpg'), recursive=True) + \
        glob.glob(osp.join(pics, 'cascade', '**', '*.png'), recursive=True)
    assert len(seg_pngs) == 8, seg_pngs  # one painted picture per val image
    assert len(det_pngs) == 3, det_pngs
    assert 'pictures    :' in out

    # the results file the docs quote (docs/results/demo.json is this file of the quoted run)
    import results_file
    doc = results_file.load_results(osp.join(wd, 'results.json'))
    assert doc['command'] == 'bash tools/run_demo.sh --quick' and doc['tool'] == 'tools/run_demo.sh'
    assert doc['values']['metrics']['upernet']['mIoU'] == seg['mIoU']
    stages = doc['tables']['stages']['rows']
    assert len(stages) == 3 and f"top-1 {top['accuracy/top1']:.1f} %" in stages[0][1]
    assert f"mIoU {seg['mIoU']:.2f}" in stages[1][1] and f"box AP {det['coco/bbox_mAP']:.3f}" in stages[2][1]
    secs = doc['values']['seconds']
    assert secs['total'] >= secs['pretrain'] + secs['upernet'] + secs['cascade'] > 0
    assert f"mIoU {seg['mIoU']:.2f}" in out     # and the same figures are printed
