"""strop's fixed per-step work next to the best hand loop, measured as work done (CPU time).

Run ``python benchmarks/step_overhead.py [--size 64] [--steps 12] [--rounds 3] [--profile]
[--frozen]`` (``--frozen``: the backbone frozen, ``feature_cache: off``, as strop trains it).

resnet18 (10 classes, batch 32, SGD momentum 0.9) trains on the same in-memory tensors in two
candidates, interleaved round by round in one process, both in the best hand loop's setting for
the CPU (``training.py``: bf16 autocast + channels_last where bf16 is native, else fp32 in
``hand_format``'s layout):

- ``hand``: the best hand loop of ``training.py`` (its bookkeeping: ``loss.item()``, argmax
  accuracy);
- ``strop``: ``strop.train.fit`` with the same ``precision`` and ``memory_format``
  (``nonfinite: skip``, metrics rows, progress off).

Each step is timed with ``time.thread_time()`` of the main thread under ``torch.set_num_threads(1)``
(``num_workers: 0``, so loading is in that thread too): CPU time is the work done, which a loaded
machine inflates far less than wall time. The overhead is ``median(strop) / median(hand) - 1``.
``--profile`` also prints ``torch.profiler``'s table of the ops strop runs that the hand loop does
not (the per-step fixed work) and their share of the step.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from common import StepCPUTimer, digits_folder, in_memory, median, run_fit
from training import BATCH, HAND_PRECISION, _loader, hand_format, hand_setup, hand_step

__all__ = ["main", "measure"]

#: the best hand loop's precision on this CPU (training.py), which strop is given too
PRECISION = HAND_PRECISION


def _format(size: int, frozen: bool = False) -> str:
    """The best hand loop's memory format at ``size`` px, as a config value."""
    fmt = hand_format(frozen, size)
    return "channels_last" if fmt == torch.channels_last else "contiguous"


def hand_steps(
    data: tuple[Any, Any, int], on_step: Any = None, *, frozen: bool = False
) -> list[float]:
    """CPU seconds of each step of the best hand loop (one epoch over ``data``)."""
    model, opt = hand_setup(data, fast=True, frozen=frozen)
    times, last = [], time.thread_time()
    for x, y in _loader(data[0]):
        hand_step(model, opt, x, y, fast=True, frozen=frozen)
        now = time.thread_time()
        times.append(now - last)
        last = now
        if on_step is not None:
            on_step()
    return times


def strop_steps(
    data: tuple[Any, Any, int],
    size: int,
    out: Path,
    extra: Sequence[Any] = (),
    *,
    frozen: bool = False,
) -> list[float]:
    """CPU seconds of each step of ``strop.train.fit`` (one epoch over ``data``)."""
    timer = StepCPUTimer()
    run_fit(
        {
            "data": {
                "root": "(in-memory tensors)",
                "image_size": size,
                "batch_size": BATCH,
                "num_workers": 0,
            },
            "model": {"name": "resnet18", "freeze": "backbone" if frozen else None},
            "precision": PRECISION,
            "memory_format": _format(size, frozen),
            "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
            "nonfinite": "skip",
            "epochs": 1,
            "feature_cache": "off",
            "output": str(out),
            "compile": False,
        },
        data=data,
        callbacks=[timer, *extra],
    )
    return timer.times


def measure(
    *,
    size: int = 64,
    steps: int = 12,
    rounds: int = 3,
    warmup: int = 2,
    root: Path | None = None,
    frozen: bool = False,
) -> dict[str, Any]:
    """``{"hand": [...], "strop": [...], "overhead": fraction}`` (CPU seconds per step)."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = in_memory(
            digits_folder(root or tmp / "data", size=size), size=size, n=(steps + warmup) * BATCH
        )
        res: dict[str, list[float]] = {"hand": [], "strop": []}
        for r in range(rounds):
            order = ["hand", "strop"] if r % 2 == 0 else ["strop", "hand"]
            for name in order:
                t = (
                    hand_steps(data, frozen=frozen)
                    if name == "hand"
                    else strop_steps(data, size, tmp / f"s{r}", frozen=frozen)
                )
                res[name] += t[warmup:]
    return {**res, "overhead": median(res["strop"]) / median(res["hand"]) - 1}


class _ProfStep:
    def __init__(self, prof: Any) -> None:
        self.prof = prof

    def on_batch_end(self, state: Any, logs: dict[str, float]) -> None:
        self.prof.step()


def profile_table(
    size: int = 64, steps: int = 6, root: Path | None = None, frozen: bool = False
) -> str:
    """torch.profiler: self CPU time of each op, strop vs the hand loop, over ``steps`` training
    steps after 2 warm-up steps (start-up, validation and checkpoints are outside)."""
    from torch.profiler import ProfilerActivity, profile, schedule

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = in_memory(
            digits_folder(root or tmp / "data", size=size), size=size, n=(steps + 3) * BATCH
        )
        tables = {}
        for name in ("hand", "strop"):
            sched = schedule(wait=1, warmup=1, active=steps, repeat=1)
            with profile(activities=[ProfilerActivity.CPU], schedule=sched) as prof:
                if name == "hand":
                    hand_steps(data, on_step=prof.step, frozen=frozen)
                else:
                    strop_steps(data, size, tmp / "p", extra=[_ProfStep(prof)], frozen=frozen)
            tables[name] = {e.key: (e.self_cpu_time_total, e.count) for e in prof.key_averages()}
    total = {k: sum(t for t, _ in v.values()) for k, v in tables.items()}
    rows = []
    for key in set(tables["strop"]) | set(tables["hand"]):
        t, n = tables["strop"].get(key, (0.0, 0))
        h, hn = tables["hand"].get(key, (0.0, 0))
        if n != hn or key.startswith("ProfilerStep") or abs(t - h) > 0.005 * total["hand"]:
            rows.append((t - h, key, n, hn))
    rows.sort(reverse=True)
    lines = [
        f"self CPU µs over {steps} steps: hand {total['hand']:.0f}, strop {total['strop']:.0f} "
        f"({100 * (total['strop'] / total['hand'] - 1):+.1f}%); ops whose call count differs:",
        "| op | strop − hand, µs | % of hand step | calls strop / hand |",
        "|---|---|---|---|",
    ]
    for extra, key, n, hn in rows[:20]:
        lines.append(f"| {key} | {extra:.0f} | {100 * extra / total['hand']:.2f}% | {n} / {hn} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--frozen", action="store_true", help="frozen backbone (feature_cache: off), BN in eval"
    )
    args = parser.parse_args(argv)
    m = measure(size=args.size, steps=args.steps, rounds=args.rounds, frozen=args.frozen)
    mode = "frozen backbone" if args.frozen else "full"
    out = (
        f"resnet18 {mode} {args.size}px {PRECISION} {_format(args.size, args.frozen)}, batch {BATCH}, 1 thread, CPU time per step "
        f"(median of {len(m['hand'])}): hand {1e3 * median(m['hand']):.1f} ms, strop "
        f"{1e3 * median(m['strop']):.1f} ms; strop's overhead {100 * m['overhead']:+.1f}%"
    )
    if args.profile:
        out += "\n\n" + profile_table(args.size, frozen=args.frozen)
    return out


if __name__ == "__main__":
    from strop._interrupt import run_script

    sys.exit(run_script(lambda: print(main(sys.argv[1:])), name="benchmarks/step_overhead.py"))
