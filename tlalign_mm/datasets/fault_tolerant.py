"""Training data that resumes mid-epoch and survives bad files.

Three pieces, which :class:`~tlalign_mm.engine.ResumableEpochBasedTrainLoop` and
:class:`~tlalign_mm.engine.ResumableIterBasedTrainLoop` put around any training set
(ImageNet folders, the transfer sets, mmseg's and mmdet's datasets):

* :class:`ResumableBatchSampler` wraps the configured batch sampler (or a plain
  ``torch.utils.data.BatchSampler`` over the sampler).  It tags every index it yields with the seed of
  that sample's random stream (:class:`SampleIndex`), and it can start an epoch after its first ``n``
  batches by drawing their indices and dropping them (:meth:`ResumableBatchSampler.skip`): no image of a
  skipped batch is read.
* :class:`FaultTolerantDataset` wraps the dataset.  Before a sample runs through the pipeline it seeds
  Python's ``random``, NumPy's global generator and torch's CPU generator from the sample's seed, so a
  sample's augmentation is a function of ``(seed, epoch, rank, position in the epoch)`` alone: not of the
  data-loader worker that happens to load it, nor of what that worker loaded before.  That is what
  makes a resumed epoch, or a run with another ``num_workers``, draw the same augmentations.  A sample
  whose files fail :func:`check_image_file` or whose pipeline raises is replaced by another index drawn
  from its seed (never from global random), and the failure travels with the batch to the main process
  (:data:`BAD_SAMPLES_KEY`, :class:`RecordingCollate`).
* :func:`check_image_file` finds what decoders miss: an empty file, a JPEG cut short (PIL with
  ``ImageFile.LOAD_TRUNCATED_IMAGES``, which many training scripts set, and OpenCV 4 decode its first part
  without an error and fill the rest with grey), a PNG whose chunk fails its CRC.

The per-sample streams replace torch's per-worker seeding for the wrapped training set only;
validation and test sets are left as they are.
"""
from __future__ import annotations

import contextlib
import os
import random
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, get_worker_info

from ..registry import DATA_SAMPLERS, DATASETS

__all__ = ['SampleIndex', 'epoch_seed', 'sample_seed', 'seed_sample_rngs', 'check_image_file',
           'FaultTolerantDataset', 'ResumableBatchSampler', 'RecordingCollate', 'BadSampleError',
           'BAD_SAMPLES_KEY']

#: The key under which :class:`FaultTolerantDataset` attaches the bad-sample records of a substitution
#: to the sample it returns (a list of ``dict(index=int, path=str, reason=str)``);
#: :class:`RecordingCollate` takes it out again before collating.
BAD_SAMPLES_KEY = '_bad_samples'

_MASK64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15


