"""Metrics of a run: the names it logs, which one is "better", confusion matrix and Dice/IoU.

One rule decides whether a value improves on the best so far (best.pt, early stopping, the
plateau schedule's direction all follow :func:`is_better` and the monitor's mode).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from strop._checks import did_you_mean

__all__ = [
    "PER_EPOCH",
    "check_monitor",
    "confusion_matrix",
    "is_better",
    "overlap_metrics",
]

# logged every epoch by the trainer itself, whatever the task
PER_EPOCH = ["epoch_seconds", "images_per_s", "skipped_steps", "nonfinite_batches"]


def is_better(value: float | None, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """True when ``value`` improves on ``best`` by more than ``min_delta`` in direction ``mode``
    (``"max"`` or ``"min"``). A missing or non-finite value never improves; any finite value
    improves on no best (``None``)."""
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


def check_monitor(monitor: str, logged: Sequence[str]) -> None:
    """The monitored metric must be one the run logs (else best.pt would never be written)."""
    allowed = [m for m in logged if m not in ("images_per_s", "epoch_seconds")]
    if monitor not in allowed:
        raise ValueError(
            f"config: monitor {monitor!r} is not a metric this run logs"
            f"{did_you_mean(monitor, allowed)} available: {', '.join(allowed)}"
        )


def confusion_matrix(logits: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """``num_classes × num_classes`` counts (rows: target, columns: prediction), float64 on the
    CPU; pixels whose target is outside ``[0, num_classes)`` (``ignore_index``) are dropped.

    ``logits`` (Tensor[N, C, ...]): one channel means binary (class 1 where the logit is > 0),
    otherwise the prediction is the argmax over C.
    """
    n = num_classes
    pred = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
    target = target.long().reshape(pred.shape)
    valid = (target >= 0) & (target < n)
    idx = target[valid] * n + pred[valid]
    return torch.bincount(idx, minlength=n * n).view(n, n).double().cpu()


def overlap_metrics(confusion: Tensor) -> dict[str, float]:
    """``val_dice``, ``val_iou`` (means over the foreground classes present in prediction or
    target; class 0 is background) and ``val_pixel_accuracy`` from a confusion matrix."""
    tp = confusion.diag()
    fp = confusion.sum(0) - tp
    fn = confusion.sum(1) - tp
    present = (tp + fp + fn) > 0
    present[0] = False
    if not present.any():
        dice = iou = 1.0  # no foreground anywhere, none predicted: a perfect (empty) match
    else:
        dice = float((2 * tp / (2 * tp + fp + fn).clamp_min(1))[present].mean())
        iou = float((tp / (tp + fp + fn).clamp_min(1))[present].mean())
    pixel = float(tp.sum() / confusion.sum().clamp_min(1))
    return {"val_dice": dice, "val_iou": iou, "val_pixel_accuracy": pixel}
