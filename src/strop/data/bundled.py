"""Data that ships with strop (nothing is downloaded): handwritten digits and synthetic shapes.

- :func:`write_digits`: scikit-learn's ``load_digits`` (1,797 real 8x8 scans of handwritten
  digits, UCI "Optical Recognition of Handwritten Digits", values 0-16) as an ImageFolder of PNGs.
- :func:`write_shapes`: circles, squares and triangles on noisy textured backgrounds, with
  masks, as ``images/`` + ``masks/``.

Both write a ``strop_dataset.json`` manifest last; called again with the same parameters they
return at once, with other parameters they replace the files they wrote before (and only those).
A non-empty folder without a manifest is never written into.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from strop._checks import check_positive, fail

__all__ = ["MANIFEST", "write_digits", "write_shapes"]

MANIFEST = "strop_dataset.json"
_VERSION = 1
SHAPE_KINDS = ("circle", "square", "triangle")


def _up_to_date(func: str, root: Path, kind: str, params: dict[str, Any]) -> bool:
    """True when ``root`` already holds this dataset; else clears what an earlier call wrote."""
    manifest = root / MANIFEST
    if manifest.exists():
        try:
            old = json.loads(manifest.read_text())
        except (OSError, ValueError):
            old = None
        if not isinstance(old, dict):
            fail(
                func,
                f"{str(manifest)!r} is not a strop dataset manifest",
                hint="delete it or pick another root",
            )
        if (
            old.get("kind") == kind
            and old.get("version") == _VERSION
            and old.get("params") == params
            and all((root / f).is_file() for f in old.get("files", []))
        ):
            return True
        manifest.unlink()
        for rel in old.get("files", []):
            (root / rel).unlink(missing_ok=True)
        for d in sorted({(root / rel).parent for rel in old.get("files", [])}, reverse=True):
            if d != root and d.is_dir() and not any(d.iterdir()):
                d.rmdir()
    if root.exists() and any(p.name != MANIFEST for p in root.iterdir()):
        fail(
            func,
            f"{str(root)!r} is not empty and was not written by strop",
            hint="pick an empty or new folder; strop never writes into existing data",
        )
    return False


def _finish(root: Path, kind: str, params: dict[str, Any], files: list[str]) -> Path:
    # the manifest goes last and atomically: a crash mid-write leaves no manifest, so the next
    # call rewrites everything
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(
        json.dumps({"kind": kind, "version": _VERSION, "params": params, "files": files}, indent=1)
    )
    os.replace(tmp, root / MANIFEST)
    return root


def _check_root(func: str, root: str | os.PathLike[str]) -> Path:
    if not isinstance(root, (str, os.PathLike)):
        fail(func, f"root must be a path; got {type(root).__name__} {root!r}", exc=TypeError)
    path = Path(root)
    if path.exists() and not path.is_dir():
        fail(func, f"root {str(path)!r} exists and is not a directory")
    return path


def write_digits(
    root: str | os.PathLike[str],
    *,
    digits: Iterable[int] = range(10),
    per_class: int | None = None,
    seed: int = 0,
    size: int = 32,
) -> Path:
    """Write scikit-learn's handwritten digits as ``root/<digit>/<index>.png``; return ``root``.

    Each 8x8 scan (values 0-16) is scaled to 0-255 (``round(v * 255 / 16)``), upscaled to
    ``size x size`` with bilinear interpolation and saved as an 8-bit grayscale PNG; ``<index>``
    is its row in ``load_digits``. Class folders are named ``"0"`` .. ``"9"``.

    Args:
        digits: which digits to write (e.g. ``range(5)`` for a 0-4 source task).
        per_class: images per digit, drawn without replacement by ``seed``; ``None`` writes all
            (174-183 per digit, 1,797 in total).
        seed: selects the ``per_class`` images (``numpy.random.default_rng``).
        size: side of the written images in pixels (>= 8).
    """
    func = "write_digits"
    path = _check_root(func, root)
    try:
        chosen = sorted({int(d) for d in digits})
    except (TypeError, ValueError):
        fail(func, f"digits must be integers in 0..9; got {digits!r}", exc=TypeError)
    if not chosen or chosen[0] < 0 or chosen[-1] > 9:
        fail(func, f"digits must be a non-empty collection of integers in 0..9; got {chosen}")
    if per_class is not None:
        check_positive(func, "per_class", per_class, integer=True)
    check_positive(func, "seed", seed, allow_zero=True, integer=True)
    check_positive(func, "size", size, integer=True)
    if size < 8:
        fail(func, f"size must be >= 8 (the scans are 8x8); got {size}")

    params = {"digits": chosen, "per_class": per_class, "seed": seed, "size": size}
    if _up_to_date(func, path, "digits", params):
        return path

    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    images = np.rint(images.reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)
    rng = np.random.default_rng(seed)
    picks: dict[int, np.ndarray] = {}
    for d in chosen:
        idx = np.flatnonzero(labels == d)
        if per_class is not None:
            if per_class > len(idx):
                fail(
                    func,
                    f"per_class={per_class} but digit {d} has only {len(idx)} images",
                    hint="use per_class=None for all",
                )
            idx = np.sort(rng.permutation(idx)[:per_class])
        picks[d] = idx

    path.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    for d, idx in picks.items():
        (path / str(d)).mkdir(exist_ok=True)
        for i in idx:
            img = Image.fromarray(images[i])
            if size != 8:
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            rel = f"{d}/{i:04d}.png"
            img.save(path / rel)
            files.append(rel)
    return _finish(path, "digits", params, files)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random colour field plus noise, ``(size, size, 3)`` in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(0.25, 0.75, 3)
    field = np.zeros((size, size, 3))
    for _ in range(2):
        fy, fx = rng.uniform(1, 6, 2)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * (fy * yy + fx * xx) + phase)
        field += wave[..., None] * rng.uniform(0.05, 0.15, 3)
    return np.clip(base + field + rng.normal(0, 0.05, (size, size, 3)), 0, 1)


def _shape_mask(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    r = rng.uniform(0.1, 0.22) * size
    cy, cx = rng.uniform(r, size - r, 2)
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        corners = 4 if kind == "square" else 3
        angle = rng.uniform(0, 2 * np.pi)
        t = angle + 2 * np.pi * np.arange(corners) / corners
        draw.polygon([(cx + r * np.cos(a), cy + r * np.sin(a)) for a in t], fill=255)
    return np.asarray(layer) > 0


def write_shapes(
    root: str | os.PathLike[str],
    *,
    n: int = 200,
    size: int = 64,
    seed: int = 0,
    num_classes: int = 3,
) -> Path:
    """Write a synthetic segmentation set as ``root/images/NNNN.png`` + ``root/masks/NNNN.png``.

    Each RGB image holds 1-3 filled shapes, each a colour contrasting with a smooth, noisy random
    background, with pixel noise over everything. Masks are 8-bit PNGs of class indices,
    ``num_classes`` counting the background:

    - ``2``: binary, 0 = background, 1 = any shape (circles, squares and triangles are drawn);
    - ``3``: 0 = background, 1 = circle, 2 = square (only those two are drawn);
    - ``4``: 0 = background, 1 = circle, 2 = square, 3 = triangle.

    A later shape covers an earlier one in image and mask alike. ``seed`` fixes everything.
    """
    func = "write_shapes"
    path = _check_root(func, root)
    check_positive(func, "n", n, integer=True)
    check_positive(func, "size", size, integer=True)
    check_positive(func, "seed", seed, allow_zero=True, integer=True)
    if size < 16:
        fail(func, f"size must be >= 16 pixels; got {size}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        fail(
            func,
            f"num_classes must be an int in 2..4; got {type(num_classes).__name__} {num_classes!r}",
            exc=TypeError,
        )
    if num_classes not in (2, 3, 4):
        fail(
            func,
            f"num_classes must be 2 (binary), 3 or 4 (background + shape kinds); got {num_classes}",
        )

    params = {"n": n, "size": size, "seed": seed, "num_classes": num_classes}
    if _up_to_date(func, path, "shapes", params):
        return path

    kinds = SHAPE_KINDS if num_classes == 2 else SHAPE_KINDS[: num_classes - 1]
    rng = np.random.default_rng(seed)
    (path / "images").mkdir(parents=True, exist_ok=True)
    (path / "masks").mkdir(exist_ok=True)
    files: list[str] = []
    for i in range(n):
        image = _texture(rng, size)
        mask = np.zeros((size, size), dtype=np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            k = int(rng.integers(len(kinds)))
            where = _shape_mask(rng, kinds[k], size)
            base = image[where].mean(axis=0) if where.any() else np.full(3, 0.5)
            color = np.clip(base + rng.choice([-1.0, 1.0], 3) * rng.uniform(0.3, 0.5, 3), 0, 1)
            image[where] = color
            mask[where] = 1 if num_classes == 2 else k + 1
        image = np.clip(image + rng.normal(0, 0.04, image.shape), 0, 1)
        name = f"{i:04d}.png"
        Image.fromarray(np.rint(image * 255).astype(np.uint8)).save(path / "images" / name)
        Image.fromarray(mask).save(path / "masks" / name)
        files += [f"images/{name}", f"masks/{name}"]
    return _finish(path, "shapes", params, files)
