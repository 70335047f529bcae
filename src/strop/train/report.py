"""The plots of a run folder, drawn from its ``metrics.csv``."""

from __future__ import annotations

from pathlib import Path

from strop.plots import plot_metrics
from strop.train.rundir import RunDir, read_metrics

__all__ = ["plot_run", "read_metrics"]


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write ``plots/loss.png``, ``plots/metrics.png`` and ``plots/lr.png``; returns their paths."""
    paths = RunDir(Path(run_dir))
    epochs, steps = read_metrics(paths.metrics)
    return plot_metrics(epochs, steps, paths.plots)
