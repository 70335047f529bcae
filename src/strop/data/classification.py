"""Classification folders: ``root/<class>/<image>`` (or ``train/`` + ``val/``) to datasets."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from strop._checks import fail
from strop.data._dataset import FolderDataset, check_folder_args
from strop.data._scan import (
    IMAGE_EXTENSIONS,
    CacheSpec,
    common_size,
    list_files,
    listing,
    mark_unsupported,
    report_bad,
    split_indices,
    validate,
)
from strop.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Augment, load_image

__all__ = ["ImageFolderDataset", "image_folder"]


class ImageFolderDataset(FolderDataset):
    """Labelled images: item ``i`` is ``(float32 tensor (3, H, W), int label)``.

    The pipeline per item: decode (PIL) -> RGB -> resize to ``image_size`` (bilinear, antialias)
    -> ``uint8`` (cached when ``cache`` is set) -> augmentation (``augment``) -> ``ToDtype(float32,
    scale=True)`` -> ``Normalize(mean, std)``.

    Attributes: ``samples`` (list of ``(path, label)``), ``targets``, ``classes``,
    ``class_to_idx``, ``image_size`` ``(H, W)``, ``deterministic`` (``True`` when no random
    augmentation runs, so an item is the same tensor every epoch — what the trainer's feature
    cache requires), ``cache`` (the :class:`~strop.data.cache.SampleCache` or ``None``).
    """

    def __init__(
        self,
        samples: Sequence[tuple[str | os.PathLike[str], int]],
        classes: Sequence[str],
        *,
        image_size: int | Sequence[int],
        augment: Augment = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        cache: CacheSpec = None,
        cache_root: str | os.PathLike[str] | None = None,
        hflip: bool = True,
        color_jitter: float | Sequence[float] | None = None,
        random_erasing: float = 0.0,
    ) -> None:
        func = "ImageFolderDataset"
        super().__init__(
            func,
            image_size=image_size,
            augment=augment,
            mean=mean,
            std=std,
            task="classification",
            hflip=hflip,
            color_jitter=color_jitter,
            random_erasing=random_erasing,
        )
        self.samples = [(Path(p), int(t)) for p, t in samples]
        self.targets = [t for _, t in self.samples]
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        fields = {"image": ((3, *self.image_size), torch.uint8)}
        paths = [p for p, _ in self.samples]
        self._init_cache(func, cache, cache_root, paths, fields, "image_folder")

    def load(self, index: int) -> Tensor:
        """Item ``index`` after decoding and resizing: ``uint8 (3, H, W)``, from the cache if set."""
        if self.cache is not None:
            hit = self.cache.get(index)
            if hit is not None:
                return hit[0]
        path = self.samples[index][0]
        try:
            image = load_image(path, self.image_size)
        except Exception as exc:
            raise ValueError(f"ImageFolderDataset: cannot decode {str(path)!r}: {exc}") from exc
        if self.cache is not None:
            self.cache.put(index, image)
        return image

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image: Any = self.load(index)
        if self._augment is not None:
            image = self._augment(image)
        return self._normalize(image), self.targets[index]

    def __repr__(self) -> str:
        return (
            f"ImageFolderDataset({len(self)} images, {len(self.classes)} classes, "
            f"image_size={self.image_size}, augment={self.augment!r}, cache={self.cache is not None})"
        )


def _scan_classes(
    func: str, folder: Path, classes: Sequence[str] | None
) -> tuple[list[str], dict[str, list[Path]], list[Path]]:
    """``(class names, images per class, unsupported files)`` of one split folder."""
    names = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        fail(
            func,
            f"no class folders in {str(folder)!r}",
            hint="expected root/<class>/<image>, or root/train/<class>/... and root/val/<class>/...",
        )
    if classes is not None:
        unknown = sorted(set(names) - set(classes))
        if unknown:
            fail(func, f"{str(folder)!r} has class folders that train/ lacks: {', '.join(unknown)}")
    per_class: dict[str, list[Path]] = {}
    other: list[Path] = []
    for name in names:
        images, rest = list_files(folder / name)
        per_class[name] = images
        other.extend(rest)
    return names, per_class, other


def _check_no_empty_class(
    func: str,
    root: Path,
    splits: Sequence[tuple[Path, dict[str, list[Path]]]],
    bad: dict[Path, str],
) -> None:
    """Refuse a class folder whose images are all unreadable (or that has none)."""
    for folder, files in splits:
        for name, paths in files.items():
            if any(p not in bad for p in paths):
                continue
            skipped = [p for p in bad if (folder / name) in p.parents]
            detail = (
                f" ({len(skipped)} unreadable file(s): {listing(skipped, root)})" if skipped else ""
            )
            fail(
                func,
                f"class folder {str(folder / name)!r} contains no readable images{detail}",
                hint=f"add images ({', '.join(IMAGE_EXTENSIONS)}) or remove the folder",
            )


def _samples(
    files: dict[str, list[Path]], classes: list[str], bad: dict[Path, str]
) -> list[tuple[Path, int]]:
    return [(p, classes.index(c)) for c in sorted(files) for p in files[c] if p not in bad]


def image_folder(
    root: str | os.PathLike[str],
    *,
    image_size: int | Sequence[int] | None,
    val_fraction: float = 0.2,
    seed: int = 0,
    augment: Augment = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    strict: bool = False,
    cache: CacheSpec = None,
    val_folder: str | None = None,
    hflip: bool = True,
    color_jitter: float | Sequence[float] | None = None,
    random_erasing: float = 0.0,
) -> tuple[ImageFolderDataset, ImageFolderDataset, list[str]]:
    """Classification datasets from a folder tree: ``(train_ds, val_ds, classes)``.

    Layouts:
        - ``root/<class>/<image>``: split per class by ``val_fraction`` and ``seed``
          (deterministic, stratified; see :func:`split_indices`).
        - ``root/train/<class>/...`` and ``root/val/<class>/...`` (or ``valid/``,
          ``validation/``; ``test/`` only with ``val_folder="test"``): the given split
          (``val_fraction`` is ignored); ``val/`` may lack classes but not add any. With
          ``train/`` alone, ``train/`` is split as above. Another folder beside ``train/``
          (other than ``test/``) is an error: it would be silently ignored otherwise.

    Classes are the sorted names of the (non-hidden) sub-folders; label ``i`` is ``classes[i]``.
    Images are read recursively below each class folder.

    Args:
        image_size: model input, ``s`` for ``s x s`` or ``(H, W)``; every image is resized to it.
            ``None``: the images' own size, when they all share one (else ``ValueError``).
        augment: training augmentation (``val_ds`` never augments): ``False``; ``True`` /
            ``"standard"`` = ``RandomResizedCrop(scale=(0.7, 1))`` + horizontal flip; ``"crop"``
            = the crop alone (use it for digits and text, which a flip changes); ``"flip"``,
            ``"trivialaugment"``, ``"randaugment"``, ``"autoaugment"``, ``"augmix"``; or a
            callable on the ``uint8`` tensor (:func:`strop.data.transforms.augmentation`).
        hflip, color_jitter, random_erasing: training-only augmentation options (no flip in any
            preset; ``ColorJitter`` strength; ``RandomErasing`` probability).
        mean, std: per-channel normalisation after scaling to [0, 1]; torchvision ``Weights``
            give theirs as ``weights.transforms().mean/std``. Default: ImageNet's.
        strict: ``False`` skips unreadable/non-image files with one :class:`BadFilesWarning`;
            ``True`` raises ``ValueError`` naming them.
        cache: ``None``; ``"memory"``; ``"disk"`` (``root/.strop_cache``) or a directory —
            keeps decoded, resized ``uint8`` images after their first read.
        val_folder: the validation folder's name beside ``train/`` (default: whichever of
            ``val``, ``valid``, ``validation`` exists).

    Returns:
        ``train_ds``, ``val_ds`` (:class:`ImageFolderDataset`, items ``(float32 (3, H, W), int)``)
        and ``classes``.

    Raises:
        ValueError: missing root, no class folders, a class folder without readable images,
            bad files with ``strict=True``, bad arguments.
    """
    func = "image_folder"
    args = check_folder_args(
        func,
        "classification",
        root=root,
        image_size=image_size,
        val_fraction=val_fraction,
        seed=seed,
        augment=augment,
        mean=mean,
        std=std,
        cache=cache,
        val_folder=val_folder,
        hflip=hflip,
        color_jitter=color_jitter,
        random_erasing=random_erasing,
    )
    path, train_dir, val_dir, size = args.root, args.train_dir, args.val_dir, args.size

    classes, train_files, other = _scan_classes(func, train_dir, None)
    splits = [(train_dir, train_files)]
    if val_dir is not None:
        _, val_files, val_other = _scan_classes(func, val_dir, classes)
        splits.append((val_dir, val_files))
        other += val_other

    sizes, bad = validate([p for _, files in splits for paths in files.values() for p in paths])
    mark_unsupported(bad, other)
    _check_no_empty_class(func, path, splits, bad)
    report_bad(func, path, bad, strict)
    if size is None:
        size = common_size(func, sizes, path)

    train_samples = _samples(train_files, classes, bad)
    if val_dir is not None:
        val_samples = _samples(splits[1][1], classes, bad)
    else:
        tr, va = split_indices([t for _, t in train_samples], val_fraction, seed)
        train_samples, val_samples = [train_samples[i] for i in tr], [train_samples[i] for i in va]

    common = {"image_size": size, **args.dataset}
    train_ds = ImageFolderDataset(train_samples, classes, augment=augment, **common, **args.options)
    val_ds = ImageFolderDataset(val_samples, classes, augment=False, **common)
    return train_ds, val_ds, list(classes)
