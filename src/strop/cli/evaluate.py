"""``strop eval RUN_DIR [--tta]``: metrics of the run's best weights on its validation split, and its diagnostics.

Detection runs print the COCO table (AP/AR summary lines, then AP per class); ``--json`` prints
the metrics as JSON for every task."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run folder written by strop train")
    p.add_argument(
        "--checkpoint",
        default="best",
        choices=["best", "last"],
        help="which checkpoint (default best: the weights run.json says validated best)",
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="also score with test-time augmentation (flip; + 2x scale for segmentation); "
        "reports *_tta and *_tta_gain",
    )
    p.add_argument(
        "--diagnostics",
        default=None,
        metavar="DIR",
        help="folder for the confusion matrix / per-class table / top losses "
        "(default RUN_DIR/diagnostics); 'none' to skip",
    )
    p.add_argument(
        "--json", action="store_true", help="print JSON (the default except for detection)"
    )


def run(args: argparse.Namespace) -> int:
    from strop.train.inference import evaluate_run

    out = (
        None
        if args.diagnostics == "none"
        else Path(args.diagnostics or Path(args.run_dir) / "diagnostics")
    )
    metrics = evaluate_run(args.run_dir, checkpoint=args.checkpoint, tta=args.tta, diagnostics=out)
    if not args.json and "val_map" in metrics:
        from strop.train.detection_predict import coco_table

        print(coco_table(metrics))
        return 0
    print(json.dumps(metrics, indent=2))
    if out is not None:
        print(f"diagnostics: {', '.join(sorted(str(f) for f in out.iterdir()))}", file=sys.stderr)
    return 0
