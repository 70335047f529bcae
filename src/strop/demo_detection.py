"""``strop demo --task detection``: transfer learning for object detection on bundled shapes.

No hub weights are downloaded, so the "pretrained" detector is made here, as in the
classification demo:

1. *Source task*: ``ssdlite320_mobilenet_v3_large`` from scratch on ``n_source`` images of
   synthetic shapes (circles, squares, triangles; ``bundled:shapes-detection``'s writer, one
   seed). Its best checkpoint is saved as a ``.pth`` (the whole detector).
2. *Target task*: ``n_target`` labelled images drawn with another seed (other positions, sizes,
   overlaps), validated on ``n_val`` more. Three recipes, same data, same seed:

   ======================  ===========================================================
   frozen backbone         source weights, ``trainable_backbone_layers: 0`` (SSD extras
                           and heads train; the backbone's weights stay, its BatchNorm
                           statistics are recalibrated on the target images)
   full fine-tuning        source weights, every backbone stage trains (6)
   from scratch            random init, everything trains, the source's recipe
   ======================  ===========================================================

Each is an ordinary :func:`strop.train.fit` run (``task: detection``) with its own run folder;
the demo prints a table of COCO mAP@[.5:.95] and mAP@.5 and writes ``comparison.png`` (val mAP
per epoch of each recipe).

Why these defaults (measured on 2 shared CPU cores, see ``docs/detection.md``): the first demo
(Faster R-CNN MobileNetV3 from scratch, 48 source images × 4 epochs, batch 4) scored mAP 0 with
zero recall: 48 steps are far too few for a detector from scratch, and each Faster R-CNN step
at 96 px cost ~3 s (its box head runs a 12544→1024 MLP over 512 sampled proposals per image,
plus RoIAlign's slow CPU backward) — 10× an SSDLite step. SSDLite has no proposal stage, its
default boxes are relative to the image (0.2-0.95 of it, so 96 px images need no anchor change
for 16-38 px shapes) and it learns at AdamW 3e-3 where SGD 0.05 diverged. fp32, not bf16: bf16
autocast made an SSDLite step ~15% slower on this CPU (depthwise convolutions, no AMX).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "MODEL",
    "DetectionDemoRow",
    "detection_recipes",
    "format_detection_table",
    "plot_detection_comparison",
    "run_detection_demo",
]

MODEL = "ssdlite320_mobilenet_v3_large"
SCRATCH_LR = 3e-3  # AdamW, cosine after one warm-up epoch: the source run and from scratch
FINETUNE_LR = 1e-3  # AdamW from the source weights


@dataclass
class DetectionDemoRow:
    """One recipe's outcome (best epoch by val_map, as best.pt holds it)."""

    recipe: str
    val_map: float
    val_map_50: float
    seconds: float
    trainable_params: int
    run_dir: Path


