"""Forward+backward time of strop's losses next to the reference implementations.

Run ``python benchmarks/losses.py [--quick]``. All candidates run in one process on the same data,
interleaved round by round (so background load hits them alike); the table reports the median
after warm-up, in ms, and the ratio to the fastest reference of the same definition (< 1: strop is
faster). Cases: binary segmentation logits 16×1×256×256, multiclass 8×5×256×256, 100k box pairs;
fp32 and bf16 autocast. ``main(argv)`` returns the markdown table (``benchmarks/run.py`` calls it).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

import strop.losses as L


def _references() -> dict[str, object]:
    refs: dict[str, object] = {}
    try:
        import torchvision.ops as tvo

        refs["tv"] = tvo
    except ImportError:  # pragma: no cover
        pass
    try:
        import segmentation_models_pytorch as smp

        refs["smp"] = smp.losses
    except ImportError:  # pragma: no cover
        pass
    try:
        import monai.losses as monai

        refs["monai"] = monai
    except ImportError:  # pragma: no cover
        pass
    return refs


def _channel_target(loss: Callable) -> Callable:
    """MONAI wants (N, 1, H, W) class ids."""
    return lambda x, t: loss(x, t[:, None])


def _mean_of(fn: Callable) -> Callable:
    return lambda p, t: fn(p, t, reduction="mean")


def _cases(size: int, batch_bin: int, batch_mc: int, n_boxes: int) -> list[tuple[str, tuple, list]]:
    """(name, (input, target), [(impl, fn), ...]) with strop first."""
    g = torch.Generator().manual_seed(0)
    xb = torch.randn(batch_bin, 1, size, size, generator=g)
    tb = (torch.rand(batch_bin, 1, size, size, generator=g) > 0.7).float()
    xm = torch.randn(batch_mc, 5, size, size, generator=g)
    tm = torch.randint(0, 5, (batch_mc, size, size), generator=g)
    lo = torch.rand(n_boxes, 2, generator=g) * 100
    b1 = torch.cat([lo, lo + 1 + torch.rand(n_boxes, 2, generator=g) * 50], 1)
    lo = torch.rand(n_boxes, 2, generator=g) * 100
    b2 = torch.cat([lo, lo + 1 + torch.rand(n_boxes, 2, generator=g) * 50], 1)
    r = _references()
    tv, smp, monai = r.get("tv"), r.get("smp"), r.get("monai")
    cases: list[tuple[str, tuple, list]] = []

    def add(name: str, data: tuple, impls: list) -> None:
        cases.append((name, data, [(k, f) for k, f in impls if f is not None]))

    add(
        "bce (floor)",
        (xb, tb),
        [("strop", L.bce), ("torch", lambda x, t: F.binary_cross_entropy_with_logits(x, t))],
    )
    add(
        "dice binary",
        (xb, tb),
        [
            ("strop", L.dice_loss),
            ("monai", monai and monai.DiceLoss(sigmoid=True, smooth_nr=1, smooth_dr=1, batch=True)),
            ("smp", smp and smp.DiceLoss("binary", smooth=0.5)),
        ],
    )
    add(
        "dice multiclass",
        (xm, tm),
        [
            ("strop", lambda x, t: L.dice_loss(x, t, mode="multiclass")),
            (
                "monai",
                monai
                and _channel_target(
                    monai.DiceLoss(
                        softmax=True, to_onehot_y=True, smooth_nr=1, smooth_dr=1, batch=True
                    )
                ),
            ),
            ("smp", smp and smp.DiceLoss("multiclass", smooth=0.5)),
        ],
    )
    add(
        "jaccard binary",
        (xb, tb),
        [
            ("strop", L.jaccard_loss),
            (
                "monai",
                monai
                and monai.DiceLoss(
                    sigmoid=True, jaccard=True, smooth_nr=2, smooth_dr=2, batch=True
                ),
            ),
            ("smp", smp and smp.JaccardLoss("binary", smooth=1)),
        ],
    )
    add(
        "tversky binary",
        (xb, tb),
        [
            ("strop", lambda x, t: L.tversky_loss(x, t, alpha=0.3, beta=0.7)),
            (
                "monai",
                monai
                and monai.TverskyLoss(
                    sigmoid=True, alpha=0.3, beta=0.7, smooth_nr=1, smooth_dr=1, batch=True
                ),
            ),
            ("smp", smp and smp.TverskyLoss("binary", smooth=1, alpha=0.3, beta=0.7)),
        ],
    )
    add(
        "focal binary",
        (xb, tb),
        [
            ("strop", L.focal_loss),
            ("torchvision", tv and (lambda x, t: tv.sigmoid_focal_loss(x, t, reduction="mean"))),
            ("smp", smp and smp.FocalLoss("binary", alpha=0.25)),
            ("monai", monai and monai.FocalLoss(alpha=0.25, gamma=2.0)),
        ],
    )
    add(
        "focal multiclass",
        (xm, tm),
        [
            ("strop", lambda x, t: L.focal_loss(x, t, mode="multiclass", alpha=None)),
            (
                "monai",
                monai
                and _channel_target(monai.FocalLoss(use_softmax=True, to_onehot_y=True, gamma=2.0)),
            ),
        ],
    )
    add(
        "lovasz binary",
        (xb, tb),
        [("strop", L.lovasz_loss), ("smp", smp and smp.LovaszLoss("binary"))],
    )
    add(
        "lovasz binary per-image",
        (xb, tb),
        [
            ("strop", lambda x, t: L.lovasz_loss(x, t, per_image=True)),
            ("smp", smp and smp.LovaszLoss("binary", per_image=True)),
        ],
    )
    add(
        "lovasz multiclass",
        (xm, tm),
        [
            ("strop", lambda x, t: L.lovasz_loss(x, t, mode="multiclass")),
            ("smp", smp and smp.LovaszLoss("multiclass")),
        ],
    )
    add(
        "dice+bce binary",
        (xb, tb),
        [
            ("strop", L.dice_bce_loss),
            (
                "monai",
                monai and monai.DiceCELoss(sigmoid=True, smooth_nr=1, smooth_dr=1, batch=True),
            ),
        ],
    )
    for kind, ref in (
        ("iou", None),
        ("giou", "generalized_box_iou_loss"),
        ("diou", "distance_box_iou_loss"),
        ("ciou", "complete_box_iou_loss"),
    ):
        impls = [("strop", lambda p, t, k=kind: L.box_iou_loss(p, t, kind=k))]
        if tv is not None and ref is not None:
            impls.append(("torchvision", _mean_of(getattr(tv, ref))))
        add(f"box {kind} loss", (b1, b2), impls)
    add(
        "box_iou pairwise 1k×1k",
        (b1[:1000], b2[:1000]),
        [("strop", L.box_iou), ("torchvision", tv and tv.box_iou)],
    )
    return cases


_CLOCK: Callable[[], float] = time.perf_counter


def _time(fn: Callable, x: torch.Tensor, t: torch.Tensor, dtype: torch.dtype | None) -> float:
    leaf = x.detach().clone().requires_grad_(x.is_floating_point())
    start = _CLOCK()
    if dtype is None:
        out = fn(leaf, t)
    else:
        with torch.autocast("cpu", dtype=dtype):
            out = fn(leaf.to(dtype), t)  # a bf16 model output, as under autocast
    if out.requires_grad:
        (out if out.dim() == 0 else out.sum()).backward()
    return (_CLOCK() - start) * 1e3


def run(quick: bool = False, repeats: int | None = None) -> str:
    size, nb, nm, nbox, reps, warm = (
        (128, 4, 2, 20_000, 5, 1) if quick else (256, 16, 8, 100_000, 15, 3)
    )
    reps = repeats or reps
    rows = ["| loss | precision | impl | ms (median) | × fastest ref |", "|---|---|---|---:|---:|"]
    for name, (x, t), impls in _cases(size, nb, nm, nbox):
        for label, dtype in (("fp32", None), ("bf16 autocast", torch.bfloat16)):
            times: dict[str, list[float]] = {k: [] for k, _ in impls}
            failed: dict[str, str] = {}
            for i in range(warm + reps):
                for key, fn in impls:  # interleaved: background load hits every impl alike
                    if key in failed:
                        continue
                    try:
                        ms = _time(fn, x, t, dtype)
                    except Exception as err:  # a reference that cannot run this case is reported
                        failed[key] = f"fails: {type(err).__name__}"
                        continue
                    if i >= warm:
                        times[key].append(ms)
            med = {k: statistics.median(v) for k, v in times.items() if k not in failed}
            refs = [v for k, v in med.items() if k != "strop"]
            best = min(refs) if refs else None
            for key, value in med.items():
                ratio = f"{value / best:.2f}" if best else "—"
                rows.append(f"| {name} | {label} | {key} | {value:.2f} | {ratio} |")
            rows.extend(f"| {name} | {label} | {key} | {why} | — |" for key, why in failed.items())
    head = (
        f"Losses, forward+backward, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}; {'quick' if quick else 'full'} sizes.\n\n"
    )
    return head + "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed repeats per case (after warm-up)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (1 gives stable ratios on a shared, oversubscribed machine)",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: this thread's CPU time, which leaves out time lost to other jobs on a "
        "shared machine (use with --threads 1)",
    )
    args = parser.parse_args(argv)
    global _CLOCK
    _CLOCK = time.thread_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    return run(quick=args.quick, repeats=args.repeats)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