def _splitmix64(x: int) -> int:
    """SplitMix64's output function (Steele et al. 2014): a bijection of 64-bit ints that mixes every bit."""
    x = (x + _GAMMA) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The 64-bit seed of one rank's epoch: NumPy's ``SeedSequence([seed mod 2**32, epoch, rank])``, so
    that nearby triples give unrelated streams."""
    ss = np.random.SeedSequence([int(seed) % 2 ** 32, int(epoch), int(rank)])
    return int(ss.generate_state(1, np.uint64)[0])


def sample_seed(base: int, position: int) -> int:
    """The seed of the sample at ``position`` (0-based, counted over the epoch's batches in order) of the
    epoch whose :func:`epoch_seed` is ``base``: SplitMix64 of ``base + position * gamma``, a 64-bit int."""
    return _splitmix64((base + position * _GAMMA) & _MASK64)


def seed_sample_rngs(seed: int) -> None:
    """Seed the three global generators a pipeline draws from for one sample: Python's ``random``
    (``seed``), NumPy's legacy global generator (32 bits derived from ``seed``) and torch's default CPU
    generator (64 bits derived from ``seed``).  The three get different derived seeds, so their
    Mersenne-Twister streams are unrelated."""
    random.seed(seed)
    np.random.seed(_splitmix64(seed ^ 1) & 0xFFFFFFFF)
    torch.default_generator.manual_seed(_splitmix64(seed ^ 2))


class SampleIndex(int):
    """A dataset index (an ``int``) that carries the seed of its sample's random stream.

    :class:`ResumableBatchSampler` yields them; :class:`FaultTolerantDataset` reads its ``seed``; any
    other dataset sees a plain ``int``.  Pickles as ``SampleIndex(index, seed)`` (data-loader workers).
    """

    seed: int

    def __new__(cls, index: int, seed: int) -> SampleIndex:
        obj = super().__new__(cls, index)
        obj.seed = int(seed)
        return obj

    def __reduce__(self):
        return SampleIndex, (int(self), self.seed)

    def __repr__(self) -> str:
        return f'SampleIndex({int(self)}, seed={self.seed})'


# ----------------------------------------------------------------------------- file checks
_JPEG_SOI = b'\xff\xd8\xff'
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_JPEG_STANDALONE = {0x01} | set(range(0xD0, 0xD8))     # TEM, RST0-7: markers without a length field


def _jpeg_problem(data: bytes) -> str | None:
    """Walk a JPEG's marker segments and entropy-coded scans up to its end-of-image marker (FF D9).

    Lenient where libjpeg is lenient (stray bytes between segments are skipped, bytes after EOI are
    ignored); strict about the one thing a decoder papers over: reaching the end of the file first.
    """
    n, pos = len(data), 2
    while True:
        j = data.find(b'\xff', pos)              # the next marker (libjpeg skips stray bytes too)
        while 0 <= j < n - 1 and data[j + 1] == 0xFF:
            j += 1                                # fill bytes before a marker
        if j < 0 or j >= n - 1:
            return f'truncated JPEG: {n} bytes and no end-of-image marker (FF D9)'
        marker, pos = data[j + 1], j + 2
        if marker == 0xD9:
            return None
        if marker in _JPEG_STANDALONE or marker == 0x00:
            continue
        if pos + 2 > n:
            return f'truncated JPEG: the file ends inside the header of segment FF {marker:02X} ({n} bytes)'
        end = pos + int.from_bytes(data[pos:pos + 2], 'big')
        if end > n:
            return (f'truncated JPEG: segment FF {marker:02X} needs {end} bytes, the file has {n} '
                    '(no end-of-image marker)')
        pos = end
        if marker == 0xDA:                        # start of scan: entropy-coded data up to the next marker
            while True:
                j = data.find(b'\xff', pos)
                if j < 0 or j >= n - 1:
                    return (f'truncated JPEG: the file ends inside the entropy-coded data ({n} bytes, no '
                            'end-of-image marker FF D9)')
                nxt = data[j + 1]
                if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:   # a stuffed FF or a restart marker: still data
                    pos = j + 2
                    continue
                pos = j
                break


def _png_problem(data: bytes) -> str | None:
    """Walk a PNG's chunks, checking each chunk's CRC-32, up to IEND."""
    n, pos = len(data), len(_PNG_SIGNATURE)
    while True:
        if pos + 8 > n:
            return f'truncated PNG: {n} bytes and no IEND chunk'
        length = int.from_bytes(data[pos:pos + 4], 'big')
        kind = data[pos + 4:pos + 8]
        end = pos + 12 + length
        name = kind.decode('latin-1')
        if end > n:
            return f'truncated PNG: chunk {name} needs {end} bytes, the file has {n}'
        if zlib.crc32(data[pos + 4:end - 4]) != int.from_bytes(data[end - 4:end], 'big'):
            return f'corrupt PNG: chunk {name} at byte {pos} fails its CRC check'
        if kind == b'IEND':
            return None
        pos = end


def check_image_file(path: str | os.PathLike) -> str | None:
    """What is wrong with an image file, judged from its bytes, or ``None``.

    Checks: the file can be read and is not empty; a JPEG (starts with FF D8 FF) reaches its
    end-of-image marker FF D9 through its segments and scans; a PNG's chunks all pass their CRC-32 and it
    ends with IEND.  Other formats are not judged here (their decoder is).  Reads the whole file; costs
    about 0.1 ms for a 100 kB JPEG.

    Returns:
        ``None`` for a file that passes, else one phrase (no path) such as ``'empty file (0 bytes)'``,
        ``'truncated JPEG: ... no end-of-image marker (FF D9)'`` or
        ``'corrupt PNG: chunk IDAT at byte 33 fails its CRC check'``.
    """
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as e:
        return f'unreadable: {e.strerror or e}'
    if not data:
        return 'empty file (0 bytes)'
    if data.startswith(_JPEG_SOI):
        return _jpeg_problem(data)
    if data.startswith(_PNG_SIGNATURE):
        return _png_problem(data)
    return None


# ----------------------------------------------------------------------------- the dataset wrapper
class BadSampleError(RuntimeError):
    """No loadable sample was found for an index: the sample and every substitute drawn for it failed.
    Usually not bad files but a broken pipeline or data root; the message names the first failure."""


#: data_info keys (mmengine / mmseg / mmdet / tlalign_mm datasets) whose values are files a sample reads
_FILE_KEYS = ('img_path', 'seg_map_path')


@contextlib.contextmanager
def _sample_rngs(seed: int | None):
    """Seed the global generators for one sample; in the main process (``num_workers=0``) put the
    training process's own states back afterwards, so loading data does not move them."""
    if seed is None:
        yield
        return
    in_worker = get_worker_info() is not None
    saved = None if in_worker else (random.getstate(), np.random.get_state(), torch.get_rng_state())
    seed_sample_rngs(seed)
    try:
        yield
    finally:
        if saved is not None:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])


