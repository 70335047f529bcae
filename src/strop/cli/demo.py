"""``strop demo [--out DIR] [--task classification|segmentation] [--quick]``: the main job.

Exit status: 0 done; 130 / 143 when SIGINT / SIGTERM stopped it (what is resumable is saved, and
running the same command again continues).
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", default="strop-demo", help="folder for data, runs and plots (default strop-demo)"
    )
    p.add_argument(
        "--task", default="classification", choices=["classification", "segmentation", "detection"]
    )
    p.add_argument(
        "--seeds", type=int, default=None, help="seeds per cell (default 3; classification)"
    )
    p.add_argument(
        "--sizes",
        default=None,
        help="labelled images per class on the target task, comma-separated (default 5,10,30; classification)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a miniature run in seconds (plumbing check, not a result)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs stay)")


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from strop.demo import DemoInterrupted, DemoPlan, run_demo

    if args.task == "detection":
        from strop.demo_detection import run_detection_demo

        run_detection_demo(args.out, progress=not args.no_progress)
        return 0
    plan = DemoPlan.quick() if args.quick else DemoPlan()
    if args.seeds is not None:
        if args.seeds < 1:
            raise ValueError(f"strop demo: --seeds must be >= 1; got {args.seeds}")
        plan = dataclasses.replace(plan, seeds=args.seeds)
    if args.sizes is not None:
        try:
            sizes = tuple(sorted({int(x) for x in args.sizes.split(",") if x.strip()}))
        except ValueError:
            raise ValueError(
                f"strop demo: --sizes must be comma-separated integers such as 5,10,30; "
                f"got {args.sizes!r}"
            ) from None
        if not sizes or sizes[0] < 1:
            raise ValueError(f"strop demo: --sizes must be integers >= 1; got {args.sizes!r}")
        plan = dataclasses.replace(plan, sizes=sizes)
    try:
        run_demo(args.out, task=args.task, plan=plan, progress=not args.no_progress)
    except DemoInterrupted as exc:
        again = f"strop demo --out {args.out}" + (
            " --task segmentation" if args.task == "segmentation" else ""
        )
        again += (" --quick" if args.quick else "") + (
            f" --seeds {args.seeds}" if args.seeds else ""
        )
        again += f" --sizes {args.sizes}" if args.sizes else ""
        print(
            f"strop demo: {exc}. Finished work is kept in {args.out}; run `{again}` again to continue.",
            file=sys.stderr,
            flush=True,
        )
        return exc.exit_code
    return 0
