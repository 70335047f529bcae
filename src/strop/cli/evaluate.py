"""``strop eval RUN_DIR``: metrics of the run's best checkpoint on its validation split."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run folder written by strop train")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint (default best)")


def run(args: argparse.Namespace) -> int:
    from strop.train.inference import evaluate_run

    metrics = evaluate_run(args.run_dir, checkpoint=args.checkpoint)
    print(json.dumps(metrics, indent=2))
    return 0
