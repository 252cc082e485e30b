"""The fault-tolerant training data (tlalign_mm/datasets/fault_tolerant.py), on real image files.

* :func:`check_image_file` finds the bad files decoders miss: a JPEG cut short, which PIL decodes
  without an error when told to load truncated images (as OpenCV 4 does by default); a PNG whose IDAT
  fails its CRC; an empty file.  Good files pass, including a progressive JPEG and a
  JPEG whose EXIF thumbnail carries its own end-of-image marker.
* :class:`FaultTolerantDataset` replaces a bad sample by one drawn from the sample's seed (the same one
  every time), reports it with the batch, and raises one line when nothing loads.
* :class:`ResumableBatchSampler` yields the wrapped batch sampler's batches unchanged, each index with
  its seed; after ``skip(n)`` it yields exactly the tail of an uninterrupted pass (batches and seeds) and
  reads no sample.
* Every sample's augmentation is a function of its seed: the same batches whatever ``num_workers``.
"""
from __future__ import annotations

import io
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from tlalign_mm.datasets import (
    BAD_SAMPLES_KEY,
    BadSampleError,
    FaultTolerantDataset,
    RecordingCollate,
    ResumableBatchSampler,
    SampleIndex,
    check_image_file,
)
from tlalign_mm.datasets.fault_tolerant import epoch_seed

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VOC = os.path.join(REPO, 'data', 'demo', 'voc_seg', 'img_dir', 'train')


def _photo(size=(96, 64), seed=0) -> Image.Image:
    """A real photo when the demo sets are there, else a smooth synthetic image."""
    files = sorted(os.listdir(VOC)) if os.path.isdir(VOC) else []
    if files:
        return Image.open(os.path.join(VOC, files[seed % len(files)])).convert('RGB').resize(size)
    g = np.random.default_rng(seed)
    base = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    return Image.fromarray((base + g.normal(0, 20, base.shape)).clip(0, 255).astype(np.uint8))


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, 'JPEG', quality=90, **kw)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, 'PNG')
    return buf.getvalue()