def run_detection_demo(
    out: str | Path = "strop-demo",
    *,
    n_source: int = 160,
    n_target: int = 32,
    n_val: int = 32,
    image_size: int = 96,
    source_epochs: int = 12,
    target_epochs: int = 12,
    batch_size: int = 8,
    precision: str = "fp32",
    seed: int = 0,
    progress: bool = True,
    recipes: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
) -> list[DetectionDemoRow]:
    """Run the detection demo into ``out/detection``; returns one row per recipe (module doc).
    ``recipes``: labels of :func:`detection_recipes` to run (default: all three). Keep
    ``n_source`` and ``n_target`` off ``1 (mod batch_size)``: SSDLite's last layers are 1×1 at
    these sizes and BatchNorm cannot train on a last batch of one image."""
    from strop.data.shapes_detection import write_shapes_detection
    from strop.train import config_from_dict, fit

    out = Path(out) / "detection"
    source_root = write_shapes_detection(
        out / "data" / "source",
        n_train=n_source,
        n_val=max(8, n_val // 2),
        size=image_size,
        seed=seed,
    )
    target_root = write_shapes_detection(
        out / "data" / "target", n_train=n_target, n_val=n_val, size=image_size, seed=seed + 1
    )

    def cfg(name: str, root: Path, epochs: int, lr: float, model: dict[str, Any]) -> Any:
        return config_from_dict(
            {
                "task": "detection",
                "data": {
                    "root": str(root),
                    "image_size": image_size,
                    "batch_size": batch_size,
                    "augment": "flip",
                },
                "model": {"name": MODEL, **model},
                "optimizer": {"name": "adamw", "lr": lr, "weight_decay": 1e-4},
                "schedule": {"name": "cosine", "warmup_epochs": 1 if epochs > 2 else 0},
                "epochs": epochs,
                "precision": precision,
                "seed": seed,
                "progress": progress,
                "output": str(out / "runs" / name),
            }
        )

    log(
        f"[1/2] source detector: {MODEL} from scratch on {n_source} shape images ({source_epochs} epochs)"
    )
    t = time.perf_counter()
    src = fit(cfg("source", source_root, source_epochs, SCRATCH_LR, {}))
    weights = out / "detector-shapes-source.pth"
    state = torch.load(
        src.run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True
    )["model"]
    torch.save(state, weights)
    log(
        f"      source val mAP {src.best_metric:.3f} in {time.perf_counter() - t:.0f}s; weights saved to {weights}"
    )

    log(f"[2/2] target: {n_target} labelled images drawn with another seed, three recipes")
    rows = []
    for label, name, lr, model in detection_recipes(weights, recipes):
        t = time.perf_counter()
        res = fit(cfg(name, target_root, target_epochs, lr, model))
        best = _best_row(res.history)
        info = json.loads((res.run_dir / "run.json").read_text())
        rows.append(
            DetectionDemoRow(
                label,
                best.get("val_map", 0.0),
                best.get("val_map_50", 0.0),
                time.perf_counter() - t,
                int(info.get("trainable_params", -1)),
                res.run_dir,
            )
        )
        log(
            f"      {label}: val mAP {rows[-1].val_map:.3f} (mAP@.5 {rows[-1].val_map_50:.3f}) in {rows[-1].seconds:.0f}s"
        )
    log("")
    log(format_detection_table(rows))
    plot_detection_comparison(rows, out / "comparison.png")
    log(
        f"\nplot: {out / 'comparison.png'}; runs: {out / 'runs'}/*/ (strop eval / strop predict --draw)"
    )
    return rows


def detection_recipes(
    weights: str | Path, only: Sequence[str] | None = None
) -> list[tuple[str, str, float, dict[str, Any]]]:
    """``(label, run name, lr, model options)`` of each target recipe; ``weights``: the source file."""
    recipes = [
        (
            "frozen backbone",
            "frozen-backbone",
            FINETUNE_LR,
            {"weights": str(weights), "trainable_backbone_layers": 0},
        ),
        (
            "full fine-tuning",
            "full-finetune",
            FINETUNE_LR,
            {"weights": str(weights), "trainable_backbone_layers": 6},
        ),
        ("from scratch", "scratch", SCRATCH_LR, {}),
    ]
    if only is None:
        return recipes
    unknown = [r for r in only if r not in [label for label, *_ in recipes]]
    if unknown:
        raise ValueError(
            f"run_detection_demo: recipes must name some of {[label for label, *_ in recipes]}; got {unknown}"
        )
    return [r for r in recipes if r[0] in only]


def _best_row(history: list[dict[str, float]]) -> dict[str, float]:
    """The epoch with the highest val_map (the one best.pt holds)."""
    return max(history, key=lambda h: h.get("val_map", float("-inf"))) if history else {}


def format_detection_table(rows: list[DetectionDemoRow]) -> str:
    """A markdown table of the recipes."""
    lines = [
        "| recipe | val mAP@[.5:.95] | val mAP@.5 | trainable params | train time |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.recipe} | {r.val_map:.3f} | {r.val_map_50:.3f} | {r.trainable_params:,} | {r.seconds:.1f} s |"
        )
    return "\n".join(lines)


def plot_detection_comparison(rows: list[DetectionDemoRow], path: Path) -> Path:
    """val mAP per epoch of each recipe (left) and the best mAP / mAP@.5 bars (right)."""
    from matplotlib.figure import Figure

    from strop.train.report import read_metrics

    fig = Figure(figsize=(11, 4))
    ax1, ax2 = fig.subplots(1, 2)
    for r in rows:
        epochs, _ = read_metrics(r.run_dir / "metrics.csv")
        ax1.plot(
            [e["epoch"] for e in epochs], [e["val_map"] for e in epochs], marker="o", label=r.recipe
        )
    ax1.set(xlabel="epoch", ylabel="val mAP@[.5:.95]", title="Target task: validation")
    ax1.legend(fontsize=8)
    y = range(len(rows))
    ax2.barh([i + 0.2 for i in y], [r.val_map_50 for r in rows], height=0.4, label="mAP@.5")
    ax2.barh([i - 0.2 for i in y], [r.val_map for r in rows], height=0.4, label="mAP@[.5:.95]")
    ax2.set_yticks(list(y), [r.recipe for r in rows])
    ax2.set(xlabel="best epoch", xlim=(0, 1), title="Best validation mAP")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
