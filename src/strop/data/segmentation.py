"""Segmentation folders: ``images/`` + ``masks/`` (or ``train/`` + ``val/`` of them) to datasets."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from strop._checks import check_positive, fail
from strop.data._dataset import FolderDataset, check_folder_args
from strop.data._scan import (
    LOSSY_SUFFIXES,
    MAX_LISTED,
    CacheSpec,
    common_size,
    list_files,
    listing,
    mark_unsupported,
    report_bad,
    split_indices,
    validate,
)
from strop.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Augment,
    as_tv,
    load_image,
    load_mask,
    read_mask_array,
)

__all__ = ["SegmentationFolderDataset", "segmentation_folder"]

Pair = tuple[Path, Path]


class SegmentationFolderDataset(FolderDataset):
    """Image/mask pairs: item ``i`` is ``(float32 (3, H, W), int64 (H, W) mask)``.

    The image goes through the same pipeline as :class:`ImageFolderDataset`; the mask is resized
    with nearest-neighbour (``NEAREST_EXACT``), so it keeps its integer class indices (and
    ``ignore_index`` pixels) exactly. Augmentation moves image and mask together (transforms v2
    with ``tv_tensors.Mask``).

    Attributes: ``samples`` (list of ``(image_path, mask_path)``), ``num_classes``,
    ``ignore_index``, ``image_size``, ``deterministic``, ``cache``.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]],
        *,
        image_size: int | Sequence[int],
        num_classes: int,
        ignore_index: int | None = 255,
        augment: Augment = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        cache: CacheSpec = None,
        cache_root: str | os.PathLike[str] | None = None,
        hflip: bool = True,
        color_jitter: float | Sequence[float] | None = None,
        random_erasing: float = 0.0,
        mask_dtype: torch.dtype = torch.uint8,
    ) -> None:
        func = "SegmentationFolderDataset"
        super().__init__(
            func,
            image_size=image_size,
            augment=augment,
            mean=mean,
            std=std,
            task="segmentation",
            hflip=hflip,
            color_jitter=color_jitter,
            random_erasing=random_erasing,
        )
        self.samples = [(Path(i), Path(m)) for i, m in samples]
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.mask_dtype = mask_dtype
        fields = {
            "image": ((3, *self.image_size), torch.uint8),
            "mask": (self.image_size, mask_dtype),
        }
        paths = [p for pair in self.samples for p in pair]
        self._init_cache(func, cache, cache_root, paths, fields, "segmentation_folder")

    def load(self, index: int) -> tuple[Tensor, Tensor]:
        """Image ``uint8 (3, H, W)`` and mask (``mask_dtype``, ``(H, W)``) after resizing."""
        if self.cache is not None:
            hit = self.cache.get(index)
            if hit is not None:
                return hit[0], hit[1]
        image_path, mask_path = self.samples[index]
        try:
            image = load_image(image_path, self.image_size)
            mask = load_mask(mask_path, self.image_size).to(self.mask_dtype)
        except Exception as exc:
            raise ValueError(
                f"SegmentationFolderDataset: cannot decode {str(image_path)!r} / {str(mask_path)!r}: {exc}"
            ) from exc
        if self.cache is not None:
            self.cache.put(index, image, mask)
        return image, mask

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, mask = self.load(index)
        if self._augment is not None:
            image, mask = self._augment(*as_tv(image, mask))  # type: ignore[misc]
        image = image.as_subclass(torch.Tensor)
        mask = mask.as_subclass(torch.Tensor)
        return self._normalize(image), mask.long()

    def __repr__(self) -> str:
        return (
            f"SegmentationFolderDataset({len(self)} pairs, num_classes={self.num_classes}, "
            f"image_size={self.image_size}, augment={self.augment!r}, cache={self.cache is not None})"
        )


def _check_label_args(func: str, num_classes: int | None, ignore_index: int | None) -> None:
    if num_classes is not None:
        check_positive(func, "num_classes", num_classes, integer=True)
        if num_classes < 2:
            fail(
                func,
                f"num_classes must be >= 2 (background included); got {num_classes}",
                hint="binary 0/1 masks have num_classes=2",
            )
    if ignore_index is not None and (
        isinstance(ignore_index, bool) or not isinstance(ignore_index, int)
    ):
        fail(
            func,
            f"ignore_index must be an int or None; got {type(ignore_index).__name__} {ignore_index!r}",
            exc=TypeError,
        )


