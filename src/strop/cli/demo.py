"""``strop demo [--out DIR] [--task classification|segmentation]``: the main job on bundled data."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="strop-demo", help="folder for data, runs and plots (default strop-demo)")
    p.add_argument("--task", default="classification", choices=["classification", "segmentation"])
    p.add_argument("--shots", type=int, default=30, help="labelled images per class on the target task")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--source-epochs", type=int, default=8)
    p.add_argument("--target-epochs", type=int, default=40)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs stay)")


def run(args: argparse.Namespace) -> int:
    from strop.demo import run_demo

    run_demo(
        args.out, task=args.task, shots=args.shots, image_size=args.image_size,
        source_epochs=args.source_epochs, target_epochs=args.target_epochs,
        precision=args.precision, seed=args.seed, progress=not args.no_progress,
    )
    return 0
