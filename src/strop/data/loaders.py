"""DataLoader settings that keep the model fed, and in-memory copies of datasets."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from strop._checks import check_positive, fail

__all__ = ["auto_num_workers", "collate_batch", "make_loader", "materialize", "seed_worker"]


def collate_batch(items: list[Any]) -> Any:
    """torch's ``default_collate``, except for a batch a folder dataset already stacked
    (:class:`strop.data._dataset.StackedItems`): its image tensor is the batch's first entry as
    it is — the same values ``default_collate`` would stack from the per-item views, one copy of
    the batch fewer — and the rest of each item is collated by ``default_collate``."""
    from torch.utils.data import default_collate

    from strop.data._dataset import StackedItems

    if isinstance(items, StackedItems) and items and isinstance(items[0], tuple):
        return [items.images, *default_collate([item[1:] for item in items])]
    return default_collate(items)


# With the uint8 cache or small images the main process keeps up, and a worker only steals a
# core from the model; below ~4 batches the worker start-up costs more than the epoch
# (docs/data.md has the measurements).
_MIN_BATCHES_FOR_WORKERS = 4
_MAX_WORKERS = 8


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def auto_num_workers(n_items: int, batch_size: int, *, cpus: int | None = None) -> int:
    """The ``num_workers`` that ``make_loader(num_workers="auto")`` uses.

    0 (load in the training process) when the machine has 2 usable cores or fewer, or the dataset
    is under 4 batches; otherwise ``min(8, cpus // 2)``, leaving half the cores to the model's
    intra-op threads.
    """
    cpus = _cpu_count() if cpus is None else cpus
    if cpus <= 2 or n_items < _MIN_BATCHES_FOR_WORKERS * batch_size:
        return 0
    return min(_MAX_WORKERS, cpus // 2)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed NumPy and ``random`` from the worker's torch seed.

    torch seeds each worker from the loader's generator (``base_seed + worker_id``); NumPy is not
    seeded by torch, so without this every worker would share NumPy's state.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    ds: Dataset[Any],
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int | str = "auto",
    device: str | torch.device = "cpu",
    drop_last: bool = False,
    sampler: Sampler[Any] | None = None,
    persistent_workers: bool | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader[Any]:
    """A ``DataLoader`` with reproducible order and settings suited to the machine.

    - shuffling uses a ``torch.Generator`` seeded with ``seed`` (kept as ``loader.generator``):
      two loaders built with the same seed yield the same batches, epoch after epoch;
    - ``num_workers="auto"``: see :func:`auto_num_workers`; with workers, ``persistent_workers``
      (no re-fork per epoch, and a ``"memory"`` cache filled by them stays shared) and
      :func:`seed_worker`;
    - ``pin_memory`` only when ``device`` is CUDA (pinning for a CPU model only costs time).

    ``sampler`` replaces shuffling (``shuffle`` must then be ``False``). With ``num_workers=0``,
    random augmentation draws from torch's global RNG, which the trainer seeds.
    ``persistent_workers=False`` re-forks the workers each epoch, so reseeding ``loader.generator``
    before an epoch makes the workers' random streams a function of that seed (exact resume with
    random augmentation); ``None`` means persistent whenever there are workers.
    """
    func = "make_loader"
    check_positive(func, "batch_size", batch_size, integer=True)
    check_positive(func, "seed", seed, allow_zero=True, integer=True)
    if not isinstance(shuffle, bool):
        fail(
            func, f"shuffle must be a bool; got {type(shuffle).__name__} {shuffle!r}", exc=TypeError
        )
    if sampler is not None and shuffle:
        fail(
            func,
            "shuffle must be False when a sampler is given (the sampler decides the order); got shuffle=True",
        )
    if not isinstance(ds, Sized):
        fail(
            func,
            f"ds must be a map-style dataset with a length; got {type(ds).__name__}",
            exc=TypeError,
        )
    if num_workers == "auto":
        workers = auto_num_workers(len(ds), batch_size)
    else:
        if isinstance(num_workers, str):
            fail(func, f"num_workers must be an int >= 0 or 'auto'; got {num_workers!r}")
        check_positive(func, "num_workers", num_workers, allow_zero=True, integer=True)
        workers = int(num_workers)
    try:
        pin = torch.device(device).type == "cuda"
    except (RuntimeError, TypeError) as exc:
        fail(func, f"device must be a torch device or its name; got {device!r} ({exc})")
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin,
        drop_last=drop_last,
        persistent_workers=workers > 0
        if persistent_workers is None
        else (persistent_workers and workers > 0),
        worker_init_fn=seed_worker if workers > 0 else None,
        generator=generator,
        collate_fn=collate_fn or collate_batch,
    )


def materialize(ds: Dataset[Any], *, batch_size: int = 256, num_workers: int = 0) -> TensorDataset:
    """The whole dataset as tensors in memory: ``TensorDataset(inputs, targets)``.

    Items are read once, in order (a dataset with random augmentation contributes one draw).
    Inputs stack to ``(N, ...)``; integer labels become an ``int64`` tensor ``(N,)``, masks
    ``(N, H, W)``. Benchmarks use it to compare reading from a folder with reading from memory.
    """
    check_positive("materialize", "batch_size", batch_size, integer=True)
    if not isinstance(ds, Sized):
        fail(
            "materialize",
            f"ds must be a map-style dataset with a length; got {type(ds).__name__}",
            exc=TypeError,
        )
    if len(ds) == 0:
        fail("materialize", "ds is empty; nothing to materialize")
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    xs, ys = [], []
    for x, y in loader:
        xs.append(x)
        ys.append(torch.as_tensor(y))
    return TensorDataset(torch.cat(xs), torch.cat(ys))
