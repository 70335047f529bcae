"""``strop predict RUN_DIR IMAGE... [--out preds.csv] [--top K]``: class and probability per image."""

from __future__ import annotations

import argparse
import csv
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run folder written by strop train (classification)")
    p.add_argument("images", nargs="+", help="image files (or folders of images)")
    p.add_argument("--out", default=None, help="CSV file to write (default: standard output)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--tta", action="store_true", help="average the probabilities of the image and its mirror")


def run(args: argparse.Namespace) -> int:
    from strop.train.inference import predict_images

    rows = predict_images(args.run_dir, args.images, checkpoint=args.checkpoint, tta=args.tta)
    fh = open(args.out, "w", newline="") if args.out else sys.stdout  # noqa: SIM115
    try:
        writer = csv.DictWriter(fh, fieldnames=["path", "class", "probability"])
        writer.writeheader()
        writer.writerows(rows)
    finally:
        if args.out:
            fh.close()
    return 0
