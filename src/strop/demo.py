"""``strop demo``: the tutorial's transfer-learning story, on real data, in a few minutes on a CPU.

1. *Source task*: a torchvision ``resnet18`` learns digits 0–4 (scikit-learn's real handwritten
   digits). Its backbone weights are saved as a ``.pth`` — the file the tutorial loads.
2. *Target task*: digits 5–9 with only ``shots`` labelled images per class (the situation transfer
   learning is for); the rest of 5–9 is the validation set. Four recipes, same data, same seed:

   ============================  =====================================================
   frozen pretrained backbone    the tutorial's recipe: load .pth, freeze, new head
   frozen random backbone        the same recipe without the pretrained weights
   from scratch                  random init, everything trains
   full fine-tuning              pretrained, everything trains at a 10× lower LR
   ============================  =====================================================

Each is an ordinary :func:`strop.train.fit` run with its own run folder; the demo prints the table
and writes ``comparison.png``. ``--task segmentation`` does the same for the synthetic shapes with
Dice + BCE (``lraspp_mobilenet_v3_large``).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["DemoRow", "run_demo"]


@dataclass
class DemoRow:
    """One recipe's outcome."""

    recipe: str
    metric: str
    value: float  # best epoch's validation metric (what best.pt holds)
    final: float  # last epoch's validation metric
    seconds: float
    trainable_params: int
    run_dir: Path


def _split_target(src: Path, dst: Path, digits: list[str], shots: int, seed: int) -> Path:
    """``dst/train/<d>`` gets ``shots`` images per digit, ``dst/val/<d>`` the rest (copied once)."""
    marker = dst / f".split-{shots}-{seed}"
    if marker.exists():
        return dst
    if dst.exists():
        shutil.rmtree(dst)
    g = torch.Generator().manual_seed(seed)
    for d in digits:
        files = sorted((src / d).iterdir())
        order = torch.randperm(len(files), generator=g).tolist()
        for k, i in enumerate(order):
            part = "train" if k < shots else "val"
            (dst / part / d).mkdir(parents=True, exist_ok=True)
            shutil.copy2(files[i], dst / part / d / files[i].name)
    marker.touch()
    return dst


def _subset(src: Path, dst: Path, digits: list[str]) -> Path:
    if not dst.exists():
        for d in digits:
            shutil.copytree(src / d, dst / d)
    return dst


def run_demo(
    out: str | Path = "strop-demo",
    *,
    task: str = "classification",
    shots: int = 30,
    image_size: int = 64,
    source_epochs: int = 8,
    target_epochs: int = 40,
    precision: str = "auto",
    seed: int = 0,
    progress: bool = True,
    per_class: int | None = None,
    log: Callable[[str], None] = print,
) -> list[DemoRow]:
    """Run the demo into ``out``; returns one :class:`DemoRow` per recipe (see module docstring).

    ``per_class`` caps the digits used per class (all ~180 by default; tests use a few).
    """
    if task == "segmentation":
        return _segmentation_demo(Path(out), shots=shots, image_size=image_size, source_epochs=source_epochs,
                                  target_epochs=target_epochs, precision=precision, seed=seed, progress=progress,
                                  log=log)
    if task != "classification":
        raise ValueError(f"run_demo: task must be 'classification' or 'segmentation'; got {task!r}")
    from strop.data import write_digits
    from strop.train import config_from_dict, fit

    out = Path(out)
    digits = write_digits(out / "data" / "digits", seed=seed, per_class=per_class)
    source_root = _subset(digits, out / "data" / "source-0-4", ["0", "1", "2", "3", "4"])
    target_root = _split_target(digits, out / "data" / "target-5-9", ["5", "6", "7", "8", "9"], shots, seed)

    common = {
        "data": {"image_size": image_size, "batch_size": 32},
        "precision": precision,
        "seed": seed,
        "progress": progress,
    }

    def cfg(name: str, **over: Any) -> Any:
        base = {**common, "output": str(out / "runs" / name)}
        for k, v in over.items():
            base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        return config_from_dict(base)

    log(f"[1/2] source task: resnet18 from scratch on digits 0-4 ({source_epochs} epochs)")
    t = time.perf_counter()
    src = fit(cfg("source-0-4", data={"root": str(source_root), "val_fraction": 0.2, "augment": "crop"},
                  loss={"name": "cross_entropy", "label_smoothing": 0.1},
                  model={"name": "resnet18"}, epochs=source_epochs,
                  optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
                  schedule={"name": "cosine", "warmup_epochs": 1}))
    source_seconds = time.perf_counter() - t
    weights = out / "resnet18-digits-0-4.pth"
    state = torch.load(src.run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)["model"]
    # the backbone only, as a pretrained file for a new task would be: the head is the target's own
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, weights)
    log(f"      source val accuracy {src.best_metric:.3f} in {source_seconds:.0f}s; backbone saved to {weights}")

    log(f"[2/2] target task: digits 5-9 from {shots} labelled images per class, four recipes")
    recipes = [
        ("frozen pretrained backbone (tutorial)", "frozen-pretrained", {"weights": str(weights), "freeze": "backbone"}, 0.1),
        ("frozen random backbone", "frozen-random", {"weights": None, "freeze": "backbone"}, 0.1),
        ("from scratch", "scratch", {"weights": None, "freeze": None}, 0.05),
        ("full fine-tuning, 10x lower LR", "full-finetune", {"weights": str(weights), "freeze": None}, 0.005),
    ]

    def target(name: str, model_opts: dict[str, Any], lr: float) -> Any:
        return cfg(name, data={"root": str(target_root)}, model={"name": "resnet18", **model_opts},
                   epochs=target_epochs, optimizer={"name": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 5e-4},
                   schedule={"name": "cosine", "warmup_epochs": 1})

    return _compare(recipes, target, out, log)


