"""Image folders for classification (``root/<class>/<image>``) and segmentation (``images/`` +
``masks/``), validated before any training starts.

Every file is checked when the dataset is built: PIL ``Image.open(...).verify()`` (header and, for
PNG and JPEG, the whole stream), a non-zero size, a supported extension. Unreadable files are
skipped with one :class:`BadFilesWarning` that lists them, or raise ``ValueError`` with
``strict=True``. Layout errors (missing folder, empty class folder, image without mask, mask of
another size than its image, mask values out of range) always raise ``ValueError`` naming the
paths. See ``docs/data.md`` for the full policy.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from strop._checks import check_positive, fail
from strop.data.cache import SampleCache, cache_key
from strop.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Augment,
    as_tv,
    augmentation,
    is_deterministic,
    load_image,
    load_mask,
    normalization,
    read_mask_array,
    resolve_size,
)

__all__ = [
    "IGNORED_SUFFIXES",
    "IMAGE_EXTENSIONS",
    "BadFilesWarning",
    "ImageFolderDataset",
    "SegmentationFolderDataset",
    "image_folder",
    "segmentation_folder",
]

#: Extensions read as images (torchvision's ``IMG_EXTENSIONS``), case-insensitive.
IMAGE_EXTENSIONS: tuple[str, ...] = tuple(IMG_EXTENSIONS)
#: Files that are clearly not data (notes, labels, manifests, OS droppings): ignored silently.
#: Hidden files and folders (name starting with ``.``) are ignored too. Any other extension is
#: reported as a bad file.
IGNORED_SUFFIXES: frozenset[str] = frozenset(
    {".txt", ".md", ".json", ".csv", ".tsv", ".yaml", ".yml", ".xml", ".ini", ".log", ".db"}
)
_LOSSY = (".jpg", ".jpeg", ".webp")
_MAX_LISTED = 100

CacheSpec = str | os.PathLike[str] | None


class BadFilesWarning(UserWarning):
    """Unreadable or non-image files were skipped; ``.files`` maps each path to the reason."""

    def __init__(self, message: str, files: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.files: dict[str, str] = dict(files or {})


# ---------------------------------------------------------------------------------------------
# scanning and validation


def _list_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """Image candidates and unsupported files under ``folder`` (recursive, sorted, no hidden)."""
    images: list[Path] = []
    other: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        # torchvision counts e.g. `.ipynb_checkpoints` as data; hidden folders are never data here
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            suffix = os.path.splitext(name)[1].lower()
            path = Path(dirpath) / name
            if suffix in IMAGE_EXTENSIONS:
                images.append(path)
            elif suffix not in IGNORED_SUFFIXES:
                other.append(path)
    return images, other


def check_image_file(path: Path) -> tuple[str | None, tuple[int, int] | None]:
    """``(reason, (width, height))``: reason is ``None`` for a readable image."""
    try:
        if path.stat().st_size == 0:
            return "zero-byte file", None
        with Image.open(path) as img:
            size = img.size
            img.verify()
    except UnidentifiedImageError:
        return "not an image", None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error ...
        return f"corrupt or truncated ({type(exc).__name__}: {exc})", None
    if size[0] == 0 or size[1] == 0:
        return f"empty image ({size[0]}x{size[1]})", None
    return None, size


def _validate(paths: Sequence[Path]) -> tuple[dict[Path, tuple[int, int]], dict[Path, str]]:
    good: dict[Path, tuple[int, int]] = {}
    bad: dict[Path, str] = {}
    for p in paths:
        reason, size = check_image_file(p)
        if reason is None:
            assert size is not None
            good[p] = size
        else:
            bad[p] = reason
    return good, bad


def _listing(items: dict[Path, str] | Sequence[Path], root: Path) -> str:
    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(root))
        except ValueError:
            return str(p)

    if isinstance(items, dict):
        lines = [f"{rel(p)} ({why})" for p, why in items.items()]
    else:
        lines = [rel(p) for p in items]
    more = len(lines) - _MAX_LISTED
    text = ", ".join(lines[:_MAX_LISTED])
    return text + (f", ... and {more} more" if more > 0 else "")


def _report_bad(func: str, root: Path, bad: dict[Path, str], strict: bool) -> None:
    if not bad:
        return
    n = len(bad)
    what = f"{n} unreadable or non-image file{'s' if n > 1 else ''} under {str(root)!r}"
    listing = _listing(bad, root)
    if strict:
        fail(
            func,
            f"{what}: {listing}",
            hint="remove or replace them, or pass strict=False to skip them with a warning",
        )
    warnings.warn(
        BadFilesWarning(
            f"{func}: skipped {what}: {listing}. Pass strict=True to make this an error.",
            {str(p): why for p, why in bad.items()},
        ),
        stacklevel=3,
    )


def _check_root(func: str, root: str | os.PathLike[str]) -> Path:
    if not isinstance(root, (str, os.PathLike)):
        fail(func, f"root must be a path; got {type(root).__name__} {root!r}", exc=TypeError)
    path = Path(root)
    if not path.exists():
        fail(func, f"data folder {str(path)!r} does not exist")
    if not path.is_dir():
        fail(func, f"data folder {str(path)!r} is not a directory")
    return path


def _check_common(func: str, val_fraction: float, seed: int) -> None:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
        fail(
            func,
            f"val_fraction must be a number in [0, 1); got {type(val_fraction).__name__} {val_fraction!r}",
            exc=TypeError,
        )
    if not 0 <= val_fraction < 1:
        fail(func, f"val_fraction must be in [0, 1); got {val_fraction!r}")
    check_positive(func, "seed", seed, allow_zero=True, integer=True)


def _check_stats(func: str, name: str, value: Sequence[float]) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except TypeError:
        fail(func, f"{name} must be 3 numbers (one per RGB channel); got {value!r}", exc=TypeError)
    if len(out) != 3:
        fail(func, f"{name} must be 3 numbers (one per RGB channel); got {len(out)}: {value!r}")
    if name == "std" and min(out) <= 0:
        fail(func, f"std must be > 0 per channel; got {value!r}")
    return out  # type: ignore[return-value]


def _split_layout(func: str, root: Path) -> tuple[Path, Path | None]:
    """``(train_dir, val_dir or None)``: ``root/train`` + ``root/val`` when present, else root."""
    train, val = root / "train", root / "val"
    if train.is_dir():
        return train, (val if val.is_dir() else None)
    if val.is_dir():
        fail(
            func,
            f"found {str(val)!r} but no {str(train)!r}",
            hint="use train/ and val/ together, or neither",
        )
    return root, None


def _n_val(n: int, fraction: float) -> int:
    if fraction == 0 or n < 2:
        return 0
    # round half up, and keep at least one sample on each side
    return min(max(int(np.floor(n * fraction + 0.5)), 1), n - 1)


def split_indices(
    targets: Sequence[int], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Deterministic stratified split: ``(train_indices, val_indices)``, both sorted.

    Per class (in label order) a ``numpy.random.default_rng(seed)`` permutation of its indices;
    the first ``round(n_c * val_fraction)`` (at least 1 and at most ``n_c - 1`` when ``n_c >= 2``
    and ``val_fraction > 0``) go to validation. The same targets, fraction and seed give the same
    split on every machine.
    """
    t = np.asarray(targets)
    rng = np.random.default_rng(seed)
    val: list[int] = []
    for c in np.unique(t):
        idx = rng.permutation(np.flatnonzero(t == c))
        val.extend(idx[: _n_val(len(idx), val_fraction)].tolist())
    val_set = set(val)
    return [i for i in range(len(t)) if i not in val_set], sorted(val)


