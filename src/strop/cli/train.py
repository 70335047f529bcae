"""``strop train CONFIG.yaml [--set key=value ...] [--resume | --exist-ok] [--nproc N [--max-restarts N]]``."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML training config (see docs/config.md)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optimizer.lr=0.1 (repeatable)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from checkpoints/last.pt of the output folder",
    )
    p.add_argument(
        "--exist-ok",
        action="store_true",
        help="train into the output folder even when it holds an earlier run (its files are replaced); "
        "without it a new run goes to the next free output-2, output-3, ...",
    )
    p.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="launch N data-parallel processes on this machine with torchrun",
    )
    p.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        metavar="N",
        help="with --nproc: torchrun restarts the workers up to N times when one dies; "
        "each restart resumes from checkpoints/last.pt by itself",
    )
    p.add_argument(
        "--strict", action="store_true", help="unreadable image files are an error, not a warning"
    )


def run(args: argparse.Namespace) -> int:
    if args.nproc is not None and args.nproc < 1:
        raise ValueError(
            f"strop train: --nproc must be a number of processes >= 1; got {args.nproc}"
        )
    if args.max_restarts < 0:
        raise ValueError(
            f"strop train: --max-restarts must be a number of restarts >= 0; got {args.max_restarts}"
        )
    if args.max_restarts and not (args.nproc and args.nproc > 1) and "WORLD_SIZE" not in os.environ:
        raise ValueError(
            f"strop train: --max-restarts needs --nproc N > 1 (torchrun restarts the workers it "
            f"starts); got --max-restarts {args.max_restarts} with --nproc {args.nproc}"
        )
    if args.resume and args.exist_ok:
        raise ValueError(
            "strop train: --resume and --exist-ok exclude each other (--resume continues the run, "
            "--exist-ok starts a new one in its folder); got both"
        )
    if args.nproc and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _launch_torchrun(args)
    from strop.train import fit, load_config

    overrides = list(args.overrides) + (["data.strict=true"] if args.strict else [])
    config = load_config(args.config, overrides)
    result = fit(config, resume=args.resume, exist_ok=args.exist_ok)
    if result.interrupted:
        # fit saved last.pt and said how to continue; the shell's status for the signal
        from strop._interrupt import exit_code

        return exit_code(result.interrupted)
    if os.environ.get("RANK", "0") == "0" and result.best_metric is None:
        print(f"run folder: {result.run_dir}")
    if result.best_metric is not None and os.environ.get("RANK", "0") == "0":
        print(
            f"best {result.monitor}: {result.best_metric:.4f} (epoch {result.best_epoch}); run folder: {result.run_dir}"
        )
    return 0


def _launch_torchrun(args: argparse.Namespace) -> int:
    """Re-run this command under ``torchrun --standalone --nproc_per_node=N`` (one machine)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={args.nproc}",
        f"--max-restarts={args.max_restarts}",
        "-m",
        "strop",
        "train",
        args.config,
    ]
    for item in args.overrides:
        cmd += ["--set", item]
    if args.resume:
        cmd.append("--resume")
    if args.exist_ok:
        cmd.append("--exist-ok")
    if args.strict:
        cmd.append("--strict")
    proc = subprocess.Popen(cmd)
    # a scheduler's SIGTERM reaches this process only: pass it on, so torchrun stops the workers
    # (they save last.pt) instead of being orphaned. Ctrl-C already reaches the whole group.
    old = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, old)
