"""A run folder: the paths of its files, and the one reader of its ``metrics.csv``.

::

    RUN/config.yaml   the resolved config          RUN/run.json      what "auto" picked and why
    RUN/metrics.csv   one row per step and epoch   RUN/plots/*.png   loss, metrics, LR
    RUN/checkpoints/last.pt   RUN/checkpoints/best.pt
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LAYOUT", "RunDir", "read_metrics", "read_rows"]


# attribute -> path inside the run folder
LAYOUT = {
    "checkpoints": "checkpoints",
    "last": "checkpoints/last.pt",
    "best": "checkpoints/best.pt",
    "metrics": "metrics.csv",
    "config": "config.yaml",
    "choices": "run.json",
    "plots": "plots",
}


@dataclass(frozen=True)
class RunDir:
    """The files of the run folder ``root`` (attributes as in :data:`LAYOUT`)."""

    root: Path
    checkpoints: Path = field(init=False)
    last: Path = field(init=False)
    best: Path = field(init=False)
    metrics: Path = field(init=False)
    config: Path = field(init=False)
    choices: Path = field(init=False)
    plots: Path = field(init=False)

    def __post_init__(self) -> None:
        for name, rel in LAYOUT.items():
            object.__setattr__(self, name, self.root / rel)


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