def _check_cache(func: str, cache: CacheSpec) -> None:
    if cache is not None and not isinstance(cache, (str, os.PathLike)):
        fail(
            func,
            f"cache must be None, 'memory', 'disk' or a directory path; got {type(cache).__name__} {cache!r}",
            exc=TypeError,
        )


def _make_cache(
    func: str,
    cache: CacheSpec,
    root: Path,
    paths: Sequence[Path],
    fields: dict[str, Any],
    *extra: object,
) -> SampleCache | None:
    _check_cache(func, cache)
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


# ---------------------------------------------------------------------------------------------
# datasets


class ImageFolderDataset(Dataset[tuple[Tensor, int]]):
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
    ) -> None:
        func = "ImageFolderDataset"
        self.samples = [(Path(p), int(t)) for p, t in samples]
        self.targets = [t for _, t in self.samples]
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.image_size = resolve_size(func, image_size)
        self.mean = _check_stats(func, "mean", mean)
        self.std = _check_stats(func, "std", std)
        self.augment = augment
        self._augment = augmentation(func, augment, self.image_size)
        self.deterministic = is_deterministic(func, augment)
        self._normalize = normalization(self.mean, self.std)
        paths = [p for p, _ in self.samples]
        root = (
            Path(cache_root)
            if cache_root is not None
            else (paths[0].parent if paths else Path("."))
        )
        self.cache = _make_cache(
            func,
            cache,
            root,
            paths,
            {"image": ((3, *self.image_size), torch.uint8)},
            "image_folder",
        )

    def __len__(self) -> int:
        return len(self.samples)

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


