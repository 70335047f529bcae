"""``strop eval RUN_DIR``: metrics of the run's best checkpoint on its validation split.

Detection runs print the COCO table (AP/AR summary lines, then AP per class); ``--json`` prints
the metrics as JSON for every task."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run folder written by strop train")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint (default best)")
    p.add_argument("--json", action="store_true", help="print JSON (the default except for detection)")


def run(args: argparse.Namespace) -> int:
    from strop.train.inference import evaluate_run

    metrics = evaluate_run(args.run_dir, checkpoint=args.checkpoint)
    if not args.json and "val_map" in metrics:
        from strop.train.detection_predict import coco_table

        print(coco_table(metrics))
        return 0
    print(json.dumps(metrics, indent=2))
    return 0
