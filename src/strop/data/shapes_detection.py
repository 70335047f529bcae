"""``bundled:shapes-detection``: synthetic detection images written in COCO, YOLO or VOC layout.

Each image holds 0-4 filled shapes (circle, square, triangle: the classes) on a smooth noisy
background; shapes may overlap (a later one covers an earlier one, and the box of the covered one
is kept, as annotators label occluded objects) and about one in five is tiny (4-7 px). About one
image in ten has no shape at all (a negative). Boxes are the tight boxes of the drawn pixels.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from strop._checks import check_choice, check_positive, fail

__all__ = ["SHAPE_CLASSES", "write_shapes_detection"]

SHAPE_CLASSES = ("circle", "square", "triangle")
_MANIFEST = "strop_dataset.json"


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    coarse = rng.uniform(0.2, 0.8, (4, 4, 3))
    up = (
        np.asarray(Image.fromarray(np.uint8(coarse * 255)).resize((size, size), Image.BILINEAR))
        / 255.0
    )
    return up + rng.normal(0, 0.03, (size, size, 3))


def _shape(rng: np.random.Generator, kind: str, size: int, tiny: bool) -> np.ndarray:
    """Boolean mask of one shape of ``kind`` at a random place and scale."""
    s = int(rng.integers(4, 8)) if tiny else int(rng.integers(size // 6, int(size / 2.5)))
    x0, y0 = int(rng.integers(0, size - s)), int(rng.integers(0, size - s))
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if kind == "square":
        return (xx >= x0) & (xx < x0 + s) & (yy >= y0) & (yy < y0 + s)
    if kind == "circle":
        r = s / 2
        return (xx - x0 - r) ** 2 + (yy - y0 - r) ** 2 <= r * r
    # triangle: apex at the top centre, base at the bottom
    t = (yy - y0) / s
    return (yy >= y0) & (yy < y0 + s) & (np.abs(xx - x0 - s / 2) <= t * s / 2)


def _box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def _draw(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[list[float]], list[int]]:
    image = _background(rng, size)
    boxes, labels = [], []
    count = 0 if rng.random() < 0.1 else int(rng.integers(1, 5))
    for _ in range(count):
        k = int(rng.integers(len(SHAPE_CLASSES)))
        mask = _shape(rng, SHAPE_CLASSES[k], size, tiny=rng.random() < 0.2)
        if not mask.any():
            continue
        base = image[mask].mean(axis=0)
        image[mask] = np.clip(base + rng.choice([-1.0, 1.0], 3) * rng.uniform(0.3, 0.5, 3), 0, 1)
        boxes.append(_box(mask))
        labels.append(k)
    return np.uint8(np.clip(image, 0, 1) * 255 + 0.5), boxes, labels


def _write_split(
    folder: Path, fmt: str, items: list[tuple[str, np.ndarray, list, list]], size: int
) -> None:
    image_dir = folder / ("JPEGImages" if fmt == "voc" else "images")
    image_dir.mkdir(parents=True, exist_ok=True)
    for name, pixels, _, _ in items:
        Image.fromarray(pixels).save(image_dir / name)
    if fmt == "coco":
        images = [
            {"id": i + 1, "file_name": name, "height": size, "width": size}
            for i, (name, *_r) in enumerate(items)
        ]
        anns = []
        for i, (_, _, boxes, labels) in enumerate(items):
            for (x1, y1, x2, y2), k in zip(boxes, labels, strict=True):
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": i + 1,
                        "category_id": k + 1,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": 0,
                    }
                )
        cats = [{"id": k + 1, "name": n} for k, n in enumerate(SHAPE_CLASSES)]
        (folder / "annotations.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats})
        )
    elif fmt == "yolo":
        (folder / "labels").mkdir(exist_ok=True)
        (folder / "classes.txt").write_text("\n".join(SHAPE_CLASSES) + "\n")
        for name, _, boxes, labels in items:
            lines = [
                f"{k} {(x1 + x2) / 2 / size:.6f} {(y1 + y2) / 2 / size:.6f} {(x2 - x1) / size:.6f} {(y2 - y1) / size:.6f}"
                for (x1, y1, x2, y2), k in zip(boxes, labels, strict=True)
            ]
            (folder / "labels" / f"{Path(name).stem}.txt").write_text(
                "".join(line + "\n" for line in lines)
            )
    else:
        (folder / "Annotations").mkdir(exist_ok=True)
        for name, _, boxes, labels in items:
            root = ET.Element("annotation")
            ET.SubElement(root, "filename").text = name
            sz = ET.SubElement(root, "size")
            for tag, v in (("width", size), ("height", size), ("depth", 3)):
                ET.SubElement(sz, tag).text = str(v)
            for (x1, y1, x2, y2), k in zip(boxes, labels, strict=True):
                obj = ET.SubElement(root, "object")
                ET.SubElement(obj, "name").text = SHAPE_CLASSES[k]
                ET.SubElement(obj, "difficult").text = "0"
                bb = ET.SubElement(obj, "bndbox")
                # VOC is 1-based inclusive: pixel columns x1..x2-1 are xmin = x1 + 1, xmax = x2
                for tag, v in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
                    ET.SubElement(bb, tag).text = str(int(v))
            ET.ElementTree(root).write(folder / "Annotations" / f"{Path(name).stem}.xml")


def write_shapes_detection(
    root: str | os.PathLike,
    *,
    n_train: int = 64,
    n_val: int = 32,
    size: int = 96,
    seed: int = 0,
    format: str = "coco",
) -> Path:
    """Write ``root/train`` and ``root/val`` of synthetic shapes in ``format`` and return ``root``.

    Classes: ``circle``, ``square``, ``triangle`` (COCO category ids 1, 2, 3; YOLO ids 0, 1, 2).
    The same parameters give the same files; a call with the parameters of the files already
    there returns at once. A non-empty folder not written by this function is refused.
    """
    func = "write_shapes_detection"
    check_positive(func, "n_train", n_train, integer=True)
    check_positive(func, "n_val", n_val, integer=True)
    check_positive(func, "size", size, integer=True)
    check_choice(func, "format", format, ("coco", "yolo", "voc"))
    if size < 32:
        fail(func, f"size must be >= 32 pixels; got {size}")
    path = Path(os.fspath(root))
    params = {
        "kind": "shapes-detection",
        "n_train": n_train,
        "n_val": n_val,
        "size": size,
        "seed": seed,
        "format": format,
        "version": 1,
    }
    manifest = path / _MANIFEST
    if manifest.is_file():
        if json.loads(manifest.read_text()) == params:
            return path
        fail(
            func,
            f"'{path}' holds another data set ({manifest.read_text().strip()})",
            hint="pick another root or delete the folder",
        )
    if path.exists() and any(path.iterdir()):
        fail(
            func,
            f"'{path}' is not empty and was not written by {func}",
            hint="pick an empty or new folder",
        )
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        items = [(f"{i:04d}.png", *_draw(rng, size)) for i in range(n)]
        _write_split(path / split, format, items, size)
    manifest.write_text(json.dumps(params))
    return path
