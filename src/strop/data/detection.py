"""Detection data: COCO JSON, YOLO txt and Pascal VOC XML read as they are, auto-detected.

Layouts (``root`` itself, or ``root/train`` + ``root/val`` each in one of them):

- **COCO**: ``annotations.json`` (or exactly one ``*.json``) + ``images/`` (``file_name`` is
  relative to ``images/``, or to the folder of the JSON). Category ids may have gaps
  (COCO's 1..90); they map, sorted, to class indices 0..K-1.
- **YOLO**: ``images/`` + ``labels/`` (``labels/<stem>.txt``, one ``class cx cy w h`` line per
  box, normalised to [0, 1]); class names from ``classes.txt`` (one a line) or ``data.yaml``
  (``names:`` list or ``{id: name}``). An image without a label file, or with an empty one, is a
  negative.
- **VOC**: ``Annotations/*.xml`` + ``JPEGImages/`` (or ``images/``); ``<filename>`` names the
  image; class names are the sorted set of ``<name>`` values over all splits unless ``classes``
  is given. ``<difficult>1</difficult>`` objects are kept and flagged (``iscrowd`` for COCO eval).

Every record holds absolute ``xyxy`` pixel boxes and 0-based class indices (the model's
background offset is the task's business, not the data's). Boxes with ``x2 < x1``/``y2 < y1``,
NaN, a class out of range, a missing image, an empty annotations file and categories that differ
across splits are refused with one line naming the file, the record and the fix; boxes of zero
width or height, or wholly outside the image, are dropped with one warning listing them; boxes
partly outside are clipped to the image. Images without boxes are valid negatives.
"""

from __future__ import annotations

import json
import math
import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from strop._checks import check_choice, fail
from strop.data.folders import IMAGE_EXTENSIONS

__all__ = [
    "FORMATS",
    "DetectionDataset",
    "DetectionRecord",
    "DroppedBoxesWarning",
    "detect_format",
    "detection_collate",
    "detection_folder",
    "detection_transforms",
    "read_detection",
]

FORMATS = ("coco", "yolo", "voc")
_FUNC = "read_detection"


class DroppedBoxesWarning(UserWarning):
    """Boxes of zero width/height or wholly outside their image were dropped while reading."""


@dataclass(frozen=True)
class DetectionRecord:
    """One image and its boxes: ``boxes`` are absolute ``(x1, y1, x2, y2)`` pixels, ``labels``
    0-based class indices, ``crowd`` COCO's iscrowd / VOC's difficult flag per box."""

    image: Path
    size: tuple[int, int]  # (height, width)
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    labels: tuple[int, ...] = ()
    crowd: tuple[bool, ...] = ()
    source: str = ""  # the annotation file and record, for messages


@dataclass
class _Reader:
    """Collects records and the boxes it had to drop, so the warning lists them all at once."""

    dropped: list[str] = field(default_factory=list)

    def box(self, where: str, fix: str, xyxy: Sequence[float], hw: tuple[int, int]) -> tuple | None:
        x1, y1, x2, y2 = (float(v) for v in xyxy)
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            fail(
                _FUNC, f"{where}: box {[x1, y1, x2, y2]} has a NaN or infinite coordinate", hint=fix
            )
        if x2 < x1 or y2 < y1:
            fail(
                _FUNC,
                f"{where}: box has x2 < x1 or y2 < y1: (x1, y1, x2, y2) = {[x1, y1, x2, y2]}",
                hint=fix,
            )
        h, w = hw
        cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))
        if cx2 <= cx1 or cy2 <= cy1:
            self.dropped.append(f"{where} {[x1, y1, x2, y2]}")
            return None
        return (cx1, cy1, cx2, cy2)

    def warn(self) -> None:
        if self.dropped:
            shown = "; ".join(self.dropped[:5]) + (
                f"; ... ({len(self.dropped)} in all)" if len(self.dropped) > 5 else ""
            )
            warnings.warn(
                f"read_detection: dropped {len(self.dropped)} box(es) of zero width/height or "
                f"outside the image: {shown}",
                DroppedBoxesWarning,
                stacklevel=3,
            )


def _image_size(path: Path, where: str) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except OSError as exc:
        fail(
            _FUNC, f"{where}: cannot read image '{path}' ({exc})", hint="replace or remove the file"
        )


def _images_in(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}


