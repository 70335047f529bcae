"""Shared pieces of the benchmarks: the machine's description, timing helpers, data, tables.

Every benchmark runs its candidates in one process, interleaved round by round (so load from other
processes on a shared machine hits them alike), discards warm-up iterations and reports medians.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import platform
import shutil
import statistics
import subprocess
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from strop._interrupt import check_fit

T = TypeVar("T")

__all__ = [
    "StepCPUTimer",
    "Timer",
    "digits_folder",
    "in_memory",
    "load_average",
    "machine",
    "markdown_table",
    "median",
    "quiet",
    "round_order",
    "run_fit",
]


def load_average() -> str:
    """``"1.62 3.85 4.19"`` (1, 5, 15 min) or ``"n/a"``."""
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return platform.processor() or "unknown CPU"


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    from strop.precision import cpu_flags

    flags = cpu_flags()
    isa = [
        label
        for flag, label in (
            ("amx_bf16", "AMX-BF16"),
            ("avx512_bf16", "AVX512-BF16"),
            ("avx512f", "AVX-512F"),
            ("avx2", "AVX2"),
        )
        if flag in flags
    ]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {
        "cpu": _cpu_model(),
        "cores usable": str(cpus),
        "cpu features": ", ".join(isa) or "none of AMX/AVX-512/AVX2",
        "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
    }
    try:
        import lightning

        info["lightning"] = lightning.__version__
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():  # pragma: no cover - CPU machine here
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def median(values: Sequence[float]) -> float:
    """Median (``nan`` for no values)."""
    return statistics.median(values) if values else float("nan")


def round_order(items: Sequence[T], r: int) -> list[T]:
    """The order to run ``items`` in round ``r``: rotated by ``r``, so that every candidate runs
    first (with cold caches) once in ``len(items)`` rounds; in odd rounds the candidates after
    the first are reversed, so that no candidate always follows the same one. A rotation alone
    keeps the cyclic order: in ``auto_choices.py`` ``auto`` then always ran right after ``bf16,
    channels_last`` and measured 0.94-0.95× that identical computation in four runs out of five
    on an AVX512-BF16 CPU (2026-12-04), where an ABBA order put the two level (auto 1.04×)."""
    if not items:
        return []
    k = r % len(items)
    rotated = [*items[k:], *items[:k]]
    return [rotated[0], *rotated[:0:-1]] if r % 2 else rotated


class Timer:
    """Per-iteration wall times: ``tick()`` at each iteration's end, ``start()`` before the first."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last: float | None = None

    def start(self) -> None:
        self._last = time.perf_counter()

    def tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now


