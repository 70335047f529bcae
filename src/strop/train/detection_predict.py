"""Using a finished detection run: rebuild its detector, print its COCO table, predict boxes, draw them.

A detection checkpoint holds the model's state dict, ``config`` (model name and builder options),
``classes``, ``num_classes`` (object classes), ``detector`` and ``label_offset``; that is all
:func:`load_detector_run` needs (no hub weights: the state dict is complete). Its BatchNorm
statistics are those validation used (recalibrated when the run did it), so evaluating it again
gives the numbers the run logged.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from strop.train.checkpoint import load_checkpoint
from strop.train.config import Config, config_from_dict

__all__ = [
    "coco_table",
    "draw_detections",
    "evaluate_detector_run",
    "load_detector_run",
    "predict_detections",
    "write_detections",
]

_ROWS = [  # (strop name, COCO's summary line)
    ("val_map", "AP @[IoU=0.50:0.95 | area=   all | maxDets=100]"),
    ("val_map_50", "AP @[IoU=0.50      | area=   all | maxDets=100]"),
    ("val_map_75", "AP @[IoU=0.75      | area=   all | maxDets=100]"),
    ("val_map_small", "AP @[IoU=0.50:0.95 | area= small | maxDets=100]"),
    ("val_map_medium", "AP @[IoU=0.50:0.95 | area=medium | maxDets=100]"),
    ("val_map_large", "AP @[IoU=0.50:0.95 | area= large | maxDets=100]"),
    ("val_mar_1", "AR @[IoU=0.50:0.95 | area=   all | maxDets=  1]"),
    ("val_mar_10", "AR @[IoU=0.50:0.95 | area=   all | maxDets= 10]"),
    ("val_mar_100", "AR @[IoU=0.50:0.95 | area=   all | maxDets=100]"),
    ("val_mar_small", "AR @[IoU=0.50:0.95 | area= small | maxDets=100]"),
    ("val_mar_medium", "AR @[IoU=0.50:0.95 | area=medium | maxDets=100]"),
    ("val_mar_large", "AR @[IoU=0.50:0.95 | area= large | maxDets=100]"),
]


def load_detector_run(
    run_dir: str | Path, checkpoint: str = "best"
) -> tuple[nn.Module, Config, dict[str, Any]]:
    """``(detector in eval mode, config, checkpoint dict)`` of a detection run folder."""
    from strop.finetune.detection import detector_info
    from strop.train.detection_run import build_detector_from

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    ck = load_checkpoint(path)
    config = config_from_dict(ck["config"], source=str(path))
    if config.task != "detection":
        raise ValueError(
            f"load_detector_run: {run_dir} is a {config.task} run; expected task: detection"
        )
    model = build_detector_from(config, int(ck["num_classes"]), None)
    model.load_state_dict(ck["model"])
    offset = detector_info(model).label_offset
    if ck.get("label_offset", offset) != offset:
        raise ValueError(
            f"load_detector_run: {path} says label_offset {ck['label_offset']} but "
            f"{config.model.name} uses {offset}; the checkpoint is not from this strop"
        )
    return model.eval(), config, ck


def evaluate_detector_run(
    run_dir: str | Path, *, checkpoint: str = "best", loaded: tuple[nn.Module, Config] | None = None
) -> dict[str, float]:
    """COCO metrics of the run's checkpoint on the validation split the run used (``loaded``:
    the ``(model, config)`` of :func:`load_detector_run`, when already read)."""
    from strop.data import make_loader
    from strop.precision import MixedPrecision, resolve
    from strop.train.detection_run import Detection, detection_datasets
    from strop.train.setup import resolve_device

    model, config = loaded or load_detector_run(run_dir, checkpoint)[:2]
    device = resolve_device(config.device)
    _, val_ds, classes, n = detection_datasets(config)
    task = Detection(n, classes)
    loader = make_loader(
        val_ds,
        batch_size=config.data.batch_size,
        shuffle=False,
        seed=config.seed,
        num_workers=config.data.num_workers,
        device=device,
        collate_fn=task.collate_fn,
    )
    amp = MixedPrecision(resolve(config.precision, device))
    return task.validate(model.to(device), loader, amp=amp, device=device)


def coco_table(metrics: dict[str, float], classes: list[str] | None = None) -> str:
    """pycocotools' summary lines, then one AP line per class (``-`` where undefined)."""

    def value(v: float | None) -> str:
        return "    -" if v is None or math.isnan(v) else f"{v:.3f}"

    lines = [f"{label} = {value(metrics.get(name))}" for name, label in _ROWS]
    names = classes or [k[len("val_ap_") :] for k in metrics if k.startswith("val_ap_")]
    width = max((len(c) for c in names), default=5)
    lines += ["", f"{'class':<{width}}  AP@[.5:.95]"]
    lines += [f"{c:<{width}}  {value(metrics.get(f'val_ap_{c}'))}" for c in names]
    return "\n".join(lines)