class SegmentationFolderDataset(Dataset[tuple[Tensor, Tensor]]):
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
        mask_dtype: torch.dtype = torch.uint8,
    ) -> None:
        func = "SegmentationFolderDataset"
        self.samples = [(Path(i), Path(m)) for i, m in samples]
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.image_size = resolve_size(func, image_size)
        self.mean = _check_stats(func, "mean", mean)
        self.std = _check_stats(func, "std", std)
        self.augment = augment
        self._augment = augmentation(func, augment, self.image_size)
        self.deterministic = is_deterministic(func, augment)
        self._normalize = normalization(self.mean, self.std)
        self.mask_dtype = mask_dtype
        paths = [p for pair in self.samples for p in pair]
        root = (
            Path(cache_root)
            if cache_root is not None
            else (paths[0].parent if paths else Path("."))
        )
        fields = {
            "image": ((3, *self.image_size), torch.uint8),
            "mask": (self.image_size, mask_dtype),
        }
        self.cache = _make_cache(func, cache, root, paths, fields, "segmentation_folder")

    def __len__(self) -> int:
        return len(self.samples)

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


# ---------------------------------------------------------------------------------------------
# classification


def _scan_classes(
    func: str, folder: Path, classes: Sequence[str] | None
) -> tuple[list[str], dict[str, list[Path]], list[Path]]:
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
        images, rest = _list_files(folder / name)
        per_class[name] = images
        other.extend(rest)
    return names, per_class, other