def _write(tmp_path, name, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _with_thumbnail(main: bytes, thumb: bytes) -> bytes:
    """``main`` with an APP1 (EXIF) segment holding a whole JPEG, as cameras store thumbnails."""
    payload = b'Exif\x00\x00' + thumb
    app1 = b'\xff\xe1' + (len(payload) + 2).to_bytes(2, 'big') + payload
    return main[:2] + app1 + main[2:]


# ------------------------------------------------------------------------------ check_image_file
def test_good_files_pass(tmp_path):
    img = _photo()
    for name, data in [('base.jpg', _jpeg(img)), ('prog.jpg', _jpeg(img, progressive=True)),
                       ('thumb.jpg', _with_thumbnail(_jpeg(img), _jpeg(img.resize((16, 12))))),
                       ('trailer.jpg', _jpeg(img) + b'\x00' * 100 + b'camera trailer'),
                       ('img.png', _png(img)), ('grey.png', _png(img.convert('L')))]:
        path = _write(tmp_path, name, data)
        Image.open(path).load()                       # the decoders agree these are fine
        assert check_image_file(path) is None, name


def test_truncated_jpeg_that_decoders_half_read(tmp_path):
    """A cut JPEG decodes without an error, grey below the cut, where PIL is told to load truncated
    images (``ImageFile.LOAD_TRUNCATED_IMAGES``, which many training scripts set) and in OpenCV 4;
    the check names it whatever the decoder does."""
    data = _jpeg(_photo((256, 192)))
    path = _write(tmp_path, 'cut.jpg', data[: len(data) * 3 // 5])
    with pytest.raises(OSError, match='truncated'):
        Image.open(path).load()
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        img = Image.open(path)
        img.load()
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    assert img.size == (256, 192)                                             # no error from the decoder
    reason = check_image_file(path)
    assert reason is not None and reason.startswith('truncated JPEG') and 'FF D9' in reason


def test_truncated_jpeg_with_a_thumbnail_end_marker(tmp_path):
    """The thumbnail inside APP1 ends with FF D9; a file cut after it is still truncated (the
    segments are walked by their lengths, not searched for FF D9)."""
    img = _photo((256, 192))
    data = _with_thumbnail(_jpeg(img), _jpeg(img.resize((32, 24))))
    assert data.rfind(b'\xff\xd9', 0, len(data) - 2) > 0                     # a second end marker inside
    path = _write(tmp_path, 'thumb_cut.jpg', data[: len(data) - 2000])
    assert check_image_file(path).startswith('truncated JPEG')


def test_png_with_a_bad_crc(tmp_path):
    data = bytearray(_png(_photo()))
    idat = data.find(b'IDAT')
    data[idat + 10] ^= 0xFF                                                   # one byte of the image data
    path = _write(tmp_path, 'crc.png', bytes(data))
    assert check_image_file(path) == f'corrupt PNG: chunk IDAT at byte {idat - 4} fails its CRC check'
    import cv2
    assert cv2.imread(path) is None                                           # libpng refuses it too


def test_empty_truncated_png_and_missing(tmp_path):
    assert check_image_file(_write(tmp_path, 'empty.jpg', b'')) == 'empty file (0 bytes)'
    png = _png(_photo())
    assert check_image_file(_write(tmp_path, 'cut.png', png[:-30])).startswith('truncated PNG')
    assert check_image_file(tmp_path / 'absent.jpg').startswith('unreadable')
    # not a JPEG or PNG: left to the decoder
    assert check_image_file(_write(tmp_path, 'noise.jpg', os.urandom(2048))) is None


# ------------------------------------------------------------------------------ FaultTolerantDataset
class _Files(Dataset):
    """Image files through a random pipeline (a crop position and a flip from ``random`` and NumPy)."""

    def __init__(self, paths):
        self.paths = list(paths)

    def __len__(self):
        return len(self.paths)

    def get_data_info(self, i):
        return dict(img_path=self.paths[i])

    def __getitem__(self, i):
        with open(self.paths[i], 'rb') as f:
            img = np.asarray(Image.open(f).convert('RGB'))      # PIL raises on what it cannot decode
        top = random.randint(0, 8)
        flip = np.random.rand() < 0.5
        out = img[top:top + 24, :24]
        return dict(inputs=torch.from_numpy(np.ascontiguousarray(out[:, ::-1] if flip else out)), index=i)


@pytest.fixture
def files(tmp_path):
    paths = []
    for i in range(12):
        paths.append(_write(tmp_path, f'{i:02d}.jpg', _jpeg(_photo((48, 40), seed=i))))
    bad = {3: b'', 7: os.urandom(999)}                                        # empty; random bytes
    for i, data in bad.items():
        open(paths[i], 'wb').write(data)
    cut = _jpeg(_photo((48, 40), seed=11))
    open(paths[11], 'wb').write(cut[: len(cut) // 2])                        # truncated
    return paths


def test_bad_samples_are_replaced_from_their_seed(files):
    ds = FaultTolerantDataset(_Files(files))
    good = ds[SampleIndex(0, seed=5)]
    assert BAD_SAMPLES_KEY not in good and good['index'] == 0
    a = ds[SampleIndex(3, seed=123)]
    b = ds[SampleIndex(3, seed=123)]
    records = a.pop(BAD_SAMPLES_KEY)
    b.pop(BAD_SAMPLES_KEY)
    assert records[0] == dict(index=3, path=files[3], reason='empty file (0 bytes)')
    assert a['index'] not in (3, 7, 11) and a['index'] == b['index'] and torch.equal(a['inputs'], b['inputs'])
    other = ds[SampleIndex(3, seed=124)]
    assert other.pop(BAD_SAMPLES_KEY)[0]['path'] == files[3]
    # random bytes: the decoder's error is the reason; a half-decodable JPEG: the file check's
    assert ds[SampleIndex(7, seed=1)][BAD_SAMPLES_KEY][0]['reason'].startswith('UnidentifiedImageError')
    assert ds[SampleIndex(11, seed=1)][BAD_SAMPLES_KEY][0]['reason'].startswith('truncated JPEG')
    # a plain int: no seeding, the substitute drawn from the index
    assert ds[3]['index'] == ds[3]['index'] != 3


def test_the_sample_seed_decides_the_augmentation(files):
    """The same seed gives the same crop and flip, whatever was drawn before; the main process's own
    random states are left as they were (num_workers=0)."""
    ds = FaultTolerantDataset(_Files(files))
    random.seed(1)
    np.random.seed(1)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    a = ds[SampleIndex(5, seed=99)]['inputs']
    assert random.getstate() == before[0] and np.array_equal(np.random.get_state()[1], before[1])
    assert torch.equal(torch.get_rng_state(), before[2])
    random.random()
    np.random.rand(7)
    assert torch.equal(ds[SampleIndex(5, seed=99)]['inputs'], a)
    seen = {ds[SampleIndex(5, seed=s)]['inputs'].sum().item() for s in range(12)}
    assert len(seen) > 1                                                      # other seeds, other crops


def test_nothing_loads_raises_one_line(tmp_path):
    paths = [_write(tmp_path, f'{i}.jpg', b'') for i in range(3)]
    ds = FaultTolerantDataset(_Files(paths), max_attempts=4)
    with pytest.raises(BadSampleError, match=r'0\.jpg: empty file \(0 bytes\) \(index 0\), and 4 substitutes '
                                             r'failed as well .*check the data root and the pipeline'):
        ds[SampleIndex(0, seed=0)]


def test_in_memory_samples_and_missing_files(files, tmp_path):
    """A sample named by something that is not a file (CIFAR's in-memory images) is not checked; a file
    that has gone is reported by the pipeline's own error."""

    class InMemory(_Files):
        def get_data_info(self, i):
            return dict(img_path=f'CIFAR10/train/{i}')

    assert BAD_SAMPLES_KEY not in FaultTolerantDataset(InMemory(files[:3]))[SampleIndex(0, seed=1)]
    gone = _write(tmp_path, 'gone.jpg', _jpeg(_photo()))
    os.remove(gone)
    record = FaultTolerantDataset(_Files([gone] + files[:2]))[SampleIndex(0, seed=1)][BAD_SAMPLES_KEY][0]
    assert record['path'] == gone and record['reason'].startswith('FileNotFoundError')


def test_the_wrapped_dataset_shows_through(files):
    inner = _Files(files)
    ds = FaultTolerantDataset(inner, check_files=False)
    assert len(ds) == 12 and ds.paths is inner.paths and ds.get_data_info(2) == dict(img_path=files[2])
    # without the file check a half-decodable JPEG goes through PIL, which refuses it
    assert ds[SampleIndex(11, seed=0)][BAD_SAMPLES_KEY][0]['reason'].startswith('OSError')


# ------------------------------------------------------------------------------ ResumableBatchSampler
class _Never(Dataset):
    def __len__(self):
        return 23

    def __getitem__(self, i):
        raise AssertionError('a skipped batch was read')


def _batches(sampler):
    return [[(int(i), i.seed) for i in b] for b in sampler]


def _splitmix64_reference(base: int, position: int) -> int:
    """SplitMix64 (Steele, Lea and Flood 2014; Vigna's splitmix64.c) of ``base + position * gamma``, written
    out: the state advanced by the golden-ratio gamma, then the two xor-shift-multiply rounds."""
    m, gamma = (1 << 64) - 1, 0x9E3779B97F4A7C15
    z = (base + position * gamma + gamma) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def test_skip_yields_the_tail_of_an_uninterrupted_pass():
    from mmengine.dataset import DefaultSampler
    sampler = DefaultSampler(_Never(), shuffle=True, seed=3)
    bs = ResumableBatchSampler(sampler, batch_size=4, seed=7, rank=0)
    seeds = {}
    for epoch in (0, 1):
        bs.set_epoch(epoch)
        full = _batches(bs)
        assert len(full) == len(bs) == 6 and [len(b) for b in full] == [4] * 5 + [3]
        plain = [list(b) for b in torch.utils.data.BatchSampler(sampler, 4, False)]
        assert [[i for i, _ in b] for b in full] == plain                     # the wrapped batches, unchanged
        # each sample's seed: NumPy's SeedSequence([seed, epoch, rank]) for the epoch, SplitMix64 per position
        base = int(np.random.SeedSequence([7, epoch, 0]).generate_state(1, np.uint64)[0])
        assert epoch_seed(7, epoch, 0) == base
        seeds[epoch] = [s for b in full for _, s in b]
        assert seeds[epoch] == [_splitmix64_reference(base, p) for p in range(23)]
        bs.skip(4)
        assert _batches(bs) == full[4:]                                       # the tail, seeds included
        assert _batches(bs) == full                                           # one pass only
    assert len(set(seeds[0]) | set(seeds[1])) == 46                           # no seed repeats across epochs
    assert len({epoch_seed(7, 0, 0), epoch_seed(7, 0, 1), epoch_seed(7, 1, 0), epoch_seed(8, 0, 0)}) == 4
    # through a DataLoader: the skipped batches are never read
    bs.skip(6)
    assert list(DataLoader(_Never(), batch_sampler=bs)) == []


@pytest.mark.mm
def test_skip_with_mmdets_aspect_ratio_batch_sampler():
    """mmdet's AspectRatioBatchSampler groups indices by orientation: skipping draws its batches."""
    from mmengine.dataset import DefaultSampler

    class Shapes(_Never):
        def get_data_info(self, i):
            return dict(width=100 + 50 * (i % 3 == 0), height=100 + 50 * (i % 3 != 0))

    sampler = DefaultSampler(Shapes(), shuffle=True, seed=0)
    bs = ResumableBatchSampler(sampler, 4, batch_sampler=dict(type='mmdet.AspectRatioBatchSampler'), seed=1, rank=0)
    full = _batches(bs)
    assert all(len({(i % 3 == 0) for i, _ in b}) == 1 for b in full[:-2])    # one orientation per batch
    bs.skip(3)
    assert _batches(bs) == full[3:]


def test_recording_collate_moves_the_records_out():
    collate = RecordingCollate(torch.utils.data.default_collate)
    rec = [dict(index=1, path='a.jpg', reason='empty file (0 bytes)')]
    batch, records = collate([dict(x=torch.ones(2), **{BAD_SAMPLES_KEY: rec}), dict(x=torch.zeros(2))])
    assert records == rec and set(batch) == {'x'} and batch['x'].shape == (2, 2)


def test_the_same_batches_whatever_num_workers(files):
    """Two workers, or none: every sample is seeded by its position, so the batches are equal."""
    ds = FaultTolerantDataset(_Files(files))

    def run(workers):
        bs = ResumableBatchSampler(SequentialSampler(ds), batch_size=3, seed=0, rank=0)
        loader = DataLoader(ds, batch_sampler=bs, num_workers=workers,
                            collate_fn=RecordingCollate(torch.utils.data.default_collate))
        return [(b['inputs'], b['index'], r) for b, r in loader]

    zero, two = run(0), run(2)
    assert len(zero) == 4
    for (x0, i0, r0), (x2, i2, r2) in zip(zero, two):
        assert torch.equal(x0, x2) and torch.equal(i0, i2) and r0 == r2
    assert sorted(r['path'] for _, _, recs in zero for r in recs) == sorted(files[i] for i in (3, 7, 11))
