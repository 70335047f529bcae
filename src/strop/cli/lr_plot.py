"""``strop lr-plot SCHEDULE [SCHEDULE ...]``: draw LR schedules to a PNG (and a CSV).

Each SCHEDULE is a name with optional options after a colon, comma-separated, values read as
YAML (numbers, lists, booleans)::

    strop lr-plot cosine --epochs 30 --steps-per-epoch 100 --warmup-epochs 2
    strop lr-plot cosine 'onecycle:max_lr=0.1,pct_start=0.25' 'multistep:milestones=[10,20]' \\
        --epochs 30 --steps-per-epoch 100 --out schedules.png --csv schedules.csv

``--opt KEY=VALUE`` (repeatable) and the warmup flags apply to every schedule drawn; options
after a schedule's colon override them for that schedule.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "schedules",
        nargs="*",
        metavar="SCHEDULE",
        help="name[:key=value,...]; several are drawn together",
    )
    p.add_argument(
        "-s",
        "--schedule",
        dest="more",
        action="append",
        default=[],
        metavar="SCHEDULE",
        help="same as a positional SCHEDULE",
    )
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument(
        "--steps-per-epoch", type=int, default=1, help="optimizer steps per epoch (default 1)"
    )
    p.add_argument("--base-lr", type=float, default=0.1, help="the optimizer's LR (default 0.1)")
    p.add_argument("--warmup-epochs", type=float, default=None)
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--warmup-type", choices=["linear", "exponential"], default=None)
    p.add_argument(
        "--opt", action="append", default=[], metavar="KEY=VALUE", help="option for every schedule"
    )
    p.add_argument(
        "--out", "-o", default="lr_schedule.png", help="PNG to write (default lr_schedule.png)"
    )
    p.add_argument(
        "--csv", default=None, metavar="PATH", help="also write the LR of every step as CSV"
    )
    p.add_argument("--log", action="store_true", help="logarithmic LR axis")


def _value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def _split_top_level(text: str) -> list[str]:
    # commas inside [...] belong to a list value, e.g. milestones=[10,20]
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{("
        depth -= ch in "]})"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p for p in (s.strip() for s in parts) if p]


def _pairs(items: list[str], where: str) -> dict[str, Any]:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"lr-plot: {where} must be KEY=VALUE; got {item!r}")
        options[key.strip()] = _value(value.strip())
    return options


def parse_schedule(text: str) -> tuple[str, dict[str, Any]]:
    """``"onecycle:max_lr=0.1,pct_start=0.25"`` -> ``("onecycle", {"max_lr": 0.1, "pct_start": 0.25})``."""
    name, _, rest = text.partition(":")
    if not name.strip():
        raise ValueError(f"lr-plot: a SCHEDULE must start with a name; got {text!r}")
    return name.strip(), _pairs(_split_top_level(rest), f"an option of {name.strip()!r}")


def run(args: argparse.Namespace) -> int:
    import csv
    from pathlib import Path

    from strop.plots import plot_lr_schedules
    from strop.schedules import preview

    texts = [*args.schedules, *args.more]
    if not texts:
        raise ValueError(
            "lr-plot: name at least one SCHEDULE, e.g. 'strop lr-plot cosine --epochs 30'"
        )
    common = _pairs(args.opt, "--opt")
    for key, value in (
        ("warmup_epochs", args.warmup_epochs),
        ("warmup_steps", args.warmup_steps),
        ("warmup_type", args.warmup_type),
    ):
        if value is not None:
            common[key] = value
    curves: dict[str, list[float]] = {}
    for text in texts:
        name, options = parse_schedule(text)
        spec = {"name": name, **common, **options}
        label = text if text not in curves else f"{text} ({len(curves) + 1})"
        curves[label] = preview(
            spec, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, base_lr=args.base_lr
        )

    plot_lr_schedules(curves, args.out, steps_per_epoch=args.steps_per_epoch, log_y=args.log)
    print(f"plot: {args.out}")
    if args.csv:
        path = Path(args.csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "epoch", *curves])
            for i, row in enumerate(zip(*curves.values(), strict=True)):
                writer.writerow([i, i // args.steps_per_epoch, *(f"{v:.10g}" for v in row)])
        print(f"csv: {path}")
    return 0
