"""``strop export RUN_DIR [--format safetensors|pt] [--out FILE]``: the trained weights alone."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run folder written by strop train")
    p.add_argument(
        "--format",
        default="safetensors",
        choices=["safetensors", "pt"],
        help="safetensors (recommended: loading it cannot run code) or a torch state dict",
    )
    p.add_argument("--out", default=None, help="output file (default RUN_DIR/model.<format>)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])


def run(args: argparse.Namespace) -> int:
    from strop.train.inference import export_weights

    path = export_weights(args.run_dir, fmt=args.format, out=args.out, checkpoint=args.checkpoint)
    print(path)
    return 0