def detect_format(root: str | os.PathLike) -> str:
    """``"coco"``, ``"yolo"`` or ``"voc"`` from the layout of ``root`` (one split folder)."""
    root = Path(root)
    if (root / "Annotations").is_dir():
        return "voc"
    if (root / "labels").is_dir() and (root / "images").is_dir():
        return "yolo"
    if (root / "annotations.json").is_file() or len(list(root.glob("*.json"))) == 1:
        return "coco"
    found = (
        ", ".join(sorted(p.name for p in root.iterdir())[:10])
        if root.is_dir()
        else "nothing (no such folder)"
    )
    fail(
        "detect_format",
        f"'{root}' matches no detection layout; it holds {found}",
        hint="expected COCO (annotations.json + images/), YOLO (images/ + labels/) or VOC "
        "(Annotations/ + JPEGImages/); or pass format='coco'|'yolo'|'voc'",
    )


# ---------------------------------------------------------------------------------------- COCO
def _coco_json(root: Path) -> Path:
    path = root / "annotations.json"
    if path.is_file():
        return path
    found = sorted(root.glob("*.json"))
    if len(found) != 1:
        fail(
            _FUNC,
            f"'{root}' must hold annotations.json (or exactly one *.json); found {len(found)}",
            hint="name the COCO file annotations.json",
        )
    return found[0]


def _read_coco(root: Path, reader: _Reader) -> tuple[list[DetectionRecord], dict[Any, str]]:
    path = _coco_json(root)
    text = path.read_text()
    if not text.strip():
        fail(
            _FUNC,
            f"'{path}' is empty",
            hint="write the COCO JSON (images, annotations, categories)",
        )
    try:
        data = json.loads(text)
    except ValueError as exc:
        fail(
            _FUNC, f"'{path}' is not valid JSON ({exc})", hint="fix the file; it must be COCO JSON"
        )
    if not isinstance(data, dict) or not data.get("images") or "categories" not in data:
        fail(
            _FUNC,
            f"'{path}' has no images or no categories (keys: {sorted(data) if isinstance(data, dict) else type(data).__name__})",
            hint="a COCO file holds 'images', 'annotations' and 'categories' lists",
        )
    categories = {c["id"]: c["name"] for c in data["categories"]}
    index = {cid: k for k, cid in enumerate(sorted(categories))}
    image_dir = root / "images" if (root / "images").is_dir() else path.parent
    images: dict[Any, dict] = {}
    for im in data["images"]:
        file = image_dir / im["file_name"]
        where = f"'{path}' image id {im['id']} ({im['file_name']!r})"
        if not file.is_file():
            fail(
                _FUNC,
                f"{where}: the image '{file}' does not exist",
                hint=f"put it in '{image_dir}' or remove the image and its annotations",
            )
        hw = (
            (int(im["height"]), int(im["width"]))
            if "height" in im and "width" in im
            else _image_size(file, where)
        )
        images[im["id"]] = {"file": file, "hw": hw, "boxes": [], "labels": [], "crowd": []}
    for ann in data.get("annotations", []):
        where = f"'{path}' annotation id {ann.get('id')} (image id {ann.get('image_id')})"
        if ann.get("image_id") not in images:
            fail(
                _FUNC,
                f"{where}: names image id {ann.get('image_id')}, which is not in 'images'",
                hint="add the image to 'images' or remove the annotation",
            )
        if ann.get("category_id") not in index:
            fail(
                _FUNC,
                f"{where}: category_id {ann.get('category_id')} is out of range; categories are "
                f"{sorted(categories)}",
                hint="add the category or fix the id",
            )
        im = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        box = reader.box(
            where,
            "COCO bbox is [x, y, width, height] with width, height >= 0",
            (x, y, x + w, y + h),
            im["hw"],
        )
        if box is not None:
            im["boxes"].append(box)
            im["labels"].append(index[ann["category_id"]])
            im["crowd"].append(bool(ann.get("iscrowd", 0)))
    records = [
        DetectionRecord(
            im["file"],
            im["hw"],
            tuple(im["boxes"]),
            tuple(im["labels"]),
            tuple(im["crowd"]),
            f"'{path}' image id {iid}",
        )
        for iid, im in images.items()
    ]
    return records, {cid: categories[cid] for cid in sorted(categories)}