@DATASETS.register_module()
class FaultTolerantDataset:
    """A training dataset whose samples have their own random streams and whose bad files are skipped.

    ``dataset[i]`` for an index that :class:`ResumableBatchSampler` tagged (a :class:`SampleIndex`):

    1. seeds ``random``, NumPy and torch from the index's seed (:func:`seed_sample_rngs`);
    2. checks the sample's files (``img_path``, ``seg_map_path`` of ``get_data_info(i)``, those that are
       files) with :func:`check_image_file` (``check_files=True``);
    3. runs the wrapped dataset's ``__getitem__`` (its pipeline).

    If step 2 finds a problem or step 3 raises (``Exception``, not ``KeyboardInterrupt``), a substitute
    index is drawn from the seed (SplitMix64 of ``seed`` and the attempt number, modulo ``len``) and steps
    1-3 run again for it, with a seed derived the same way, up to ``max_attempts`` times.  The returned
    sample (a dict, as every mm pipeline returns) then carries ``sample[BAD_SAMPLES_KEY] = [dict(index,
    path, reason), ...]``, one record per failed sample, which :class:`RecordingCollate` removes before
    collating.  A plain ``int`` index is served
    the same way with no seeding (the substitute is then drawn from the index).

    Everything else (``metainfo``, ``get_data_info``, ``full_init``, the wrapped dataset's own
    attributes) is the wrapped dataset's.

    Args:
        dataset: the dataset, or its config (built with mmengine's ``DATASETS`` under the current
            default scope, so mmseg's and mmdet's datasets build as in their own configs).
        check_files: run :func:`check_image_file` on each sample's files before its pipeline (reads each
            file once more; the pipeline's read then comes from the page cache).
        max_attempts: substitutes tried for one failed sample before :class:`BadSampleError`.

    Raises:
        BadSampleError: from ``__getitem__``, when the sample and ``max_attempts`` substitutes all fail
            (chained to the last exception, which names the first failing file).
    """

    def __init__(self, dataset: Any, check_files: bool = True, max_attempts: int = 16) -> None:
        if isinstance(dataset, Mapping):
            from mmengine.registry import DATASETS as MM_DATASETS
            dataset = MM_DATASETS.build(dataset)
        self.dataset = dataset
        self.check_files = bool(check_files)
        self.max_attempts = int(max_attempts)

    # the wrapped dataset's face ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name == 'dataset':          # not yet set (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    @property
    def metainfo(self) -> dict:
        return self.dataset.metainfo

    def __repr__(self) -> str:
        return f'{type(self).__name__}(check_files={self.check_files}, dataset={self.dataset!r})'

    # loading -------------------------------------------------------------------------------------
    def _files(self, index: int) -> list[str]:
        get_info = getattr(self.dataset, 'get_data_info', None)
        if get_info is None:
            return []
        info = get_info(index)
        return [info[k] for k in _FILE_KEYS if isinstance(info.get(k), str)]

    def _load(self, index: int) -> tuple[Any, dict | None, BaseException | None]:
        """(sample, None, None), or (None, record, exception) when the sample is bad."""
        files = self._files(index)
        if self.check_files:
            # a path that is not a file is left to the pipeline: it names a missing file in its own error,
            # and in-memory sets (CIFAR) give their samples a name, not a file
            for path in filter(os.path.isfile, files):
                reason = check_image_file(path)
                if reason is not None:
                    return None, dict(index=index, path=path, reason=reason), None
        try:
            return self.dataset[index], None, None
        except Exception as e:  # noqa: BLE001  (any failure of one sample's pipeline is that sample's)
            where = files[0] if files else f'index {index}'
            return None, dict(index=index, path=where, reason=f'{type(e).__name__}: {e}'.splitlines()[0]), e

    def __getitem__(self, index: int) -> Any:
        seed = index.seed if isinstance(index, SampleIndex) else None
        index = int(index)
        key = index if seed is None else seed     # what the substitutes are drawn from
        records, error = [], None
        for attempt in range(self.max_attempts + 1):
            candidate, candidate_seed = index, seed
            if attempt:
                candidate = _splitmix64(key ^ (attempt * _GAMMA & _MASK64)) % len(self)
                candidate_seed = None if seed is None else _splitmix64(seed + attempt)
            with _sample_rngs(candidate_seed):
                sample, record, error = self._load(candidate)
            if record is None:
                if records:
                    if not isinstance(sample, dict):
                        raise BadSampleError(
                            f'{records[0]["path"]}: {records[0]["reason"]}; a substitute was loaded, but '
                            f'the dataset returns {type(sample).__name__} samples, not dicts, so the skip '
                            'cannot be reported')
                    sample[BAD_SAMPLES_KEY] = records
                return sample
            records.append(record)
        first = records[0]
        raise BadSampleError(
            f'{first["path"]}: {first["reason"]} (index {index}), and {len(records) - 1} substitutes failed '
            f'as well (last: {records[-1]["path"]}: {records[-1]["reason"]}); check the data root and the '
            'pipeline') from error