class StepCPUTimer:
    """A fit callback: main-thread CPU time per training batch (``time.thread_time``). With one
    torch thread that is the whole step's compute, and much less moved by other processes than
    wall time."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last = 0.0

    def on_epoch_start(self, state: Any) -> None:
        self._last = time.thread_time()

    def on_batch_end(self, state: Any, logs: dict[str, float]) -> None:
        now = time.thread_time()
        self.times.append(now - self._last)
        self._last = now


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence warnings and framework INFO logging (Lightning's banner, num_workers hints)."""
    loggers = [logging.getLogger(n) for n in ("lightning", "lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, lv in zip(loggers, levels, strict=True):
                lg.setLevel(lv)


def digits_folder(root: Path, *, size: int, total: int | None = None) -> Path:
    """The bundled digits (1,797 real scans) at ``size``×``size``, as ``root/<class>/*.png``.

    ``total`` above 1,797 adds jittered copies (shifted by up to 2 pixels, written as new files)
    of the first images of each class, round-robin over classes, until the folder holds ``total``.
    """
    from PIL import Image

    from strop.data import write_digits

    base = write_digits(root / f"digits{size}", size=size)
    if total is None or total <= 1797:
        return base
    out = root / f"digits{size}_{total}"
    marker = out / ".complete"
    if marker.exists():
        return out
    rng = np.random.default_rng(0)
    classes = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {c.name: sorted(c.glob("*.png")) for c in classes}
    for name, pngs in files.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        for png in pngs:
            shutil.copyfile(png, out / name / png.name)
    extra, i = total - sum(len(v) for v in files.values()), 0
    while extra > 0:
        for name, pngs in files.items():
            if extra == 0:
                break
            png = pngs[i % len(pngs)]
            img = np.asarray(Image.open(png))
            dy, dx = (int(v) for v in rng.integers(-2, 3, size=2))
            Image.fromarray(np.roll(img, (dy, dx), axis=(0, 1))).save(
                out / name / f"{png.stem}_j{i}.png"
            )
            extra -= 1
        i += 1
    marker.write_text("ok")
    return out


def in_memory(
    root: Path, *, size: int, n: int | None = None, val: int = 32
) -> tuple[Any, Any, int]:
    """``(train, val, num_classes)`` as ``TensorDataset``s of normalised float images.

    The first ``n`` training images are repeated cyclically when ``n`` exceeds the folder (so a
    benchmark can ask for exactly ``steps × batch`` images at any size). Both datasets carry
    ``deterministic = True`` (no augmentation), as strop's folders do.
    """
    from torch.utils.data import TensorDataset

    from strop.data import image_folder, materialize

    with quiet():
        tr, va, classes = image_folder(root, image_size=size, val_fraction=0.1, seed=0)
    train = materialize(tr)
    vx, vy = materialize(va).tensors
    x, y = train.tensors
    if n is not None:
        idx = torch.arange(n) % len(x)
        x, y = x[idx].contiguous(), y[idx].contiguous()
    out_train = TensorDataset(x, y)
    out_val = TensorDataset(vx[:val].contiguous(), vy[:val].contiguous())
    for ds in (out_train, out_val):
        ds.deterministic = True  # type: ignore[attr-defined]
    return out_train, out_val, len(classes)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats are printed as given (format them first)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def run_fit(
    config: dict[str, Any],
    *,
    data: tuple[Any, Any, int] | None = None,
    callbacks: Sequence[Any] = (),
) -> tuple[Any, dict[int, list[float]], list[tuple[float, str]]]:
    """``strop.train.fit`` on ``config`` (a plain dict), timing every training step.

    Returns ``(result, step_times_by_epoch, log_lines)``: each step's wall time (data loading
    included) from the end of the previous batch (or the epoch's start) to its ``on_batch_end``
    hook, grouped by epoch; and the log lines fit wrote, with ``perf_counter`` stamps. ``data``
    ``(train, val, num_classes)`` replaces the folder named in the config (see ``in_memory``).

    A fit stopped by SIGINT/SIGTERM raises :class:`strop._interrupt.FitInterrupted`: a benchmark
    never reports a cut run's figures, and the script exits with 130/143 (``run_script``).
    """
    from unittest import mock

    from strop.train import config_from_dict, fit
    from strop.train import setup as setup_mod

    times: dict[int, list[float]] = {}
    stamps: list[tuple[float, str]] = []
    last = [0.0]

    class StepTimer:
        def on_epoch_start(self, state: Any) -> None:
            last[0] = time.perf_counter()

        def on_batch_end(self, state: Any, logs: dict[str, float]) -> None:
            now = time.perf_counter()
            times.setdefault(state.epoch, []).append(now - last[0])
            last[0] = now

    def log(msg: str) -> None:
        stamps.append((time.perf_counter(), msg))

    cfg = config_from_dict({"progress": False, **config})
    patch: Any = contextlib.nullcontext()
    if data is not None:
        train, val, ncls = data
        patch = mock.patch.object(
            setup_mod, "load_datasets", lambda c: (train, val, [str(i) for i in range(ncls)], ncls)
        )
    # the earlier fits' garbage collected now, outside the timing: in this long process it would
    # otherwise set off a full collection inside a later fit (0.3 s measured, over ~520k objects
    # tracked after the imports), which a `strop train` process, one fit, does not carry
    gc.collect()
    with quiet(), patch:
        result = fit(
            cfg, callbacks=[StepTimer(), *callbacks], exist_ok=True, log=log
        )  # a rerun replaces
    check_fit(
        result,
        what=f"the benchmark fit writing {cfg.output}",
        resume="run the benchmark again (its report is written only when every part finished)",
    )
    return result, times, stamps
