"""DeiT's repeated-augmentation sampler, adapted to mmengine's sampler construction."""
from __future__ import annotations

from collections.abc import Iterator, Sized

from mmengine.dist import get_dist_info, sync_random_seed
from timm.data.distributed_sampler import RepeatAugSampler as _TimmRepeatAugSampler

from ..registry import DATA_SAMPLERS

__all__ = ['RepeatAugSampler']


@DATA_SAMPLERS.register_module()
class RepeatAugSampler(_TimmRepeatAugSampler):
    """Repeated augmentation (Hoffer et al. 2020; DeiT's ``RASampler``), via timm's implementation.

    ``timm.data.distributed_sampler.RepeatAugSampler`` (copied by timm from
    ``facebookresearch/deit/samplers.py``) does the work; this subclass only adapts it to mmengine:
    rank / world size come from ``mmengine.dist.get_dist_info()`` (so it also runs without
    ``torch.distributed`` initialised), and the shuffle is seeded with ``seed + epoch`` like
    mmengine's ``DefaultSampler`` (timm/DeiT seed with ``epoch`` alone; ``seed=0`` reproduces their
    order exactly).  mmengine builds it as ``DATA_SAMPLERS.build(cfg, default_args=dict(dataset=...,
    seed=...))`` and its train loop calls ``set_epoch(epoch)`` before each epoch.

    Semantics (timm/DeiT, unchanged): each epoch permutes the dataset, repeats every index
    ``num_repeats`` times consecutively (``[a, a, a, b, b, b, ...]``, padded by wrap-around to a
    multiple of the world size) and deals them round-robin to the ranks, so with 3 or more GPUs the
    copies of an image land on different GPUs (different augmentations).  Each rank then yields only
    the first ``len(self)`` of its share, where ``len(self) = floor(len(dataset) // selected_round *
    selected_round / selected_ratio)`` (``selected_ratio`` 0 -> world size; ``ceil(len(dataset) /
    selected_ratio)`` when the dataset is smaller than ``selected_round``), capped at the rank's
    share.  So an epoch keeps the usual number of iterations and shows about ``1/num_repeats`` of
    the distinct images, each ``num_repeats`` times.  To see every image ``num_repeats`` times per
    epoch, pass ``selected_round=0, selected_ratio=world_size / num_repeats``.

    Args:
        dataset: sized dataset.
        shuffle: permute each epoch (else ``0..N-1`` in order, still repeated).
        num_repeats: copies of each index (3 in DeiT); a non-integer float resamples.
        seed: shuffle seed, identical on all ranks; ``None`` -> a random seed broadcast from rank 0
            (``mmengine.dist.sync_random_seed``), as ``DefaultSampler`` does.
        selected_round, selected_ratio: timm's epoch-length controls (see above).
        num_replicas, rank: override the values from ``get_dist_info()`` (for tests / tools).

    Yields:
        int dataset indices; ``len(self)`` of them per epoch per rank.
    """

    def __init__(self,
                 dataset: Sized,
                 shuffle: bool = True,
                 num_repeats: int | float = 3,
                 seed: int | None = None,
                 selected_round: int = 256,
                 selected_ratio: float = 0,
                 num_replicas: int | None = None,
                 rank: int | None = None) -> None:
        dist_rank, world_size = get_dist_info()
        num_replicas = world_size if num_replicas is None else num_replicas
        rank = dist_rank if rank is None else rank
        if not 0 <= rank < num_replicas:
            raise ValueError(f'RepeatAugSampler: rank {rank} not in [0, {num_replicas})')
        if num_repeats <= 0:
            raise ValueError(f'RepeatAugSampler: num_repeats must be > 0, got {num_repeats}')
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         num_repeats=num_repeats, selected_round=selected_round,
                         selected_ratio=selected_ratio)
        self.seed = sync_random_seed() if seed is None else int(seed)

    def __iter__(self) -> Iterator[int]:
        # timm seeds its generator with ``self.epoch``; lend it ``seed + epoch`` for one call and
        # materialise the indices before restoring, so this holds whether timm's __iter__ is eager
        # or a generator.
        epoch = self.epoch
        self.epoch = self.seed + epoch
        try:
            indices = list(super().__iter__())
        finally:
            self.epoch = epoch
        return iter(indices)

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of ``epoch`` (mmengine's train loop calls this every epoch)."""
        self.epoch = int(epoch)
