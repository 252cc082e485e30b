"""Robustness evaluation: the wnid lists, the ImageNet-C formulas, the pixel-space model and the
tool end to end (``tools/analysis/robustness.py``) on benchmark folders written in each layout.

The end-to-end test places every image in the class folder the model itself predicts (or, for
half of them, in another one), so the expected accuracy of each suite is known exactly, and a
wrong class mapping or a missing logit restriction changes it.
"""
from __future__ import annotations

import importlib.util
import os.path as osp

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tlalign_mm.evaluation.robustness import (
    ALEXNET_ERRORS,
    IMAGENET_C_CORRUPTIONS,
    PixelSpaceClassifier,
    check_class_folders,
    corruption_errors,
    mean_corruption_error,
    read_wnids,
    subset_indices,
    wnid_list_path,
)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_CFG = osp.join(REPO, 'configs', 'demo', 'deit-demo_tla_1xb64-10e_fashion-mnist.py')


def _load_tool():
    spec = importlib.util.spec_from_file_location('_tlalign_tools_robustness',
                                                  osp.join(REPO, 'tools', 'analysis', 'robustness.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------------------ wnid lists
def test_wnid_lists_are_the_published_ones():
    k1, a, r = read_wnids('imagenet_1k'), read_wnids('imagenet_a'), read_wnids('imagenet_r')
    assert len(k1) == len(set(k1)) == 1000 and list(k1) == sorted(k1)
    # ImageNet-1k label order: 0 tench, 1 goldfish, 6 stingray, 11 goldfinch, 999 toilet tissue.
    assert (k1[0], k1[1], k1[6], k1[11], k1[999]) == ('n01440764', 'n01443537', 'n01498041', 'n01531178',
                                                       'n15075141')
    assert len(a) == len(set(a)) == 200 and set(a) <= set(k1) and list(a) == sorted(a)
    assert len(r) == len(set(r)) == 200 and set(r) <= set(k1) and list(r) == sorted(r)
    # natural-adv-examples maps 1k index 6 (stingray) -> 0 and 11 (goldfinch) -> 1; tench is not in it.
    assert a[:2] == ('n01498041', 'n01531178') and 'n01440764' not in a
    # ImageNet-R starts with goldfish (1k index 1) and holds no tench.
    assert r[0] == 'n01443537' and 'n01440764' not in r
    assert osp.isfile(wnid_list_path('imagenet_a'))
    with pytest.raises(KeyError, match='imagenet_1k'):
        wnid_list_path('imagenet_b')


def test_subset_indices_and_their_error():
    k1, a = read_wnids('imagenet_1k'), read_wnids('imagenet_a')
    idx = subset_indices(k1, a, 'A')
    assert idx.dtype == torch.long and idx.shape == (200,)
    assert [k1[i] for i in idx.tolist()] == list(a) and idx[0] == 6 and idx[1] == 11
    logits = torch.arange(1000.).repeat(2, 1)
    assert torch.equal(logits[:, idx][0], idx.float())
    with pytest.raises(ValueError, match=r'imagenet_a\.txt.*imagenet_1k\.txt'):
        subset_indices([f'{i:02d}_cls' for i in range(10)], a, wnid_list_path('imagenet_a'))


def test_check_class_folders_names_the_expected_list():
    check_class_folders(['n01498041', 'n01531178'], read_wnids('imagenet_a'), 'LIST', 'dir')
    with pytest.raises(ValueError, match=r"dir: 1 of 2 class folders are not in imagenet_a\.txt.*n01440764"):
        check_class_folders(['n01498041', 'n01440764'], read_wnids('imagenet_a'), 'imagenet_a.txt', 'dir')
    with pytest.raises(ValueError, match='no class folders'):
        check_class_folders([], ['x'], 'LIST', 'dir')


def test_corruption_error_formulas():
    acc = {('fog', 1): 0.9, ('fog', 2): 0.7, ('snow', 1): 0.5, ('snow', 2): 0.25}
    e = corruption_errors(acc)
    assert e == pytest.approx({'fog': 0.2, 'snow': 0.625})
    assert mean_corruption_error(e) == pytest.approx(100 * (0.2 + 0.625) / 2)
    assert mean_corruption_error(e, {'fog': 0.4, 'snow': 0.625}) == pytest.approx(100 * (0.5 + 1.0) / 2)
    # AlexNet itself scores an mCE of 100; a model with half its errors, 50.
    assert mean_corruption_error(dict(ALEXNET_ERRORS), ALEXNET_ERRORS) == pytest.approx(100.0)
    half = {c: v / 2 for c, v in ALEXNET_ERRORS.items()}
    assert mean_corruption_error(half, ALEXNET_ERRORS) == pytest.approx(50.0)
    assert len(ALEXNET_ERRORS) == len(IMAGENET_C_CORRUPTIONS) == 15
    assert ALEXNET_ERRORS['gaussian_noise'] == 0.886428 and ALEXNET_ERRORS['jpeg_compression'] == 0.6065
    with pytest.raises(ValueError, match='no non-zero error for snow'):
        mean_corruption_error(e, {'fog': 0.4})
    with pytest.raises(ValueError, match='no corruption errors'):
        mean_corruption_error({})


# ------------------------------------------------------------------------------ the model
def _demo_model(num_classes=10, head_scale=1.0, seed=0):
    from _common import build_classifier, load_config  # tools/analysis/_common.py
    cfg = load_config(DEMO_CFG, dict(model=dict(head=dict(num_classes=num_classes))))
    model, _ = build_classifier(cfg, None, 'cpu', seed=seed, log=lambda *_: None)
    with torch.no_grad():
        model.head.fc.weight.mul_(head_scale)
    return cfg, model


def test_pixel_space_classifier_and_fgsm_against_a_hand_written_one():
    torchattacks = pytest.importorskip('torchattacks')
    _, model = _demo_model(head_scale=20.0)
    net = PixelSpaceClassifier(model).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 32, 32, generator=g)
    pre = model.data_preprocessor
    with torch.no_grad():
        ref = model((x * 255 - pre.mean) / pre.std, mode='tensor')
        assert torch.allclose(net(x), ref, atol=1e-5)
        idx = torch.tensor([3, 1])
        assert torch.allclose(PixelSpaceClassifier(model, idx)(x), ref[:, idx], atol=1e-5)
    y = ref.argmax(1)
    eps = 2 / 255
    xr = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(F.cross_entropy(net(xr), y), xr)
    by_hand = (x + eps * grad.sign()).clamp(0, 1)
    adv = torchattacks.FGSM(net, eps=eps)(x, y)
    assert torch.allclose(adv, by_hand, atol=1e-6)
    assert (adv - x).abs().max() <= eps + 1e-6


# ------------------------------------------------------------------------------ the tool
def _save_png(path, array):
    import os
    os.makedirs(osp.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _predict(model, arrays, indices=None):
    pre = model.data_preprocessor
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        logits = model((x - pre.mean) / pre.std, mode='tensor')
    return (logits if indices is None else logits[:, indices]).argmax(1).tolist()


@pytest.fixture(scope='module')
def imagenet_like(tmp_path_factory):
    """A 1000-class demo-sized model, its checkpoint and config, and benchmark folders in every
    layout, with the expected top-1 of each suite."""
    root = tmp_path_factory.mktemp('robustness')
    cfg, model = _demo_model(num_classes=1000, head_scale=30.0, seed=1)
    ckpt = root / 'model.pth'
    torch.save({'state_dict': model.state_dict()}, ckpt)
    k1, a, r = read_wnids('imagenet_1k'), read_wnids('imagenet_a'), read_wnids('imagenet_r')
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(16)]
    full = _predict(model, imgs)
    assert len(set(full)) >= 4, 'the test model must not predict one class for everything'
    expected = {}

    def place(folder, names, preds, suite):
        """Image i goes to its predicted class when i is even, else to the next class in ``names``."""
        right = 0
        for i, (img, p) in enumerate(zip(imgs, preds)):
            label = p if i % 2 == 0 else (p + 1) % len(names)
            right += int(label == p)
            _save_png(str(folder / names[label] / f'{i:03d}.png'), img)
        expected[suite] = 100 * right / len(imgs)

    for suite, wnids in (('a', a), ('r', r)):
        place(root / f'imagenet-{suite}', wnids, _predict(model, imgs, subset_indices(k1, wnids, '')), suite)
    place(root / 'imagenet-sketch' / 'sketch', k1, full, 'sketch')
    place(root / 'imagenetv2-matched-frequency-format-val', [str(i) for i in range(1000)], full, 'v2')
    # clean test set: every image in its predicted class (100%), read with the 1k class list
    for i, (img, p) in enumerate(zip(imgs, full)):
        _save_png(str(root / 'val' / k1[p] / f'{i:03d}.png'), img)
    # ImageNet-C: two corruptions, two severities; severity s keeps the first 16 - 4s predictions right
    c_acc = {}
    for name in ('fog', 'snow'):
        for sev in (1, 2):
            keep = 16 - 4 * sev - (2 if name == 'snow' else 0)
            for i, (img, p) in enumerate(zip(imgs, full)):
                label = p if i < keep else (p + 1) % 1000
                _save_png(str(root / 'imagenet-c' / name / str(sev) / k1[label] / f'{i:03d}.png'), img)
            c_acc[(name, sev)] = keep / 16
    # an extra corruption (ImageNet-C's held-out speckle noise): scored, but AlexNet has no error for it
    for i, (img, p) in enumerate(zip(imgs, full)):
        label = p if i < 8 else (p + 1) % 1000
        _save_png(str(root / 'imagenet-c' / 'speckle_noise' / '1' / k1[label] / f'{i:03d}.png'), img)
    c_acc[('speckle_noise', 1)] = 0.5
    cfg_path = root / 'cfg.py'
    cfg_path.write_text(
        f"_base_ = {DEMO_CFG!r}\n"
        "model = dict(head=dict(num_classes=1000))\n"
        f"test_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False,\n"
        f"    dataset=dict(data_root={str(root)!r}, split='val', classes={wnid_list_path('imagenet_1k')!r}))\n")
    return dict(root=root, ckpt=str(ckpt), cfg=str(cfg_path), expected=expected, c_acc=c_acc, model=model)


def _rows(result):
    out = {}
    for suite, metric, _better, values, _n in result['table']:
        out[(suite, metric)] = values
    return out


@pytest.mark.slow
def test_tool_scores_every_layout_as_expected(imagenet_like, tmp_path, capsys):
    tool = _load_tool()
    d = imagenet_like
    res = tool.main([d['cfg'], d['ckpt'], d['ckpt'], '--names', 'm', 'm', '--baseline', 'm',
                     '--data-root', str(d['root']), '--num-workers', '0', '--batch-size', '5',
                     '--suites', 'clean', 'a', 'r', 'sketch', 'v2', 'c', 'fgsm',
                     '--corruptions', 'fog', 'snow', 'speckle_noise', '--severities', '1', '2',
                     '--eps', '1/255', '--adv-samples', '16', '--out-dir', str(tmp_path)])
    rows = _rows(res)
    ex = d['expected']
    assert rows[('clean', 'top-1 (%)')]['m'] == [100.0, 100.0]
    assert rows[('imagenet-a', 'top-1 (%), 200 classes')]['m'][0] == pytest.approx(ex['a']) == 50.0
    assert rows[('imagenet-r', 'top-1 (%), 200 classes')]['m'][0] == pytest.approx(ex['r'])
    assert rows[('imagenet-sketch', 'top-1 (%)')]['m'][0] == pytest.approx(ex['sketch'])
    assert rows[('imagenet-v2', 'top-1 (%)')]['m'][0] == pytest.approx(ex['v2'])
    errors = corruption_errors(d['c_acc'])
    note = ', 4 of 75 corruption/severity folders'
    assert rows[('imagenet-c', f'mean corruption error (%){note}')]['m'][0] == pytest.approx(
        100 * (errors['fog'] + errors['snow'] + 0.5) / 3)
    assert rows[('imagenet-c', 'speckle_noise error (%)')]['m'][0] == pytest.approx(50.0)
    assert rows[('imagenet-c', f'mCE (%), AlexNet-normalised{note}')]['m'][0] == pytest.approx(
        100 * (errors['fog'] / 0.819324 + errors['snow'] / 0.866816) / 2)
    assert rows[('imagenet-c', 'fog error (%)')]['m'][0] == pytest.approx(100 * errors['fog'])
    assert rows[('imagenet-c', 'mCE (%) relative to m')]['m'] == pytest.approx([100.0, 100.0])
    # FGSM, checked against a hand-written one on the same 16 images
    net = PixelSpaceClassifier(d['model']).eval()
    x = torch.from_numpy(np.stack([np.asarray(Image.open(p)) for p in sorted(
        (d['root'] / 'val').rglob('*.png'), key=lambda p: p.name)])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        y = net(x).argmax(1)
    xr = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(F.cross_entropy(net(xr), y), xr)
    with torch.no_grad():
        robust = (net((x + grad.sign() / 255).clamp(0, 1)).argmax(1) == y).float().mean().item()
    assert rows[('adversarial', 'FGSM eps=1/255 top-1 (%)')]['m'][0] == pytest.approx(100 * robust)
    assert rows[('adversarial', 'clean top-1 (%) on the images attacked by fgsm')]['m'][0] == 100.0
    md = open(res['md']).read()
    assert '| m (n=2) |' in md and '| imagenet-a | top-1 (%), 200 classes ↑ | 50.00 ± 0.00 | 16 |' in md
    csv_text = open(res['csv']).read().splitlines()
    assert csv_text[0] == 'suite,metric,better,m,m_std,m_runs,images'
    runs = open(res['runs_csv']).read().splitlines()
    assert runs[0] == 'name,config,checkpoint,suite,metric,value,images' and len(runs) == 1 + 2 * len(res['table'])


@pytest.mark.slow
def test_tool_skips_missing_folders_and_runs_autoattack(imagenet_like, tmp_path, capsys):
    pytest.importorskip('torchattacks')
    tool = _load_tool()
    d = imagenet_like
    res = tool.main([d['cfg'], d['ckpt'], '--data-root', str(tmp_path / 'nothing'), '--num-workers', '0',
                     '--suites', 'a', 'c', 'pgd', 'autoattack', '--adv-samples', '6', '--autoattack-samples', '3',
                     '--pgd-steps', '3', '--eps', '2/255', '--out-dir', str(tmp_path)])
    log = capsys.readouterr().out
    assert f"[a] skipped: no folder {tmp_path / 'nothing' / 'imagenet-a'} (pass --imagenet-a DIR)" in log
    assert '[c] skipped: no folder' in log
    rows = _rows(res)
    assert set(s for s, _ in rows) == {'adversarial'}
    name = 'cfg'
    clean_aa = rows[('adversarial', 'clean top-1 (%) on the images attacked by autoattack')][name][0]
    aa = rows[('adversarial', 'AutoAttack-standard eps=2/255 top-1 (%)')][name][0]
    pgd = rows[('adversarial', 'PGD-3 eps=2/255 alpha=1.67/255 top-1 (%)')][name][0]
    assert rows[('adversarial', 'clean top-1 (%) on the images attacked by pgd')][name][0] == 100.0
    assert clean_aa == 100.0 and 0.0 <= aa <= clean_aa and 0.0 <= pgd <= 100.0
    assert [r[4] for r in res['table']] == [6, 6, 3, 3]


@pytest.mark.slow
def test_tool_errors_name_what_to_fix(imagenet_like, tmp_path, capsys):
    tool = _load_tool()
    d = imagenet_like
    bad = tmp_path / 'imagenet-a'
    _save_png(str(bad / 'n01498041' / 'x.png'), np.zeros((32, 32, 3), np.uint8))
    _save_png(str(bad / 'n01440764' / 'x.png'), np.zeros((32, 32, 3), np.uint8))  # tench: not an A class
    with pytest.raises(ValueError, match=r'1 of 2 class folders are not in .*imagenet_a\.txt.*n01440764'):
        tool.main([d['cfg'], d['ckpt'], '--suites', 'a', '--imagenet-a', str(bad), '--num-workers', '0',
                   '--out-dir', str(tmp_path)])
    # a 10-class model cannot be scored on ImageNet-A
    _, model10 = _demo_model(num_classes=10)
    ck10 = tmp_path / 'm10.pth'
    torch.save({'state_dict': model10.state_dict()}, ck10)
    cfg_path = tmp_path / 'cfg10.py'
    cfg_path.write_text(f"_base_ = {DEMO_CFG!r}\n")
    classes10 = tmp_path / 'classes10.txt'
    classes10.write_text(''.join(f'c{i}\n' for i in range(10)))
    good_a = d['root'] / 'imagenet-a'
    with pytest.raises(ValueError, match=r"imagenet_a\.txt are not among the model's 10 classes.*imagenet_1k\.txt"):
        tool.main([str(cfg_path), str(ck10), '--suites', 'a', '--imagenet-a', str(good_a), '--num-workers', '0',
                   '--classes', str(classes10), '--out-dir', str(tmp_path)])
    # a backbone export (no head) is refused
    torch.save({'state_dict': {k: v for k, v in model10.state_dict().items() if not k.startswith('head.')}},
               tmp_path / 'backbone.pth')
    with pytest.raises(ValueError, match='no head in the checkpoint'):
        tool.main([str(cfg_path), str(tmp_path / 'backbone.pth'), '--suites', 'a', '--imagenet-a', str(good_a),
                   '--classes', str(classes10), '--out-dir', str(tmp_path)])
    capsys.readouterr()
    for argv, msg in (([str(ck10), str(cfg_path)], 'must follow the config'),
                      ([str(cfg_path)], 'followed by no checkpoint'),
                      ([str(cfg_path), str(ck10), '--names', 'a', 'b'], '--names has 2 entries for 1 checkpoints'),
                      ([str(cfg_path), str(ck10), '--baseline', 'zz'], "--baseline 'zz' is not one of")):
        with pytest.raises(SystemExit):
            tool.parse_args(argv)
        assert msg in capsys.readouterr().err
