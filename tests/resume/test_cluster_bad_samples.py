"""Bad training images in a real run: a folder with an empty file, random bytes, a truncated JPEG and a PNG
with a bad CRC; the run completes and lists exactly them; ``max_bad_fraction=0`` stops with one line;
interrupted equals uninterrupted (the runs and the comparison: ``tests/resume/cluster_runs.py``).
"""
from __future__ import annotations

import os
import random
import re
import shutil
import signal

import pytest
from cluster_runs import (
    BASE,
    CLUSTER_MARKS,
    FMNIST,
    assert_same_run,
    finish,
    launch_logs,
    ok,
    run,
    run_env,
    start,
    train_cmd,
    train_iterations,
    wait_until,
)

pytest_plugins = ['cluster_runs']       # the fixtures cfgs, reference, reference2
pytestmark = CLUSTER_MARKS



# ------------------------------------------------------------------------------ bad samples
@pytest.fixture(scope='module')
def bad_folder(tmp_path_factory):
    """2 classes x 40 Fashion-MNIST PNGs, and in class 0: an empty file, random bytes, a truncated
    JPEG and a PNG whose IDAT fails its CRC."""
    from PIL import Image
    root = tmp_path_factory.mktemp('bad_folder')
    classes = sorted(os.listdir(os.path.join(FMNIST, 'train')))[:2]
    for c in classes:
        os.makedirs(root / 'train' / c)
        for name in sorted(os.listdir(os.path.join(FMNIST, 'train', c)))[:40]:
            shutil.copy(os.path.join(FMNIST, 'train', c, name), root / 'train' / c / name)
    bad_dir = root / 'train' / classes[0]
    sample = os.path.join(FMNIST, 'train', classes[0], sorted(os.listdir(os.path.join(FMNIST, 'train', classes[0])))[0])
    (bad_dir / 'empty.png').write_bytes(b'')
    (bad_dir / 'random.png').write_bytes(random.Random(1).randbytes(3000))
    img = Image.open(sample).convert('RGB').resize((128, 128))
    img.save(bad_dir / 'cut.jpg', quality=95)
    data = (bad_dir / 'cut.jpg').read_bytes()
    (bad_dir / 'cut.jpg').write_bytes(data[: len(data) // 2])
    png = bytearray(open(sample, 'rb').read())
    png[png.find(b'IDAT') + 8] ^= 0xFF
    (bad_dir / 'crc.png').write_bytes(bytes(png))
    bad = sorted(str(bad_dir / n) for n in ('empty.png', 'random.png', 'cut.jpg', 'crc.png'))
    cfg = root / 'bad.py'
    # every image once per epoch (the demo's repeated augmentation shows a third of them)
    cfg.write_text(BASE + f"train_dataloader = dict(dataset=dict(data_root={str(root)!r}, indices=None), "
                          "sampler=dict(_delete_=True, type='DefaultSampler', shuffle=True))\n"
                          "train_cfg = dict(max_epochs=2, max_bad_fraction=0.1)\n")
    return cfg, bad


def _listed(work_dir) -> list[str]:
    return sorted(line.split('\t')[0] for line in open(os.path.join(str(work_dir), 'bad_samples.txt')))


def test_bad_files_cost_one_line_each(cfgs, bad_folder, tmp_path):
    cfg, bad = bad_folder
    env = run_env(cfgs)
    ref = tmp_path / 'ref'
    ok(run(train_cmd(cfgs, cfg, ref), env))
    assert _listed(ref) == bad
    log = launch_logs(ref)[0]
    assert sorted(re.findall(r'skipped bad sample (\S+):', log)) == bad     # once each, epochs and repeats aside
    assert re.search(r'skipped bad sample \S+cut\.jpg: truncated JPEG', log)
    assert re.search(r'skipped bad sample \S+crc\.png: corrupt PNG: chunk IDAT', log)
    # threshold 0: the first bad sample stops the run, with one line
    proc = run(train_cmd(cfgs, cfg, tmp_path / 'strict', '--cfg-options', 'train_cfg.max_bad_fraction=0'), env)
    assert proc.returncode == 65, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r'train\.py: \d+ of 84 training samples failed to load, more than max_bad_fraction=0 '
                        r'\(first: \S+: .*\).*stopped at iteration \d+ .*--resume to continue', last), last
    # interrupted and resumed: the same substitutes, the same run
    cut = tmp_path / 'cut'
    proc = start(train_cmd(cfgs, cfg, cut, '--resume'), env)
    wait_until(lambda: train_iterations(cut) >= 2, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    assert finish(proc)[0] == 75
    ok(run(train_cmd(cfgs, cfg, cut, '--resume'), env))
    assert_same_run(ref, cut, final='epoch_2.pth', min_iters=4)
    assert _listed(cut) == bad
