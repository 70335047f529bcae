"""A run folder: the paths of its files, and the one reader of its ``metrics.csv``.

::

    RUN/config.yaml   the resolved config          RUN/run.json      what "auto" picked and why
    RUN/metrics.csv   one row per step and epoch   RUN/plots/*.png   loss, metrics, LR
    RUN/checkpoints/last.pt   RUN/checkpoints/best.pt
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunDir", "read_metrics", "read_rows"]


@dataclass(frozen=True)
class RunDir:
    """The files of the run folder ``root``."""

    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def choices(self) -> Path:
        return self.root / "run.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """The whole rows of a ``metrics.csv`` as strings; a row torn by a crash (too few or too
    many fields) is left out. No file: no rows."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [row for row in csv.DictReader(fh) if None not in row and None not in row.values()]


def read_metrics(path: str | Path) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """``(epoch_rows, step_rows)`` of a ``metrics.csv`` as floats (empty cells dropped; a row
    with a value that is not a number, e.g. cut by a crash, is left out)."""
    epochs: list[dict[str, float]] = []
    steps: list[dict[str, float]] = []
    for row in read_rows(path):
        try:
            values = {k: float(v) for k, v in row.items() if k != "kind" and v != ""}
        except ValueError:
            continue
        (epochs if row["kind"] == "epoch" else steps).append(values)
    return epochs, steps
