"""Both training samplers start part-way into an epoch: the rest of the epoch, batch for batch."""

from __future__ import annotations

import pytest
import torch

from strop.data.samplers import BalancedSampler
from strop.train.distributed import DistContext
from strop.train.sampler import ResumableBalancedSampler, ResumableSampler


def test_resumable_sampler_skips_the_batches_done_of_torchs_epoch_order():
    sampler = ResumableSampler(
        list(range(10)), ctx=DistContext(), seed=3, shuffle=True, batch_size=4
    )
    sampler.set_position(epoch=2, batches_done=1)
    # DistributedSampler's rule: randperm seeded with seed + epoch
    full = torch.randperm(10, generator=torch.Generator().manual_seed(3 + 2)).tolist()
    assert list(sampler) == full[4:] and len(sampler) == 6
    sampler.set_position(epoch=2, batches_done=3)  # past the end: nothing left
    assert list(sampler) == [] and len(sampler) == 0
    sampler.set_position(epoch=2)
    assert list(sampler) == full and len(sampler) == 10


@pytest.mark.parametrize("batches_done", [0, 1, 2])
def test_resumable_balanced_sampler_skips_the_batches_done_of_the_balanced_order(batches_done):
    labels = [0] * 8 + [1] * 2
    plain = BalancedSampler(labels, seed=5)
    plain.set_epoch(1)
    full = list(plain)
    sampler = ResumableBalancedSampler(labels, ctx=DistContext(), seed=5, batch_size=3)
    sampler.set_position(epoch=1, batches_done=batches_done)
    assert list(sampler) == full[3 * batches_done :]
    assert len(sampler) == len(full) - 3 * batches_done
