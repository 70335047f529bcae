"""make_loader settings and reproducibility; materialize."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import SequentialSampler, TensorDataset

from strop.data import auto_num_workers, image_folder, make_loader, materialize


def _order(loader):
    return torch.cat([y for _, y in loader]).tolist()


def test_seeded_shuffle_reproducible():
    ds = TensorDataset(torch.zeros(50, 1), torch.arange(50))
    a = make_loader(ds, batch_size=8, shuffle=True, seed=7, num_workers=0)
    b = make_loader(ds, batch_size=8, shuffle=True, seed=7, num_workers=0)
    c = make_loader(ds, batch_size=8, shuffle=True, seed=8, num_workers=0)
    epochs_a = [_order(a) for _ in range(2)]
    assert epochs_a == [_order(b) for _ in range(2)]
    assert epochs_a[0] != epochs_a[1]  # a new permutation each epoch
    assert epochs_a[0] != _order(c)
    assert sorted(epochs_a[0]) == list(range(50))


def test_settings_on_cpu():
    ds = TensorDataset(torch.zeros(10, 1), torch.arange(10))
    loader = make_loader(ds, batch_size=4, shuffle=False, seed=0, num_workers=0, drop_last=True)
    assert not loader.pin_memory and loader.num_workers == 0 and len(loader) == 2
    assert _order(loader) == list(range(8))


def test_workers_and_augmentation_reproducible(digits_root):
    train, _, _ = image_folder(digits_root, image_size=8, augment="crop")
    subset = torch.utils.data.Subset(train, range(24))

    def run():
        loader = make_loader(subset, batch_size=8, shuffle=True, seed=3, num_workers=1)
        assert loader.persistent_workers and loader.worker_init_fn is not None
        return torch.cat([x for x, _ in loader])

    assert torch.equal(run(), run())


@pytest.mark.parametrize(
    ("n", "batch", "cpus", "expected"),
    [
        (10_000, 32, 2, 0),
        (10_000, 32, 1, 0),
        (64, 32, 16, 0),
        (10_000, 32, 4, 2),
        (10_000, 32, 16, 8),
        (10_000, 32, 64, 8),
    ],
)
def test_auto_num_workers(n, batch, cpus, expected):
    assert auto_num_workers(n, batch, cpus=cpus) == expected


def test_sampler(digits_root):
    ds = TensorDataset(torch.zeros(5, 1), torch.arange(5))
    loader = make_loader(ds, batch_size=2, shuffle=False, seed=0, sampler=SequentialSampler(ds))
    assert _order(loader) == [0, 1, 2, 3, 4]
    with pytest.raises(
        ValueError, match=r"make_loader: shuffle must be False when a sampler is given"
    ):
        make_loader(ds, batch_size=2, shuffle=True, seed=0, sampler=SequentialSampler(ds))


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"batch_size": 0}, ValueError, "batch_size must be > 0"),
        ({"num_workers": -1}, ValueError, "num_workers must be >= 0"),
        ({"num_workers": "many"}, ValueError, "num_workers must be an int >= 0 or 'auto'"),
        ({"shuffle": 1}, TypeError, "shuffle must be a bool"),
        ({"device": "gpu0"}, ValueError, "device must be a torch device"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    ds = TensorDataset(torch.zeros(5, 1), torch.arange(5))
    args = {"batch_size": 2, "shuffle": False, "seed": 0, **kwargs}
    with pytest.raises(exc, match=f"make_loader: {match}"):
        make_loader(ds, **args)


def test_materialize_matches_items(digits_root, shapes_root):
    train, _, _ = image_folder(digits_root, image_size=8)
    mem = materialize(train, batch_size=64)
    x, y = mem.tensors
    assert x.shape == (len(train), 3, 8, 8) and y.dtype == torch.int64
    assert torch.equal(x[17], train[17][0]) and y[17].item() == train.targets[17]
    from strop.data import segmentation_folder

    seg, _, _ = segmentation_folder(shapes_root, image_size=8)
    _xs, ms = materialize(seg).tensors
    assert ms.shape == (len(seg), 8, 8) and torch.equal(ms[3], seg[3][1])