def image_folder(
    root: str | os.PathLike[str],
    *,
    image_size: int | Sequence[int],
    val_fraction: float = 0.2,
    seed: int = 0,
    augment: Augment = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    strict: bool = False,
    cache: CacheSpec = None,
) -> tuple[ImageFolderDataset, ImageFolderDataset, list[str]]:
    """Classification datasets from a folder tree: ``(train_ds, val_ds, classes)``.

    Layouts:
        - ``root/<class>/<image>``: split per class by ``val_fraction`` and ``seed``
          (deterministic, stratified; see :func:`split_indices`).
        - ``root/train/<class>/...`` and ``root/val/<class>/...``: the given split
          (``val_fraction`` is ignored); ``val/`` may lack classes but not add any. With
          ``train/`` alone, ``train/`` is split as above.

    Classes are the sorted names of the (non-hidden) sub-folders; label ``i`` is ``classes[i]``.
    Images are read recursively below each class folder.

    Args:
        image_size: model input, ``s`` for ``s x s`` or ``(H, W)``; every image is resized to it.
        augment: training augmentation (``val_ds`` never augments): ``False``; ``True`` /
            ``"standard"`` = ``RandomResizedCrop(scale=(0.7, 1))`` + horizontal flip; ``"crop"``
            = the crop alone (use it for digits and text, which a flip changes); or a callable
            on the ``uint8`` tensor.
        mean, std: per-channel normalisation after scaling to [0, 1]; torchvision ``Weights``
            give theirs as ``weights.transforms().mean/std``. Default: ImageNet's.
        strict: ``False`` skips unreadable/non-image files with one :class:`BadFilesWarning`;
            ``True`` raises ``ValueError`` naming them.
        cache: ``None``; ``"memory"``; ``"disk"`` (``root/.strop_cache``) or a directory —
            keeps decoded, resized ``uint8`` images after their first read.

    Returns:
        ``train_ds``, ``val_ds`` (:class:`ImageFolderDataset`, items ``(float32 (3, H, W), int)``)
        and ``classes``.

    Raises:
        ValueError: missing root, no class folders, a class folder without readable images,
            bad files with ``strict=True``, bad arguments.
    """
    func = "image_folder"
    size = resolve_size(func, image_size)
    _check_common(func, val_fraction, seed)
    mean = _check_stats(func, "mean", mean)
    std = _check_stats(func, "std", std)
    augmentation(func, augment, size)  # validate now, not at the first item
    _check_cache(func, cache)
    path = _check_root(func, root)
    train_dir, val_dir = _split_layout(func, path)

    classes, train_files, other = _scan_classes(func, train_dir, None)
    val_files: dict[str, list[Path]] = {}
    if val_dir is not None:
        _, val_files, val_other = _scan_classes(func, val_dir, classes)
        other += val_other

    every = [p for files in (*train_files.values(), *val_files.values()) for p in files]
    _, bad = _validate(every)
    for p in other:
        bad[p] = f"unsupported extension {p.suffix!r}" if p.suffix else "no extension"

    for folder, files in [(train_dir, train_files), *([(val_dir, val_files)] if val_dir else [])]:
        for name, paths in files.items():
            if not any(p not in bad for p in paths):
                skipped = [p for p in bad if (folder / name) in p.parents]
                detail = (
                    f" ({len(skipped)} unreadable file(s): {_listing(skipped, path)})"
                    if skipped
                    else ""
                )
                fail(
                    func,
                    f"class folder {str(folder / name)!r} contains no readable images{detail}",
                    hint=f"add images ({', '.join(IMAGE_EXTENSIONS)}) or remove the folder",
                )
    _report_bad(func, path, bad, strict)

    def samples(files: dict[str, list[Path]]) -> list[tuple[Path, int]]:
        return [(p, classes.index(c)) for c in sorted(files) for p in files[c] if p not in bad]

    train_samples = samples(train_files)
    if val_dir is not None:
        val_samples = samples(val_files)
    else:
        tr, va = split_indices([t for _, t in train_samples], val_fraction, seed)
        train_samples, val_samples = [train_samples[i] for i in tr], [train_samples[i] for i in va]

    common: dict[str, Any] = {
        "image_size": size,
        "mean": mean,
        "std": std,
        "cache": cache,
        "cache_root": path,
    }
    train_ds = ImageFolderDataset(train_samples, classes, augment=augment, **common)
    val_ds = ImageFolderDataset(val_samples, classes, augment=False, **common)
    return train_ds, val_ds, list(classes)


# ---------------------------------------------------------------------------------------------
# segmentation


def _pairs(func: str, folder: Path, root: Path) -> tuple[list[tuple[Path, Path]], list[Path]]:
    images_dir, masks_dir = folder / "images", folder / "masks"
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            fail(
                func,
                f"folder {str(d)!r} does not exist",
                hint="expected root/images/ and root/masks/ with matching file names",
            )
    images, other = _list_files(images_dir)
    masks, other_m = _list_files(masks_dir)

    def by_stem(paths: list[Path], base: Path) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for p in paths:
            stem = str(p.relative_to(base).with_suffix(""))
            if stem in out:
                fail(func, f"two files share the name {stem!r}: {str(out[stem])!r} and {str(p)!r}")
            out[stem] = p
        return out

    img, msk = by_stem(images, images_dir), by_stem(masks, masks_dir)
    if not img and not msk:
        fail(func, f"no images in {str(images_dir)!r} and no masks in {str(masks_dir)!r}")
    lossy = [p for p in msk.values() if p.suffix.lower() in _LOSSY]
    if lossy:
        fail(
            func,
            f"masks must be stored losslessly (PNG, BMP, TIFF); {len(lossy)} are lossy: {_listing(lossy, root)}",
            hint="JPEG compression changes class indices at edges; save masks as PNG",
        )
    no_mask = [img[s] for s in sorted(img.keys() - msk.keys())]
    no_image = [msk[s] for s in sorted(msk.keys() - img.keys())]
    if no_mask or no_image:
        parts = []
        if no_mask:
            parts.append(f"{len(no_mask)} image(s) without a mask: {_listing(no_mask, root)}")
        if no_image:
            parts.append(f"{len(no_image)} mask(s) without an image: {_listing(no_image, root)}")
        fail(
            func,
            "; ".join(parts),
            hint="image and mask must share the file name (stem), e.g. images/a.jpg and masks/a.png",
        )
    return [(img[s], msk[s]) for s in sorted(img)], other + other_m


