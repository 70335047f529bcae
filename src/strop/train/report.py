"""Plots of a run, drawn from its ``metrics.csv`` (matplotlib imported inside, Agg backend)."""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["plot_run", "read_metrics"]


def read_metrics(path: str | Path) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """``(epoch_rows, step_rows)`` of a run's ``metrics.csv`` as floats (empty cells dropped)."""
    epochs: list[dict[str, float]] = []
    steps: list[dict[str, float]] = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            values = {k: float(v) for k, v in row.items() if k != "kind" and v not in ("", None)}
            (epochs if row["kind"] == "epoch" else steps).append(values)
    return epochs, steps


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write ``plots/loss.png``, ``plots/metrics.png`` and ``plots/lr.png``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    epochs, steps = read_metrics(run_dir / "metrics.csv")
    out_dir = run_dir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    fig, ax = plt.subplots(figsize=(6, 4))
    if steps:
        ax.plot([s["step"] for s in steps], [s["loss"] for s in steps], alpha=0.3, label="train (per step)")
    for key, label in (("train_loss", "train (epoch mean)"), ("val_loss", "validation")):
        pts = [(e["step"], e[key]) for e in epochs if key in e]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    ax.set(xlabel="optimizer step", ylabel="loss", title="Loss")
    ax.legend()
    written.append(_save(fig, out_dir / "loss.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("train_accuracy", "val_accuracy", "val_top5", "val_dice", "val_iou"):
        pts = [(e["epoch"], e[key]) for e in epochs if key in e]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=key)
    ax.set(xlabel="epoch", ylabel="metric", title="Metrics")
    ax.legend()
    written.append(_save(fig, out_dir / "metrics.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    if steps:
        ax.plot([s["step"] for s in steps], [s["lr"] for s in steps])
    ax.set(xlabel="optimizer step", ylabel="learning rate", title="Learning rate")
    written.append(_save(fig, out_dir / "lr.png"))
    return written


def _save(fig: object, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()  # type: ignore[attr-defined]
    fig.savefig(path, dpi=100)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return path
