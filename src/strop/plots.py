"""Figures: a run's loss, metrics and LR, schedules, and the LR range test.

matplotlib is imported inside the functions and only through its object-oriented API
(``matplotlib.figure.Figure``), so nothing here touches pyplot's global state or needs a display:
it works headless and inside a user's notebook alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from strop._checks import fail

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_lr_find", "plot_lr_schedules", "plot_metrics"]


def _save(fig: Figure, path: str | Path | None) -> None:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)


def plot_lr_schedules(
    schedules: Mapping[str, Sequence[float]],
    path: str | Path | None = None,
    *,
    steps_per_epoch: int = 1,
    log_y: bool = False,
    title: str = "Learning-rate schedules",
) -> Figure:
    """Draw several LR sequences (e.g. from :func:`strop.schedules.preview`) on one figure.

    Args:
        schedules: label -> LR of each optimizer step.
        path: where to write the PNG (None: only return the figure).
        steps_per_epoch: the x axis is in epochs (step / steps_per_epoch).
        log_y: logarithmic LR axis.
        title: figure title.

    Returns:
        The ``matplotlib.figure.Figure`` (one line per schedule, in the order given).
    """
    from matplotlib.figure import Figure

    if not schedules:
        fail("plot_lr_schedules", "schedules must hold at least one label -> LR sequence; got none")
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    for label, lrs in schedules.items():
        ax.plot(
            [i / steps_per_epoch for i in range(len(lrs))], list(lrs), label=label, linewidth=1.5
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    if log_y:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    return fig


def plot_lr_find(result: Any, path: str | Path | None = None) -> Figure:
    """Draw an LR range test: smoothed loss against LR (log axis), each suggestion marked.

    Args:
        result: a :class:`strop.schedules.LRFindResult` (``lrs``, ``losses``, ``suggestions``,
            ``suggestion``).
        path: where to write the PNG (None: only return the figure).

    Returns:
        The figure: one loss line, plus one marker per suggestion (the primary one labelled
        with its value).
    """
    from matplotlib.figure import Figure

    if not result.lrs:
        fail("plot_lr_find", "result holds no points (the test stopped at its first step)")
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(result.lrs, result.losses, label="smoothed loss", color="C0")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    for i, (rule, lr) in enumerate(result.suggestions.items()):
        # the loss at the suggested LR: the recorded point nearest to it
        j = min(range(len(result.lrs)), key=lambda k: abs(result.lrs[k] - lr))
        ax.plot(
            [lr],
            [result.losses[j]],
            marker="o",
            linestyle="none",
            color=f"C{i + 1}",
            label=f"{rule}: {lr:.2e}",
        )
    if result.suggestion is not None:
        ax.axvline(result.suggestion, color="C1", linestyle="--", linewidth=1)
    ax.set_title(
        "LR range test" + (f" — suggestion {result.suggestion:.2e}" if result.suggestion else "")
    )
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
    return fig


def _curve_figure(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure

    # fixed margins, not a layout solver ("constrained" doubled the cost of each figure); the
    # y tick labels stay short (at most ~5 characters) because values below 0.01 or from 1000 up
    # are written with a ×10^k offset
    fig = Figure(figsize=(6, 4))
    fig.subplots_adjust(left=0.15, right=0.97, bottom=0.12, top=0.91)
    ax = fig.add_subplot()
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3), useOffset=False)
    return fig, ax


def _epoch_lines(
    ax: Any, epochs: list[dict[str, float]], x: str, keys: Sequence[tuple[str, str]]
) -> None:
    for key, label in keys:
        pts = [(e[x], e[key]) for e in epochs if key in e]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=label)


def plot_metrics(
    epochs: Sequence[dict[str, float]], steps: Sequence[dict[str, float]], out_dir: str | Path
) -> list[Path]:
    """Write ``loss.png``, ``metrics.png`` and ``lr.png`` into ``out_dir``; returns their paths.

    Args:
        epochs: one dict per epoch (``epoch``, ``step``, ``train_loss``, ``val_loss``,
            ``val_accuracy``, ...), as :func:`strop.train.rundir.read_metrics` returns them.
        steps: one dict per optimizer step (``step``, ``loss``, ``lr``).
        out_dir: the folder (created when missing).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    epochs, steps = list(epochs), list(steps)

    loss, ax = _curve_figure("Loss", "optimizer step", "loss")
    if steps:
        ax.plot(
            [s["step"] for s in steps],
            [s["loss"] for s in steps],
            alpha=0.3,
            label="train (per step)",
        )
    _epoch_lines(
        ax, epochs, "step", [("train_loss", "train (epoch mean)"), ("val_loss", "validation")]
    )
    ax.legend()

    metrics, ax = _curve_figure("Metrics", "epoch", "metric")
    keys = (
        "train_accuracy",
        "val_accuracy",
        "val_top5",
        "val_dice",
        "val_iou",
        "val_map",
        "val_map_50",
    )
    _epoch_lines(ax, epochs, "epoch", [(k, k) for k in keys])
    ax.legend()

    lr, ax = _curve_figure("Learning rate", "optimizer step", "learning rate")
    if steps:
        ax.plot([s["step"] for s in steps], [s["lr"] for s in steps])

    written = []
    for name, fig in (("loss", loss), ("metrics", metrics), ("lr", lr)):
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=100)
        written.append(path)
    return written