def _mask_values(path: Path, func: str) -> np.ndarray:
    arr = read_mask_array(path, func=func)
    if arr.dtype == np.uint8:
        return np.flatnonzero(np.bincount(arr.ravel(), minlength=256))
    return np.unique(arr)


def segmentation_folder(
    root: str | os.PathLike[str],
    *,
    image_size: int | Sequence[int],
    val_fraction: float = 0.2,
    seed: int = 0,
    num_classes: int | None = None,
    ignore_index: int | None = 255,
    strict: bool = False,
    augment: Augment = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    cache: CacheSpec = None,
) -> tuple[SegmentationFolderDataset, SegmentationFolderDataset, int]:
    """Segmentation datasets from ``images/`` + ``masks/``: ``(train_ds, val_ds, num_classes)``.

    Layouts: ``root/images/`` + ``root/masks/`` (split by ``val_fraction`` and ``seed``, random
    and deterministic), or ``root/train/{images,masks}`` + ``root/val/{images,masks}``. An image
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
    ``(tv_tensors.Image, tv_tensors.Mask)``) moves image and mask together. ``cache`` as in
    :func:`image_folder`.
    """
    func = "segmentation_folder"
    size = resolve_size(func, image_size)
    _check_common(func, val_fraction, seed)
    mean = _check_stats(func, "mean", mean)
    std = _check_stats(func, "std", std)
    augmentation(func, augment, size)
    _check_cache(func, cache)
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
    path = _check_root(func, root)
    train_dir, val_dir = _split_layout(func, path)

    train_pairs, other = _pairs(func, train_dir, path)
    val_pairs: list[tuple[Path, Path]] = []
    if val_dir is not None:
        val_pairs, val_other = _pairs(func, val_dir, path)
        other += val_other

    pairs = train_pairs + val_pairs
    sizes, bad = _validate([p for pair in pairs for p in pair])
    for p in other:
        bad[p] = f"unsupported extension {p.suffix!r}" if p.suffix else "no extension"
    good = [(i, m) for i, m in pairs if i not in bad and m not in bad]

    mismatched = [(i, m) for i, m in good if sizes[i] != sizes[m]]
    if mismatched:
        listed = "; ".join(
            f"{str(i)!r} is {sizes[i][0]}x{sizes[i][1]} but {str(m)!r} is {sizes[m][0]}x{sizes[m][1]}"
            for i, m in mismatched[:_MAX_LISTED]
        )
        fail(
            func,
            f"{len(mismatched)} mask(s) differ in size from their image: {listed}",
            hint="a mask must have its image's width and height",
        )
    if not good:
        fail(func, f"no readable image/mask pairs under {str(path)!r}")

    values: dict[Path, np.ndarray] = {m: _mask_values(m, func) for _, m in good}
    union = (
        np.unique(np.concatenate(list(values.values()))) if values else np.array([], dtype=np.int64)
    )
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
            f"{str(m)!r} has {v}" for m, v in list(out_of_range.items())[:_MAX_LISTED]
        )
        fail(
            func,
            f"mask values must be in 0..{num_classes - 1} (num_classes={num_classes}) or ignore_index={ignore_index}; {listed}",
            hint="pass num_classes=None to infer it from the masks, or fix the masks",
        )
    _report_bad(func, path, bad, strict)

    mask_dtype = torch.uint8 if int(union.max()) <= 255 and int(union.min()) >= 0 else torch.int32
    good_set = set(good)
    train_pairs = [p for p in train_pairs if p in good_set]
    val_pairs = [p for p in val_pairs if p in good_set]
    if val_dir is None:
        tr, va = split_indices([0] * len(train_pairs), val_fraction, seed)
        train_pairs, val_pairs = [train_pairs[i] for i in tr], [train_pairs[i] for i in va]

    common: dict[str, Any] = {
        "image_size": size,
        "num_classes": num_classes,
        "ignore_index": ignore_index,
        "mean": mean,
        "std": std,
        "cache": cache,
        "cache_root": path,
        "mask_dtype": mask_dtype,
    }
    train_ds = SegmentationFolderDataset(train_pairs, augment=augment, **common)
    val_ds = SegmentationFolderDataset(val_pairs, augment=False, **common)
    return train_ds, val_ds, num_classes