def _by_stem(func: str, paths: list[Path], base: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in paths:
        stem = str(p.relative_to(base).with_suffix(""))
        if stem in out:
            fail(func, f"two files share the name {stem!r}: {str(out[stem])!r} and {str(p)!r}")
        out[stem] = p
    return out


def _pairs(func: str, folder: Path, root: Path) -> tuple[list[Pair], list[Path]]:
    """``(image/mask pairs matched by stem, unsupported files)`` of one split folder."""
    images_dir, masks_dir = folder / "images", folder / "masks"
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            fail(
                func,
                f"folder {str(d)!r} does not exist",
                hint="expected root/images/ and root/masks/ with matching file names",
            )
    images, other = list_files(images_dir)
    masks, other_m = list_files(masks_dir)
    img, msk = _by_stem(func, images, images_dir), _by_stem(func, masks, masks_dir)
    if not img and not msk:
        fail(func, f"no images in {str(images_dir)!r} and no masks in {str(masks_dir)!r}")
    lossy = [p for p in msk.values() if p.suffix.lower() in LOSSY_SUFFIXES]
    if lossy:
        fail(
            func,
            f"masks must be stored losslessly (PNG, BMP, TIFF); {len(lossy)} are lossy: {listing(lossy, root)}",
            hint="JPEG compression changes class indices at edges; save masks as PNG",
        )
    no_mask = [img[s] for s in sorted(img.keys() - msk.keys())]
    no_image = [msk[s] for s in sorted(msk.keys() - img.keys())]
    if no_mask or no_image:
        parts = []
        if no_mask:
            parts.append(f"{len(no_mask)} image(s) without a mask: {listing(no_mask, root)}")
        if no_image:
            parts.append(f"{len(no_image)} mask(s) without an image: {listing(no_image, root)}")
        fail(
            func,
            "; ".join(parts),
            hint="image and mask must share the file name (stem), e.g. images/a.jpg and masks/a.png",
        )
    return [(img[s], msk[s]) for s in sorted(img)], other + other_m


def _check_sizes(func: str, good: list[Pair], sizes: dict[Path, tuple[int, int]]) -> None:
    mismatched = [(i, m) for i, m in good if sizes[i] != sizes[m]]
    if not mismatched:
        return
    listed = "; ".join(
        f"{str(i)!r} is {sizes[i][0]}x{sizes[i][1]} but {str(m)!r} is {sizes[m][0]}x{sizes[m][1]}"
        for i, m in mismatched[:MAX_LISTED]
    )
    fail(
        func,
        f"{len(mismatched)} mask(s) differ in size from their image: {listed}",
        hint="a mask must have its image's width and height",
    )


def _mask_values(path: Path, func: str) -> np.ndarray:
    arr = read_mask_array(path, func=func)
    if arr.dtype == np.uint8:
        return np.flatnonzero(np.bincount(arr.ravel(), minlength=256))
    return np.unique(arr)


def _check_mask_values(
    func: str, good: list[Pair], num_classes: int | None, ignore_index: int | None
) -> tuple[int, np.ndarray]:
    """``(num_classes, every value found)`` after decoding each mask once; refuses masks without
    foreground and values outside ``0..num_classes-1`` (other than ``ignore_index``)."""
    values: dict[Path, np.ndarray] = {m: _mask_values(m, func) for _, m in good}
    union = np.unique(np.concatenate(list(values.values())))
    labels = [int(v) for v in union if v != ignore_index]
    if not [v for v in labels if v != 0]:
        found = ", ".join(str(int(v)) for v in union)
        fail(
            func,
            f"masks hold no foreground: every pixel value is 0 or ignore_index={ignore_index} (found {found})",
            hint="if 255 marks foreground (0/255 binary masks), save them as 0/1 or pass another ignore_index",
        )
    if num_classes is None:
        num_classes = max(2, max(labels) + 1)
    out_of_range = {
        m: [int(v) for v in vals if v != ignore_index and not 0 <= v < num_classes]
        for m, vals in values.items()
    }
    out_of_range = {m: v for m, v in out_of_range.items() if v}
    if out_of_range:
        listed = "; ".join(
            f"{str(m)!r} has {v}" for m, v in list(out_of_range.items())[:MAX_LISTED]
        )
        fail(
            func,
            f"mask values must be in 0..{num_classes - 1} (num_classes={num_classes}) or ignore_index={ignore_index}; {listed}",
            hint="pass num_classes=None to infer it from the masks, or fix the masks",
        )
    return num_classes, union


def segmentation_folder(
    root: str | os.PathLike[str],
    *,
    image_size: int | Sequence[int] | None,
    val_fraction: float = 0.2,
    seed: int = 0,
    num_classes: int | None = None,
    ignore_index: int | None = 255,
    strict: bool = False,
    augment: Augment = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    cache: CacheSpec = None,
    val_folder: str | None = None,
    hflip: bool = True,
    color_jitter: float | Sequence[float] | None = None,
    random_erasing: float = 0.0,
) -> tuple[SegmentationFolderDataset, SegmentationFolderDataset, int]:
    """Segmentation datasets from ``images/`` + ``masks/``: ``(train_ds, val_ds, num_classes)``.

    Layouts: ``root/images/`` + ``root/masks/`` (split by ``val_fraction`` and ``seed``, random
    and deterministic), or ``root/train/{images,masks}`` + ``root/val/{images,masks}`` (``val/``,
    ``valid/``, ``validation/``, or ``val_folder``'s name, as in :func:`image_folder`). An image
    and its mask share the file name without extension (``images/a.jpg`` <-> ``masks/a.png``).

    Masks are single-channel files (PNG ``L``/``P``/``I;16``) whose pixel values are class indices:
    binary ``0/1`` or multiclass ``0..C-1``; pixels equal to ``ignore_index`` (default 255, the
    Pascal VOC border) are kept as they are, for losses and metrics to ignore.

    Before returning, every image and mask is checked and every mask decoded once:
        - unreadable files: the pair is skipped with one :class:`BadFilesWarning`
          (``ValueError`` with ``strict=True``);
        - an image without a mask or a mask without an image, a mask whose size differs from
          its image, a colour or JPEG mask: ``ValueError`` naming the files;
        - ``num_classes=None``: inferred as ``1 + the largest value`` found in any mask
          (``ignore_index`` excluded), at least 2 (so binary 0/1 masks give 2);
        - a value ``>= num_classes`` (other than ``ignore_index``): ``ValueError`` naming the
          file and the values;
        - no foreground anywhere (every pixel 0 or ``ignore_index``): ``ValueError`` — often
          0/255 binary masks read with ``ignore_index=255``.

    Items are ``(float32 (3, H, W), int64 (H, W))``: the image resized bilinear, the mask
    nearest. ``augment`` (train only; ``True`` = crop + flip, ``"crop"``, or a callable on
    ``(tv_tensors.Image, tv_tensors.Mask)``) moves image and mask together; ``hflip``,
    ``color_jitter`` and ``random_erasing`` (train only) as in :func:`image_folder` (photometric
    ops reach the image only). ``cache`` and
    ``image_size=None`` (the images' own size, when they all share one) as in :func:`image_folder`.
    """
    func = "segmentation_folder"
    args = check_folder_args(
        func,
        "segmentation",
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
    _check_label_args(func, num_classes, ignore_index)
    path, train_dir, val_dir, size = args.root, args.train_dir, args.val_dir, args.size

    train_pairs, other = _pairs(func, train_dir, path)
    val_pairs: list[Pair] = []
    if val_dir is not None:
        val_pairs, val_other = _pairs(func, val_dir, path)
        other += val_other

    pairs = train_pairs + val_pairs
    sizes, bad = validate([p for pair in pairs for p in pair])
    mark_unsupported(bad, other)
    good = [(i, m) for i, m in pairs if i not in bad and m not in bad]
    _check_sizes(func, good, sizes)
    if not good:
        fail(func, f"no readable image/mask pairs under {str(path)!r}")
    num_classes, values = _check_mask_values(func, good, num_classes, ignore_index)
    report_bad(func, path, bad, strict)
    if size is None:
        size = common_size(func, {i: sizes[i] for i, _ in good}, path)

    good_set = set(good)
    train_pairs = [p for p in train_pairs if p in good_set]
    val_pairs = [p for p in val_pairs if p in good_set]
    if val_dir is None:
        tr, va = split_indices([0] * len(train_pairs), val_fraction, seed)
        train_pairs, val_pairs = [train_pairs[i] for i in tr], [train_pairs[i] for i in va]

    mask_dtype = torch.uint8 if values.min() >= 0 and values.max() <= 255 else torch.int32
    common = {"image_size": size, **args.dataset, "num_classes": num_classes}
    common.update(ignore_index=ignore_index, mask_dtype=mask_dtype)
    train_ds = SegmentationFolderDataset(train_pairs, augment=augment, **common, **args.options)
    val_ds = SegmentationFolderDataset(val_pairs, augment=False, **common)
    return train_ds, val_ds, num_classes
