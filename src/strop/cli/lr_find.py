"""``strop lr-find CONFIG [--set ...] [--out lr_find.png]``: the LR range test on a training config."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML training config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--start-lr", type=float, default=1e-7)
    p.add_argument("--end-lr", type=float, default=10.0)
    p.add_argument("--num-iter", type=int, default=100)
    p.add_argument("--mode", choices=["exp", "linear"], default="exp")
    p.add_argument("--out", default=None, help="plot file (default OUTPUT/lr_find.png)")


def run(args: argparse.Namespace) -> int:
    from strop.train import load_config
    from strop.train.inference import lr_find_config

    config = load_config(args.config, args.overrides)
    result, plot = lr_find_config(
        config,
        start_lr=args.start_lr,
        end_lr=args.end_lr,
        num_iter=args.num_iter,
        mode=args.mode,
        out=args.out,
    )
    for rule, lr in result.suggestions.items():
        print(f"suggested lr ({rule}): {lr:.3g}")
    print(f"plot: {plot}")
    return 0
