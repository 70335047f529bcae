"""Worker processes draw distinct NumPy/``random`` numbers, reproducibly from the loader's seed.

(torch >= 1.9 itself seeds NumPy and ``random`` in each worker from the loader's base seed, so
``seed_worker`` repeats what torch does; this pins the behaviour, whoever provides it.)
"""

import random

import numpy as np
import torch

from strop.data import make_loader


class _Draws(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.tensor([np.random.randint(2**31), random.randrange(2**31)])


def _draws(seed):
    loader = make_loader(_Draws(), batch_size=1, shuffle=False, seed=seed, num_workers=2)
    return torch.cat(list(loader)).tolist()


def test_workers_draw_distinct_numpy_and_random_numbers_reproducibly():
    # caught by: workers sharing the parent's NumPy state, a loader generator not seeded from seed
    np.random.seed(0)
    random.seed(0)
    first = _draws(seed=5)
    numpy_draws, random_draws = [d[0] for d in first], [d[1] for d in first]
    assert len(set(numpy_draws)) == 4 and len(set(random_draws)) == 4, first
    assert _draws(seed=5) == first  # a function of the loader's seed
    assert _draws(seed=6) != first