# ----------------------------------------------------------------------------- batch sampler and collate
@DATA_SAMPLERS.register_module()
class ResumableBatchSampler(BatchSampler):
    """A batch sampler that seeds every sample and can start an epoch part-way through.

    Wraps ``batch_sampler`` (a config built with ``sampler`` and ``batch_size``, e.g. mmdet's
    ``AspectRatioBatchSampler``) or, when it is ``None``, ``torch.utils.data.BatchSampler(sampler,
    batch_size, drop_last)``.  Yields the wrapped sampler's batches unchanged in order and content, each
    index a :class:`SampleIndex` whose seed is ``sample_seed(epoch_seed(seed, epoch, rank), position)``,
    ``position`` counting the samples of the epoch (skipped ones included).

    Args:
        sampler: the index sampler (mmengine builds it from the dataloader's ``sampler``).
        batch_size: samples per batch.
        drop_last: as ``BatchSampler`` (only without ``batch_sampler``).
        batch_sampler: the batch sampler config to wrap, or ``None``.
        seed: the run's seed (``runner.seed``).
        rank: this process's rank; ``None``: ``mmengine.dist.get_dist_info()``.
    """

    def __init__(self, sampler, batch_size: int, drop_last: bool = False, batch_sampler: dict | None = None,
                 seed: int = 0, rank: int | None = None) -> None:
        if batch_sampler is None:
            inner = BatchSampler(sampler, batch_size, drop_last)
        elif isinstance(batch_sampler, Mapping):
            from mmengine.registry import DATA_SAMPLERS as MM_SAMPLERS
            inner = MM_SAMPLERS.build(batch_sampler, default_args=dict(sampler=sampler, batch_size=batch_size))
        else:
            inner = batch_sampler
        if rank is None:
            from mmengine.dist import get_dist_info
            rank = get_dist_info()[0]
        # BatchSampler's own attributes, for code that reads them (mmengine's DistSamplerSeedHook reads
        # ``batch_sampler.sampler``)
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, getattr(inner, 'drop_last', drop_last)
        self.batch_sampler = inner
        self.seed, self.rank, self.epoch = int(seed), int(rank), 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Select ``epoch``: the seeds' epoch, and the wrapped sampler's (its ``set_epoch``, if it has one)."""
        self.epoch = int(epoch)
        set_epoch: Callable | None = getattr(self.sampler, 'set_epoch', None)
        if set_epoch is not None:
            set_epoch(self.epoch)

    def skip(self, batches: int) -> None:
        """Make the next pass over this sampler start after its first ``batches`` batches.

        Their indices are drawn from the wrapped sampler and dropped, so the batches that follow, and
        their seeds, are those of an uninterrupted pass.  Applies to one pass; later passes are whole.
        """
        if batches < 0:
            raise ValueError(f'ResumableBatchSampler.skip: batches must be >= 0, got {batches}')
        self._skip = int(batches)

    def __iter__(self) -> Iterator[list[SampleIndex]]:
        skip, self._skip = self._skip, 0
        base = epoch_seed(self.seed, self.epoch, self.rank)
        position = 0
        for i, batch in enumerate(self.batch_sampler):
            if i >= skip:
                yield [SampleIndex(index, sample_seed(base, position + k)) for k, index in enumerate(batch)]
            position += len(batch)

    def __len__(self) -> int:
        return len(self.batch_sampler)


class RecordingCollate:
    """The training loader's ``collate_fn``: removes the bad-sample records :class:`FaultTolerantDataset`
    attached to samples, collates the rest with ``collate_fn``, and returns ``(batch, records)``.

    ``records`` is a list of ``dict(index, path, reason)``, empty for a batch without substitutions; it
    reaches the main process with the batch, from whichever worker loaded it.
    """

    def __init__(self, collate_fn: Callable[[Sequence[Any]], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, samples: Sequence[Any]) -> tuple[Any, list[dict]]:
        records: list[dict] = []
        for sample in samples:
            if isinstance(sample, dict) and BAD_SAMPLES_KEY in sample:
                records.extend(sample.pop(BAD_SAMPLES_KEY))
        return self.collate_fn(samples), records
