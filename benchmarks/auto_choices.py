"""What ``auto`` picks against every fixed choice: precision × memory format (× compile).

Run ``python benchmarks/auto_choices.py [--compile] [--frozen] [--size N] [--precisions fp32,bf16]
[--rounds N] [--steps N] [--threads N]``.
``strop.train.fit`` trains resnet18 (random init, full fine-tuning, 10 classes, batch 32, SGD
momentum 0.9) for one epoch of ``--steps`` steps on the same in-memory tensors (the bundled digits
at 64×64; ``--frozen``: the backbone frozen, ``feature_cache: off``) with each fixed choice:

- ``precision``: ``fp32``, ``bf16``;
- ``memory_format``: ``contiguous``, ``channels_last``;
- ``compile``: ``false`` (``--compile`` adds ``true``: each compiled fit pays minutes of compile
  time, which lies outside the timed steps);

and once with ``precision: auto``, ``memory_format: auto`` (and ``compile: auto`` with
``--compile``). Candidates run interleaved, round by round, in one process; each run's first
``WARMUP`` steps are dropped and the table gives ``batch / median step`` over all rounds. The
verdict compares ``auto`` with the best fixed choice (goal: never more than 5% slower); the ratio
of ``auto`` to the fixed run that made the same choices is printed too, as the measurement's own
noise (the two are the same computation). About 2-3 minutes on 2 idle cores without
``--compile``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    StepCPUTimer,
    in_memory,
    load_average,
    machine,
    markdown_table,
    median,
    round_order,
    run_fit,
)

__all__ = ["Choice", "Outcome", "candidates", "main", "picked", "run", "summarize"]

BATCH = 32
WARMUP = 2
GOAL = 0.95  # auto must reach 95% of the best fixed choice's throughput


@dataclass(frozen=True)
class Choice:
    """One candidate: the three config values (``"auto"`` for the auto candidate)."""

    precision: str
    memory_format: str
    compile: bool | str

    @property
    def is_auto(self) -> bool:
        return self.precision == "auto"

    @property
    def label(self) -> str:
        if self.is_auto:
            return "auto" + (" (compile: auto)" if self.compile == "auto" else "")
        return f"{self.precision}, {self.memory_format}, compile {str(self.compile).lower()}"


@dataclass
class Outcome:
    """Step times of one candidate over all rounds (warm-up dropped) and per-round medians;
    ``choices``: what the last fit resolved (``run.json``'s choices)."""

    choice: Choice
    times: list[float] = field(default_factory=list)
    round_medians: list[float] = field(default_factory=list)
    choices: dict[str, Any] = field(default_factory=dict)
    cpu_times: list[float] = field(default_factory=list)  # main-thread CPU seconds per step

    @property
    def images_per_s(self) -> float:
        return BATCH / median(self.times)


PRECISIONS = ("fp32", "bf16")


def candidates(compile: bool = False, precisions: Sequence[str] = PRECISIONS) -> list[Choice]:
    """Every fixed choice (``precisions`` × contiguous/channels_last × compile false[/true]),
    then auto."""
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown or not precisions:
        raise ValueError(
            f"candidates: precisions must be some of {', '.join(PRECISIONS)}; got {list(precisions)}"
        )
    compiles: tuple[bool, ...] = (False, True) if compile else (False,)
    fixed = [
        Choice(p, f, c)
        for c in compiles
        for p in PRECISIONS
        if p in precisions
        for f in ("contiguous", "channels_last")
    ]
    return [*fixed, Choice("auto", "auto", "auto" if compile else False)]


def picked(choices: dict[str, Any]) -> Choice:
    """The fixed :class:`Choice` that a fit's resolved ``choices`` amount to."""
    fmt = str(choices["memory_format"])
    if fmt not in ("channels_last", "contiguous_format"):
        raise ValueError(f"picked: unexpected memory_format {fmt!r} in the fit's choices")
    return Choice(
        str(choices["precision"]),
        "channels_last" if fmt == "channels_last" else "contiguous",
        bool(choices["compile"]),
    )


def summarize(outcomes: Sequence[Outcome]) -> tuple[list[list[str]], dict[str, Any]]:
    """Table rows and the verdict: ``{"best": Choice, "auto": Choice it picked, "ratio": auto /
    best, "noise": auto / the fixed run that made the same choices (None if not measured),
    "met": ratio >= GOAL}``. Exactly one auto outcome and at least one fixed one are expected."""
    autos = [o for o in outcomes if o.choice.is_auto]
    fixed = [o for o in outcomes if not o.choice.is_auto]
    if len(autos) != 1 or not fixed:
        raise ValueError(
            f"summarize: need one auto and at least one fixed outcome; got "
            f"{len(autos)} auto and {len(fixed)} fixed"
        )
    auto = autos[0]
    best = max(fixed, key=lambda o: o.images_per_s)
    chose = picked(auto.choices)
    twin = next((o for o in fixed if o.choice == chose), None)
    rows = []
    for o in [*fixed, auto]:
        spread = (
            f"{BATCH / max(o.round_medians):.1f}–{BATCH / min(o.round_medians):.1f}"
            if o.round_medians
            else "n/a"
        )
        label = o.choice.label + (f" → {chose.label}" if o is auto else "")
        rows.append(
            [label, f"{o.images_per_s:.1f}", spread, f"{o.images_per_s / best.images_per_s:.2f}"]
        )
    ratio = auto.images_per_s / best.images_per_s
    verdict = {
        "best": best.choice,
        "auto": chose,
        "ratio": ratio,
        "noise": None if twin is None else auto.images_per_s / twin.images_per_s,
        "met": ratio >= GOAL,
    }
    return rows, verdict


def _config(choice: Choice, size: int, out: Path, frozen: bool = False) -> dict[str, Any]:
    return {
        "data": {
            "root": "(in-memory tensors)",
            "image_size": size,
            "batch_size": BATCH,
            "num_workers": 0,
        },
        "model": {"name": "resnet18", "freeze": "backbone" if frozen else None},
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        # frozen: the backbone runs every step (the cache would take it out of the step)
        "feature_cache": "off",
        "precision": choice.precision,
        "memory_format": choice.memory_format,
        "compile": choice.compile,
        "epochs": 1,
        "output": str(out),
    }


def run(
    *,
    size: int = 64,
    steps: int = 10,
    rounds: int = 3,
    compile: bool = False,
    frozen: bool = False,
    precisions: Sequence[str] = PRECISIONS,
    data: tuple[Any, Any, int] | None = None,
    progress: Callable[[str], None] = lambda msg: None,
) -> tuple[str, list[Outcome], dict[str, Any]]:
    """Returns ``(markdown, outcomes, verdict)`` (see :func:`summarize`). ``data``: ``(train,
    val, num_classes)`` to train on instead of the bundled digits (``steps × batch`` images).
    ``frozen``: the backbone frozen (``freeze: backbone``, ``feature_cache: off``) instead of
    full fine-tuning. ``precisions``: the fixed precisions tried (``auto`` may pick one left
    out, e.g. emulated bf16 at 224 px, minutes a step on an AVX2 CPU; the verdict then says so)."""
    from strop.data import write_digits

    outcomes = [Outcome(c) for c in candidates(compile, precisions)]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if data is None:
            root = write_digits(tmp / "digits", size=size, per_class=40)
            data = in_memory(root, size=size, n=steps * BATCH, val=BATCH)
        for r in range(rounds):
            for o in round_order(outcomes, r):
                progress(f"  auto choices round {r + 1}/{rounds}: {o.choice.label}")
                cpu = StepCPUTimer()
                result, times, _ = run_fit(
                    _config(o.choice, size, tmp / "run", frozen), data=data, callbacks=[cpu]
                )
                o.cpu_times += cpu.times[WARMUP:]
                kept = times.get(0, [])[WARMUP:]
                o.times += kept
                if kept:
                    o.round_medians.append(median(kept))
                o.choices = dict(result.choices)
    rows, verdict = summarize(outcomes)
    # rows are the fixed outcomes, then auto (summarize's order)
    ordered = [o for o in outcomes if not o.choice.is_auto] + [
        o for o in outcomes if o.choice.is_auto
    ]
    cpu_rate = [BATCH / median(o.cpu_times) if o.cpu_times else None for o in ordered]
    cpu_best = max((c for c in cpu_rate[:-1] if c is not None), default=None)
    for row, rate in zip(rows, cpu_rate, strict=True):
        row.append("n/a" if rate is None or cpu_best is None else f"{rate / cpu_best:.2f}")
    md = markdown_table(
        [
            "choice",
            "img/s (median step)",
            "per-round range",
            "× best fixed",
            "× best fixed, by CPU time (1 thread)",
        ],
        rows,
    )
    noise = "n/a" if verdict["noise"] is None else f"{verdict['noise']:.2f}"
    md += (
        f"\n\n- `auto` picked **{verdict['auto'].label}**; best fixed: {verdict['best'].label}; "
        f"auto / best = **{verdict['ratio']:.2f}** (goal ≥ {GOAL:.2f}: "
        f"{'met' if verdict['met'] else '**missed**'}); auto / the same fixed choice = {noise} "
        "(identical computations: the measurement's noise)"
        f"\n- resnet18 {'frozen backbone (feature_cache: off)' if frozen else 'full fine-tuning'} at {size}×{size}, batch {BATCH}, {steps} steps per run "
        f"({WARMUP} dropped), {rounds} rounds interleaved; precision reason: "
        f"{outcomes[-1].choices.get('precision_reason', 'n/a')}"
    )
    return md, outcomes, verdict


def main(argv: Sequence[str] | None = None) -> str:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile", action="store_true", help="add compile: true (minutes)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="training steps per run")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--frozen", action="store_true", help="frozen backbone (feature_cache: off) instead of full"
    )
    parser.add_argument(
        "--precisions",
        default=",".join(PRECISIONS),
        help="fixed precisions to try, comma-separated (default: fp32,bf16)",
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    before = load_average()
    md, _, _ = run(
        size=args.size,
        steps=args.steps,
        rounds=args.rounds,
        compile=args.compile,
        frozen=args.frozen,
        precisions=[p for p in args.precisions.split(",") if p],
        progress=lambda m: print(m, file=sys.stderr),
    )
    info = ", ".join(f"{k}: {v}" for k, v in machine().items())
    return f"{md}\n- {info}; load average {before} at start, {load_average()} at end"


if __name__ == "__main__":
    from strop._interrupt import run_script

    sys.exit(run_script(lambda: print(main(sys.argv[1:])), name="benchmarks/auto_choices.py"))
