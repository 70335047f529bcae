"""The training sampler: torch's ``DistributedSampler`` that can start part-way into an epoch."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DistributedSampler

from strop.train.distributed import DistContext

__all__ = ["ResumableSampler"]


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (also for one process) that can start part-way into an epoch.

    The order of epoch ``e`` is ``randperm`` seeded with ``seed + e`` — torch's own rule — so a
    resumed run sees exactly the batches the uninterrupted one would have.
    """

    def __init__(
        self, dataset: Any, *, ctx: DistContext, seed: int, shuffle: bool, batch_size: int
    ):
        super().__init__(
            dataset,
            num_replicas=ctx.world_size,
            rank=ctx.rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=False,
        )
        self.batch_size = batch_size
        self.skip = 0

    def set_position(self, epoch: int, batches_done: int = 0) -> None:
        """Select ``epoch``'s order and skip the first ``batches_done`` batches of it."""
        self.set_epoch(epoch)
        self.skip = batches_done * self.batch_size

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return max(super().__len__() - self.skip, 0)
