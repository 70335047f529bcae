"""NMS time next to torchvision's, and detection training images/s: strop's task vs a hand loop.

Run ``python benchmarks/detection.py [--quick]``. Everything runs in one process, candidates
interleaved round by round (so background load hits them alike); medians after a warm-up.

- NMS on 10k random boxes (IoU threshold 0.5): ``strop.losses.nms`` ("union": dispatches to
  torchvision's kernel), strop's pure PyTorch/NumPy greedy path for "union" (what "min" runs), and
  ``nms(denominator="min")``; ratio to ``torchvision.ops.nms`` (goal for "union": <= 1.2x).
- Training: ``fasterrcnn_mobilenet_v3_large_320_fpn`` on 96-pixel bundled shapes, batch 4,
  the tutorial's hand loop (``loss = sum(model(images, targets).values())``, backward, step)
  against ``strop.train.detection.train_one_epoch`` over the same batches, fp32 and bf16 autocast.

``main(argv)`` returns the markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).parent))
from common import load_average, machine

from strop.losses import nms
from strop.losses.nms import greedy_nms


def _interleaved(
    cands: dict[str, Callable[[], object]], rounds: int, warmup: int = 1
) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in cands}
    for r in range(rounds + warmup):
        for name, fn in cands.items():
            tic = time.perf_counter()
            fn()
            if r >= warmup:
                times[name].append(time.perf_counter() - tic)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_nms(n: int = 10_000, rounds: int = 5) -> list[tuple[str, float, float]]:
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(n, 2, generator=g) * 1000
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 100], 1)
    scores = torch.rand(n, generator=g)
    cands = {
        "torchvision.ops.nms": lambda: torchvision.ops.nms(boxes, scores, 0.5),
        "strop nms (union)": lambda: nms(boxes, scores, 0.5),
        "strop greedy_nms (union, Python path)": lambda: greedy_nms(boxes, scores, 0.5),
        "strop nms (min)": lambda: nms(boxes, scores, 0.5, denominator="min"),
    }
    assert torch.equal(
        cands["strop greedy_nms (union, Python path)"](), cands["torchvision.ops.nms"]()
    )
    med = _interleaved(cands, rounds)
    base = med["torchvision.ops.nms"]
    return [(k, v * 1e3, v / base) for k, v in med.items()]


def bench_training(steps: int = 4, rounds: int = 3) -> list[tuple[str, float, float]]:
    from strop.data.detection import DetectionDataset, detection_collate, detection_folder
    from strop.data.shapes_detection import write_shapes_detection
    from strop.finetune.detection import build_detector
    from strop.precision import MixedPrecision, resolve
    from strop.train.detection import DetectionTask, train_one_epoch

    root = write_shapes_detection(
        Path(tempfile.mkdtemp()) / "shapes", n_train=4 * steps, n_val=2, size=96
    )
    train, _, classes = detection_folder(root)
    ds = DetectionDataset(train, classes)
    batches = [detection_collate([ds[i] for i in range(b * 4, b * 4 + 4)]) for b in range(steps)]
    torch.manual_seed(0)
    model = build_detector(
        "fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=len(classes), min_size=96, max_size=96
    )
    task = DetectionTask(model, classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def hand(precision: str) -> Callable[[], None]:
        amp = MixedPrecision(resolve(precision, "cpu"))

        def run() -> None:  # the tutorial's train_one_epoch, minus logging
            model.train()
            for images, targets in batches:
                targets = [
                    {"boxes": t["boxes"].as_subclass(torch.Tensor), "labels": t["labels"] + 1}
                    for t in targets
                ]
                with amp.autocast():
                    loss = sum(model(images, targets).values())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

        return run

    def strop(precision: str) -> Callable[[], None]:
        amp = MixedPrecision(resolve(precision, "cpu"))
        return lambda: train_one_epoch(model, batches, optimizer, task, amp=amp)

    cands = {
        f"{who} {p}": make(p)
        for p in ("fp32", "bf16")
        for who, make in (("hand loop", hand), ("strop", strop))
    }
    med = _interleaved(cands, rounds)
    images = 4 * steps
    return [
        (k, images / v, (images / v) / (images / med[f"hand loop {k.split()[-1]}"]))
        for k, v in med.items()
    ]


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer rounds, 2k boxes, 2 training steps"
    )
    parser.add_argument("--no-training", action="store_true", help="NMS only")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    info = machine()
    n = 2_000 if args.quick else 10_000
    lines = [
        f"Machine: {info}; load average before: {load_average()}",
        "",
        f"| NMS, {n:,} boxes (IoU 0.5) | median ms | × torchvision.ops.nms |",
        "|---|---|---|",
    ]
    for name, ms, ratio in bench_nms(n, 3 if args.quick else 7):
        lines.append(f"| {name} | {ms:.1f} | {ratio:.2f} |")
    if not args.no_training:
        lines += [
            "",
            "| training, fasterrcnn_mobilenet_v3_large_320_fpn, 96 px, batch 4 | images/s | × hand loop, same precision |",
            "|---|---|---|",
        ]
        for name, ips, ratio in bench_training(2 if args.quick else 4, 2 if args.quick else 3):
            lines.append(f"| {name} | {ips:.2f} | {ratio:.2f} |")
    lines.append(f"\nLoad average after: {load_average()}")
    table = "\n".join(lines)
    return table


if __name__ == "__main__":
    print(main())