def _compare(recipes: list[tuple[str, str, dict[str, Any], float]], make_config: Callable[..., Any], out: Path,
             log: Callable[[str], None]) -> list[DemoRow]:
    """Train each recipe, print the table, draw ``comparison.png``."""
    from strop.train import fit

    rows = []
    for label, name, model_opts, lr in recipes:
        t = time.perf_counter()
        res = fit(make_config(name, model_opts, lr))
        seconds = time.perf_counter() - t
        rows.append(DemoRow(label, res.monitor, float(res.best_metric or 0.0), float(res.final.get(res.monitor, 0.0)),
                            seconds, _trainable(res.run_dir), res.run_dir))
        log(f"      {label}: {res.monitor} {rows[-1].value:.3f} in {seconds:.0f}s")
    log("")
    log(format_table(rows))
    _plot_comparison(rows, out / "comparison.png")
    log(f"\nplots: {out / 'comparison.png'} and {out / 'runs'}/*/plots/")
    return rows


def _trainable(run_dir: Path) -> int:
    import json

    info = json.loads((run_dir / "run.json").read_text())
    return int(info.get("trainable_params", -1))


def format_table(rows: list[DemoRow]) -> str:
    """A markdown table of the recipes."""
    metric = rows[0].metric if rows else "metric"
    lines = [f"| recipe | best {metric} | last epoch's | trainable params | train time |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.recipe} | {r.value:.3f} | {r.final:.3f} | {r.trainable_params:,} | {r.seconds:.1f} s |")
    return "\n".join(lines)


def _plot_comparison(rows: list[DemoRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from strop.train.report import read_metrics

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        epochs, _ = read_metrics(r.run_dir / "metrics.csv")
        ax1.plot([e["epoch"] for e in epochs], [e[r.metric] for e in epochs], marker="o", label=r.recipe)
    ax1.set(xlabel="epoch", ylabel=rows[0].metric, title="Target task: validation")
    ax1.legend(fontsize=8)
    ax2.barh([r.recipe for r in rows], [r.value for r in rows])
    ax2.set(xlabel=f"best {rows[0].metric}", xlim=(0, 1), title="Best validation metric")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _segmentation_demo(out: Path, *, shots: int, image_size: int, source_epochs: int, target_epochs: int,
                       precision: str, seed: int, progress: bool, log: Callable[[str], None]) -> list[DemoRow]:
    """Source: 3-class shapes (background, circle, square); target: binary foreground of all shapes
    (triangles included) from ``shots`` labelled images; Dice + BCE; lraspp_mobilenet_v3_large."""
    from strop.data import write_shapes
    from strop.train import config_from_dict, fit

    source_root = write_shapes(out / "data" / "shapes-source", n=240, size=image_size, seed=seed + 1, num_classes=3)
    n_val = 120
    target_root = write_shapes(out / "data" / "shapes-target", n=shots + n_val, size=image_size, seed=seed + 2,
                               num_classes=2)
    common = {"task": "segmentation", "precision": precision, "seed": seed, "progress": progress}

    def cfg(name: str, **over: Any) -> Any:
        return config_from_dict({**common, "output": str(out / "runs" / name), **over})

    log(f"[1/2] source task: lraspp_mobilenet_v3_large from scratch on 3-class shapes ({source_epochs} epochs)")
    t = time.perf_counter()
    src = fit(cfg("source-shapes", data={"root": str(source_root), "image_size": image_size, "batch_size": 16},
                  model={"name": "lraspp_mobilenet_v3_large", "bn_momentum": 0.1}, epochs=source_epochs,
                  loss={"dice": {"weight": 1.0, "mode": "multiclass"}, "cross_entropy": 1.0},
                  optimizer={"name": "adamw", "lr": 0.003, "weight_decay": 1e-4},
                  schedule={"name": "cosine", "warmup_epochs": 1}))
    state = torch.load(src.run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)["model"]
    weights = out / "lraspp-shapes-source.pth"
    # the whole source model: its 3-class output convs do not fit the binary target and are re-initialised
    torch.save(state, weights)
    log(f"      source val_dice {src.best_metric:.3f} in {time.perf_counter() - t:.0f}s; backbone saved to {weights}")

    log(f"[2/2] target task: binary shapes (triangles are new) from {shots} labelled images, four recipes")
    val_fraction = n_val / (shots + n_val)
    recipes = [
        ("frozen pretrained backbone (tutorial)", "frozen-pretrained", {"weights": str(weights), "freeze": "backbone"}, 0.003),
        ("frozen random backbone", "frozen-random", {"freeze": "backbone"}, 0.003),
        ("from scratch", "scratch", {}, 0.003),
        ("full fine-tuning, 10x lower LR", "full-finetune", {"weights": str(weights)}, 0.0003),
    ]

    def target(name: str, model_opts: dict[str, Any], lr: float) -> Any:
        return cfg(name, data={"root": str(target_root), "image_size": image_size, "batch_size": 8,
                               "val_fraction": val_fraction},
                   model={"name": "lraspp_mobilenet_v3_large", "bn_momentum": 0.1, **model_opts},
                   epochs=target_epochs, loss={"dice": 1.0, "bce": 1.0},
                   optimizer={"name": "adamw", "lr": lr, "weight_decay": 1e-4},
                   schedule={"name": "cosine", "warmup_epochs": 1})

    return _compare(recipes, target, out, log)