@torch.no_grad()
def predict_detections(
    run_dir: str | Path, images: list[str], *, checkpoint: str = "best", score: float = 0.5
) -> list[dict[str, Any]]:
    """Per image ``{"path", "boxes" (xyxy pixels of the image as read), "labels" (class names),
    "scores"}``, keeping detections with score >= ``score``."""
    from strop.finetune.detection import detector_info
    from strop.train.inference import expand_images

    if not 0.0 <= score <= 1.0:
        raise ValueError(f"predict: --score must lie in [0, 1]; got {score}")
    model, _, ck = load_detector_run(run_dir, checkpoint)
    classes, offset = list(ck["classes"]), detector_info(model).label_offset
    rows = []
    for path in expand_images(list(images)):
        out = model([_read(path)])[0]
        keep = out["scores"] >= score
        rows.append(
            {
                "path": str(path),
                "boxes": [[round(float(x), 2) for x in b] for b in out["boxes"][keep].tolist()],
                "labels": [classes[int(k) - offset] for k in out["labels"][keep]],
                "scores": [round(float(s), 4) for s in out["scores"][keep]],
            }
        )
    return rows


def _read_uint8(path: str | Path) -> torch.Tensor:
    """uint8 (3, H, W) RGB, read with PIL (torchvision.io's decoders are deprecated in 0.29)."""
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor

    with Image.open(path) as im:
        return pil_to_tensor(im.convert("RGB"))


def _read(path: Path) -> torch.Tensor:
    return _read_uint8(path).float() / 255


def write_detections(rows: list[dict[str, Any]], fh: Any, fmt: str = "json") -> None:
    """``json``: a list of the rows; ``csv``: one line per box (``path,label,score,x1,y1,x2,y2``)."""
    if fmt == "json":
        json.dump(rows, fh, indent=2)
        fh.write("\n")
        return
    if fmt != "csv":
        raise ValueError(f"predict: --format must be 'json' or 'csv'; got {fmt!r}")
    writer = csv.writer(fh)
    writer.writerow(["path", "label", "score", "x1", "y1", "x2", "y2"])
    for r in rows:
        for box, label, s in zip(r["boxes"], r["labels"], r["scores"], strict=True):
            writer.writerow([r["path"], label, s, *box])


def draw_detections(rows: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Each image with its boxes and ``label score`` captions (``torchvision.utils.draw_bounding_boxes``),
    written as ``out_dir/<stem>.png``; returns the paths."""
    from torchvision.transforms.v2.functional import to_pil_image
    from torchvision.utils import draw_bounding_boxes

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for r in rows:
        image = _read_uint8(r["path"])
        boxes = torch.tensor(r["boxes"], dtype=torch.float32).reshape(-1, 4)
        captions = [f"{lab} {s:.2f}" for lab, s in zip(r["labels"], r["scores"], strict=True)]
        drawn = (
            draw_bounding_boxes(image, boxes, labels=captions, colors="red", width=1)
            if len(boxes)
            else image
        )
        path = out_dir / f"{Path(r['path']).stem}.png"
        to_pil_image(drawn).save(path)
        written.append(path)
    return written
