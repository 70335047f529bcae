"""What the two folder datasets share: normalisation statistics, augmentation, the uint8 cache."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from strop.data._scan import (
    CacheSpec,
    check_cache,
    check_common,
    check_root,
    check_stats,
    split_layout,
)
from strop.data.cache import SampleCache, cache_key
from strop.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Augment,
    augmentation,
    normalization,
    resolve_size,
)

__all__ = ["FolderArgs", "FolderDataset", "StackedItems", "check_folder_args", "make_cache"]


class StackedItems(list):  # type: ignore[type-arg]
    """The items of one batch (a list, as ``__getitems__`` must return) whose images are already
    one tensor, ``images``: :func:`strop.data.loaders.collate_batch` takes it as the batch instead of stacking
    the per-item views of it into a copy."""

    images: torch.Tensor


def make_cache(
    func: str,
    cache: CacheSpec,
    root: Path,
    paths: Sequence[Path],
    fields: dict[str, Any],
    *extra: object,
) -> SampleCache | None:
    """The :class:`SampleCache` that ``cache`` names (``None``, ``"memory"``, ``"disk"`` = ``root/
    .strop_cache``, or a directory), keyed by the files and the stored fields on disk."""
    check_cache(func, cache)
    if cache is None or len(paths) == 0:
        return None
    if isinstance(cache, str) and cache == "memory":
        return SampleCache(len(paths), fields, location="memory", key="")
    if isinstance(cache, str) and cache == "disk":
        location: Path = root / ".strop_cache"
    else:
        location = Path(cache)  # type: ignore[arg-type]
    key = cache_key(paths, *[(k, v[0], str(v[1])) for k, v in fields.items()], *extra)
    return SampleCache(len(paths), fields, location=location, key=key)


@dataclass(frozen=True)
class FolderArgs:
    """The checked arguments that ``image_folder`` and ``segmentation_folder`` share.

    ``size``: ``(H, W)``, or ``None`` for the images' own size. ``options``: the training-only
    augmentation options (``hflip``, ``color_jitter``, ``random_erasing``). ``dataset``: the
    keyword arguments both datasets of a split take (size, statistics, cache).
    """

    root: Path
    train_dir: Path
    val_dir: Path | None
    size: tuple[int, int] | None
    options: dict[str, Any]
    dataset: dict[str, Any]


def check_folder_args(
    func: str,
    task: str,
    *,
    root: str | os.PathLike[str],
    image_size: int | Sequence[int] | None,
    val_fraction: float,
    seed: int,
    augment: Augment,
    mean: Sequence[float],
    std: Sequence[float],
    cache: CacheSpec,
    val_folder: str | None,
    hflip: bool,
    color_jitter: float | Sequence[float] | None,
    random_erasing: float,
) -> FolderArgs:
    """Check a folder builder's common arguments (before any file is read) and find the layout."""
    size = None if image_size is None else resolve_size(func, image_size)
    check_common(func, val_fraction, seed)
    mean, std = check_stats(func, "mean", mean), check_stats(func, "std", std)
    options = {"hflip": hflip, "color_jitter": color_jitter, "random_erasing": random_erasing}
    augmentation(func, augment, size or (1, 1), task=task, **options)  # validate now
    check_cache(func, cache)
    path = check_root(func, root)
    train_dir, val_dir = split_layout(func, path, val_folder)
    dataset = {"mean": mean, "std": std, "cache": cache, "cache_root": path}
    return FolderArgs(path, train_dir, val_dir, size, options, dataset)


def _stack_uint8(images: Sequence[Any]) -> torch.Tensor:
    """``(B, 3, H, W)`` from same-shaped ``uint8`` images. When every image is a CHW view of an
    HWC buffer (TorchCodec's decoders return those), the buffers are stacked as they are — a
    plain copy, giving a channels_last batch — instead of transposing each image on the way."""
    plain = [x.as_subclass(torch.Tensor) for x in images]
    if plain[0].dim() == 3:
        hwc = [x.permute(1, 2, 0) for x in plain]
        if all(x.is_contiguous() for x in hwc):
            return torch.stack(hwc).permute(0, 3, 1, 2)
    return torch.stack(plain)


class FolderDataset(Dataset[Any]):
    """Base of the folder datasets: sets ``image_size`` ``(H, W)``, ``mean``, ``std``,
    ``augment``, ``deterministic`` (no random augmentation runs) and ``cache``. ``task``,
    ``hflip``, ``color_jitter``, ``random_erasing``: see :func:`strop.data.transforms.augmentation`."""

    samples: list[Any]
    #: the layout of the image batches :meth:`__getitems__` returns; the trainer sets it to the
    #: model's memory format (its values never depend on it)
    batch_memory_format: torch.memory_format = torch.contiguous_format

    def __init__(
        self,
        func: str,
        *,
        image_size: int | Sequence[int],
        augment: Augment,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        task: str = "classification",
        hflip: bool = True,
        color_jitter: float | Sequence[float] | None = None,
        random_erasing: float = 0.0,
    ) -> None:
        self.image_size = resolve_size(func, image_size)
        self.mean = check_stats(func, "mean", mean)
        self.std = check_stats(func, "std", std)
        self.augment = augment
        self._augment = augmentation(
            func,
            augment,
            self.image_size,
            task=task,
            hflip=hflip,
            color_jitter=color_jitter,
            random_erasing=random_erasing,
        )
        # colour jitter / erasing are random even with augment="none"
        self.deterministic = self._augment is None
        self._normalize = normalization(self.mean, self.std)
        self.cache: SampleCache | None = None

    def _init_cache(
        self,
        func: str,
        cache: CacheSpec,
        cache_root: str | os.PathLike[str] | None,
        paths: Sequence[Path],
        fields: dict[str, tuple[tuple[int, ...], torch.dtype]],
        tag: str,
    ) -> None:
        if cache_root is not None:
            root = Path(cache_root)
        else:
            root = paths[0].parent if paths else Path(".")
        self.cache = make_cache(func, cache, root, paths, fields, tag)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """The items ``indices`` (what ``DataLoader`` asks for, a batch at a time), with the
        images scaled and normalised in one call on the stacked ``uint8`` batch rather than one
        call per image: the same tensors as ``[self[i] for i in indices]`` bit for bit (the
        arithmetic is elementwise), at a fraction of the per-image overhead.

        Items are built by ``__getitem__`` with the normalisation deferred; when every image is a
        ``uint8`` tensor of one shape they are normalised together, otherwise (a custom
        augmentation that returns floats or sizes that differ) one by one as ``__getitem__``
        would. Each returned image is a view into the normalised batch (the default collate
        stacks them into one tensor).
        """
        norm = self._normalize
        norm.deferred = True
        try:
            items = [self[i] for i in indices]
        finally:
            norm.deferred = False
        images = [item[0] for item in items]
        if images and all(
            isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.shape == images[0].shape
            for x in images
        ):
            batch = norm.apply(_stack_uint8(images), self.batch_memory_format)
            out = StackedItems((batch[k], *item[1:]) for k, item in enumerate(items))
            out.images = batch
            return out
        return [(norm.apply(x), *item[1:]) for x, item in zip(images, items, strict=True)]
