"""``strop predict RUN_DIR IMAGE... [--out FILE]``: class and probability per image (CSV); for a
detection run, boxes, labels and scores per image (``--format json|csv``, ``--score``,
``--draw DIR`` writes each image with its boxes)."""

from __future__ import annotations

import argparse
import csv
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run_dir", help="a run folder written by strop train (classification or detection)"
    )
    p.add_argument("images", nargs="+", help="image files (or folders of images)")
    p.add_argument("--out", default=None, help="file to write (default: standard output)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument(
        "--tta", action="store_true", help="average the probabilities of the image and its mirror"
    )
    p.add_argument(
        "--format",
        default=None,
        choices=["json", "csv"],
        help="detection: json (default) or csv (one line per box)",
    )
    p.add_argument(
        "--score", type=float, default=0.5, help="detection: keep boxes scoring at least this"
    )
    p.add_argument(
        "--draw",
        default=None,
        metavar="DIR",
        help="detection: write the images with their boxes here",
    )


def _task(run_dir: str, checkpoint: str) -> str:
    from pathlib import Path

    from strop.train.checkpoint import load_checkpoint

    return load_checkpoint(Path(run_dir) / "checkpoints" / f"{checkpoint}.pt")["config"].get(
        "task", "classification"
    )


def run(args: argparse.Namespace) -> int:
    if _task(args.run_dir, args.checkpoint) == "detection":
        return _detect(args)
    if args.draw or args.format == "json":
        raise ValueError(
            "predict: --draw and --format json are for detection runs; this is a classification run"
        )
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


def _detect(args: argparse.Namespace) -> int:
    from strop.train.detection_predict import draw_detections, predict_detections, write_detections

    rows = predict_detections(
        args.run_dir, args.images, checkpoint=args.checkpoint, score=args.score
    )
    fh = open(args.out, "w", newline="") if args.out else sys.stdout  # noqa: SIM115
    try:
        write_detections(rows, fh, args.format or "json")
    finally:
        if args.out:
            fh.close()
    if args.draw:
        paths = draw_detections(rows, args.draw)
        print(f"strop predict: drew {len(paths)} image(s) into {args.draw}", file=sys.stderr)
    return 0