# ---------------------------------------------------------------------------------------- YOLO
def _yolo_names(root: Path) -> list[str] | None:
    for base in (root, root.parent):
        if (base / "classes.txt").is_file():
            return [
                line.strip()
                for line in (base / "classes.txt").read_text().splitlines()
                if line.strip()
            ]
        if (base / "data.yaml").is_file():
            import yaml

            names = (yaml.safe_load((base / "data.yaml").read_text()) or {}).get("names")
            if isinstance(names, dict):
                return [str(names[k]) for k in sorted(names)]
            if isinstance(names, list):
                return [str(n) for n in names]
    return None


def _read_yolo(
    root: Path, reader: _Reader, classes: Sequence[str] | None
) -> tuple[list[DetectionRecord], dict[Any, str]]:
    names = list(classes) if classes is not None else _yolo_names(root)
    images = _images_in(root / "images")
    labels = {p.stem: p for p in sorted((root / "labels").glob("*.txt"))}
    for stem, lab in labels.items():
        if stem not in images:
            fail(
                _FUNC,
                f"'{lab}' has no image '{root / 'images'}/{stem}.*'",
                hint="add the image or delete the label file",
            )
    if not images:
        fail(
            _FUNC,
            f"'{root / 'images'}' holds no images",
            hint=f"supported: {', '.join(IMAGE_EXTENSIONS)}",
        )
    rows: dict[str, list[tuple[int, int, list[float]]]] = {}
    top = -1
    for stem, lab in labels.items():
        rows[stem] = []
        for n, line in enumerate(lab.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            where = f"'{lab}' line {n}"
            try:
                cls, values = int(parts[0]), [float(v) for v in parts[1:]]
            except ValueError:
                fail(
                    _FUNC,
                    f"{where}: expected 'class cx cy w h' numbers; got {line!r}",
                    hint="fix the line",
                )
            if len(values) != 4:
                fail(
                    _FUNC,
                    f"{where}: expected 5 values 'class cx cy w h'; got {len(parts)}: {line!r}",
                    hint="segmentation polygons are not boxes: convert them, or drop the line",
                )
            if cls < 0 or (names is not None and cls >= len(names)):
                bound = (
                    f"[0, {len(names) - 1}] ({len(names)} names)"
                    if names
                    else "a non-negative integer"
                )
                fail(
                    _FUNC,
                    f"{where}: class id {cls} is out of range; expected {bound}",
                    hint="fix the id or add the class name to classes.txt / data.yaml",
                )
            top = max(top, cls)
            rows[stem].append((n, cls, values))
    if names is None:
        names = [str(k) for k in range(top + 1)]
        warnings.warn(
            f"read_detection: '{root}' has no classes.txt or data.yaml; class names are the ids "
            f"0..{top}",
            UserWarning,
            stacklevel=3,
        )
    records = []
    for stem, file in images.items():
        hw = _image_size(file, f"'{file}'")
        boxes, labs = [], []
        for n, cls, (cx, cy, w, h) in rows.get(stem, []):
            xyxy = (
                (cx - w / 2) * hw[1],
                (cy - h / 2) * hw[0],
                (cx + w / 2) * hw[1],
                (cy + h / 2) * hw[0],
            )
            box = reader.box(
                f"'{labels[stem]}' line {n}",
                "YOLO lines are 'class cx cy w h', normalised, w, h >= 0",
                xyxy,
                hw,
            )
            if box is not None:
                boxes.append(box)
                labs.append(cls)
        records.append(
            DetectionRecord(
                file,
                hw,
                tuple(boxes),
                tuple(labs),
                (False,) * len(labs),
                f"'{labels.get(stem, file)}'",
            )
        )
    return records, dict(enumerate(names))


# ----------------------------------------------------------------------------------------- VOC
def _read_voc(
    root: Path, reader: _Reader, classes: Sequence[str] | None
) -> tuple[list[DetectionRecord], dict[Any, str]]:
    image_dir = root / "JPEGImages" if (root / "JPEGImages").is_dir() else root / "images"
    parsed = []
    for xml in sorted((root / "Annotations").glob("*.xml")):
        try:
            tree = ET.parse(xml).getroot()
        except ET.ParseError as exc:
            fail(_FUNC, f"'{xml}' is empty or not valid XML ({exc})", hint="fix or delete the file")
        name = tree.findtext("filename")
        file = image_dir / (name.strip() if name else "")
        if not name or not file.is_file():
            fail(
                _FUNC,
                f"'{xml}': the image '{file}' does not exist",
                hint=f"<filename> must name a file in '{image_dir}'",
            )
        objects = []
        for k, obj in enumerate(tree.findall("object")):
            bb = obj.find("bndbox")
            label = (obj.findtext("name") or "").strip()
            if bb is None or not label:
                fail(_FUNC, f"'{xml}' object {k}: needs <name> and <bndbox>", hint="fix the object")
            try:
                # VOC pixel indices are 1-based and inclusive: x1 - 1 .. x2 covers the box's pixels
                xyxy = [float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")]
            except (TypeError, ValueError):
                fail(
                    _FUNC,
                    f"'{xml}' object {k} ({label!r}): <bndbox> needs numeric xmin, ymin, xmax, ymax",
                    hint="fix the object",
                )
            xyxy[0] -= 1
            xyxy[1] -= 1
            objects.append((k, label, xyxy, (obj.findtext("difficult") or "0").strip() == "1"))
        parsed.append((xml, file, objects))
    if not parsed:
        fail(_FUNC, f"'{root / 'Annotations'}' holds no .xml files", hint="add the VOC annotations")
    names = (
        list(classes)
        if classes is not None
        else sorted({o[1] for _, _, objs in parsed for o in objs})
    )
    index = {n: i for i, n in enumerate(names)}
    records = []
    for xml, file, objects in parsed:
        hw = _image_size(file, f"'{xml}'")
        boxes, labs, crowd = [], [], []
        for k, label, xyxy, difficult in objects:
            where = f"'{xml}' object {k} ({label!r})"
            if label not in index:
                fail(
                    _FUNC,
                    f"{where}: class {label!r} is not one of {names}",
                    hint="fix the name or the classes list",
                )
            box = reader.box(where, "VOC boxes need xmin <= xmax and ymin <= ymax", xyxy, hw)
            if box is not None:
                boxes.append(box)
                labs.append(index[label])
                crowd.append(difficult)
        records.append(
            DetectionRecord(file, hw, tuple(boxes), tuple(labs), tuple(crowd), f"'{xml}'")
        )
    return records, dict(enumerate(names))


def read_detection(
    root: str | os.PathLike, *, format: str = "auto", classes: Sequence[str] | None = None
) -> tuple[list[DetectionRecord], list[str], dict[Any, str]]:
    """Read one split folder: ``(records, class_names, categories)``.

    ``categories`` maps the file's own category ids (COCO ids, YOLO ids, VOC indices) to names,
    so that splits can be checked against each other. ``format``: ``"auto"`` (from the layout),
    ``"coco"``, ``"yolo"``, ``"voc"``. ``classes`` fixes the names for YOLO/VOC.
    """
    check_choice(_FUNC, "format", format, ("auto", *FORMATS))
    root = Path(os.fspath(root))
    if not root.is_dir():
        fail(
            _FUNC,
            f"root '{root}' is not a folder",
            hint="pass the folder that holds the images and annotations",
        )
    fmt = detect_format(root) if format == "auto" else format
    reader = _Reader()
    if fmt == "coco":
        records, categories = _read_coco(root, reader)
    elif fmt == "yolo":
        records, categories = _read_yolo(root, reader, classes)
    else:
        records, categories = _read_voc(root, reader, classes)
    reader.warn()
    return records, list(categories.values()), categories


def detection_folder(
    root: str | os.PathLike,
    *,
    format: str = "auto",
    val_fraction: float = 0.2,
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> tuple[list[DetectionRecord], list[DetectionRecord], list[str]]:
    """``(train_records, val_records, class_names)`` from ``root``.

    ``root/train`` + ``root/val`` (same format) are used as they are, and their categories must
    agree (same ids, same names); otherwise ``root`` is one set split at random by
    ``val_fraction`` (``seed`` fixes the split).
    """
    root = Path(os.fspath(root))
    if (root / "train").is_dir() and (root / "val").is_dir():
        fmt = detect_format(root / "train") if format == "auto" else format
        train, names, cats = read_detection(root / "train", format=fmt, classes=classes)
        val, val_names, val_cats = read_detection(root / "val", format=fmt, classes=classes)
        if (
            classes is None
            and val_cats != cats
            and (fmt == "voc" or (fmt == "yolo" and _yolo_names(root / "train") is None))
        ):
            # names that come from the boxes themselves (VOC <name>, YOLO ids without a names
            # file): one split may lack a class; both use the union so that ids agree
            if fmt == "voc":
                names = sorted(set(names) | set(val_names))
            else:
                names = [str(k) for k in range(max(len(names), len(val_names)))]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the first read warned already
                train, _, cats = read_detection(root / "train", format=fmt, classes=names)
                val, _, val_cats = read_detection(root / "val", format=fmt, classes=names)
        if val_cats != cats:
            diff = sorted(set(cats.items()) ^ set(val_cats.items()), key=str)[:5]
            fail(
                "detection_folder",
                f"categories of '{root / 'train'}' and '{root / 'val'}' differ; "
                f"(id, name) pairs in one split only: {diff}",
                hint="use one category list for both splits (same ids and names)",
            )
        return train, val, names
    records, names, _ = read_detection(root, format=format, classes=classes)
    if not 0 < val_fraction < 1:
        fail("detection_folder", f"val_fraction must lie in (0, 1); got {val_fraction}")
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(len(records) * val_fraction))
    return [records[i] for i in order[n_val:]], [records[i] for i in order[:n_val]], names


# ----------------------------------------------------------------------------- dataset/transforms
def detection_transforms(
    train: bool, *, augment: str = "flip", image_size: int | None = None, fill: int = 114
) -> v2.Compose:
    """transforms.v2 pipeline over ``(image, {"boxes": BoundingBoxes, "labels": ...})``.

    ``augment`` (train only): ``"none"``; ``"flip"`` (horizontal flip); ``"photometric"`` (flip +
    ``RandomPhotometricDistort``); ``"ssd"`` (torchvision's SSD recipe: photometric distort,
    ``RandomZoomOut``, ``RandomIoUCrop``, flip). ``image_size`` resizes (the longer side) before
    batching; torchvision's detectors also resize internally (``min_size``/``max_size``).
    Images come out float in [0, 1], unnormalised (the detector normalises). Boxes that the
    transforms make degenerate (under 1 px) are removed with their labels (``SanitizeBoundingBoxes``).
    """
    check_choice("detection_transforms", "augment", augment, ("none", "flip", "photometric", "ssd"))
    steps: list[Any] = [v2.ToImage()]
    if train and augment in ("photometric", "ssd"):
        steps.append(v2.RandomPhotometricDistort(p=0.5))
    if train and augment == "ssd":
        steps += [
            v2.RandomZoomOut(fill={tv_tensors.Image: (fill,) * 3, "others": 0}),
            v2.RandomIoUCrop(),
        ]
    if train and augment != "none":
        steps.append(v2.RandomHorizontalFlip(0.5))
    if image_size is not None:
        steps.append(v2.Resize(image_size - 1, max_size=image_size))
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        v2.SanitizeBoundingBoxes(labels_getter=_labels_getter),
    ]
    return v2.Compose(steps)


def _labels_getter(sample: Any) -> tuple[Tensor, ...]:
    target = sample[1]
    return target["labels"], target["iscrowd"]


class DetectionDataset(Dataset):
    """``(image float[3, H, W] in [0, 1], target)`` per record; ``target`` is torchvision's
    detection dict: ``boxes`` (``tv_tensors.BoundingBoxes`` xyxy, float), ``labels`` (int64,
    0-based class indices), ``iscrowd`` (int64), ``image_id`` (the record's index)."""

    def __init__(
        self,
        records: Sequence[DetectionRecord],
        classes: Sequence[str],
        transforms: Callable | None = None,
    ) -> None:
        self.records = list(records)
        self.classes = list(classes)
        self.transforms = transforms if transforms is not None else detection_transforms(False)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Any]]:
        rec = self.records[i]
        with Image.open(rec.image) as im:
            image = im.convert("RGB")
        if (image.height, image.width) != rec.size:
            fail(
                "DetectionDataset",
                f"{rec.source}: image '{rec.image}' is {image.height}x{image.width}, "
                f"the annotations say {rec.size[0]}x{rec.size[1]}",
                hint="fix height/width in the annotations or re-export the image",
            )
        boxes = torch.tensor(rec.boxes, dtype=torch.float32).reshape(-1, 4)
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=rec.size),
            "labels": torch.tensor(rec.labels, dtype=torch.int64),
            "iscrowd": torch.tensor(rec.crowd, dtype=torch.int64).reshape(-1),
            "image_id": i,
        }
        return self.transforms(image, target)


def detection_collate(batch: Sequence[tuple[Tensor, dict]]) -> tuple[list[Tensor], list[dict]]:
    """Images of different sizes cannot stack: a batch is ``(list of images, list of targets)``,
    what torchvision's detectors take (the tutorial's ``collate_fn``)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)
