"""The training samplers: torch's ``DistributedSampler`` and strop's class-balanced sampler, each
able to start part-way into an epoch."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DistributedSampler

from strop.data.samplers import BalancedSampler
from strop.train.distributed import DistContext

__all__ = ["ResumableBalancedSampler", "ResumableSampler"]


class _StartsMidEpoch:
    """Skips the first batches of an epoch, for a sampler whose order is a function of
    ``seed + epoch`` (``set_epoch``), so that a resumed run sees exactly the batches the
    uninterrupted one would have."""

    batch_size: int
    skip: int = 0

    def set_position(self, epoch: int, batches_done: int = 0) -> None:
        """Select ``epoch``'s order and skip the first ``batches_done`` batches of it."""
        self.set_epoch(epoch)  # type: ignore[attr-defined]
        self.skip = batches_done * self.batch_size

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.skip, None)  # type: ignore[misc]

    def __len__(self) -> int:
        return max(super().__len__() - self.skip, 0)  # type: ignore[misc]


class ResumableSampler(_StartsMidEpoch, DistributedSampler):
    """``DistributedSampler`` (also for one process) that can start part-way into an epoch.

    The order of epoch ``e`` is ``randperm`` seeded with ``seed + e`` — torch's own rule.
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


class ResumableBalancedSampler(_StartsMidEpoch, BalancedSampler):
    """:class:`~strop.data.samplers.BalancedSampler` that can start part-way into an epoch (its
    order is a function of ``seed + epoch`` too)."""

    def __init__(self, labels: Any, *, ctx: DistContext, seed: int, batch_size: int) -> None:
        super().__init__(labels, seed=seed, num_replicas=ctx.world_size, rank=ctx.rank)
        self.batch_size = batch_size
