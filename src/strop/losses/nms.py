"""Greedy non-maximum suppression, with intersection over the smaller box as an option.

``nms(boxes, scores, iou_threshold, denominator="union")`` is torchvision's NMS: boxes are visited
in decreasing score order, and a box is kept unless an already kept box overlaps it by *more than*
``iou_threshold``. ``denominator="min"`` measures the overlap as intersection over the *smaller*
box (MTCNN-style cascades use it to drop a box nested
inside a larger one, which IoU keeps when the sizes differ).

Speed: ``"union"`` dispatches to ``torchvision.ops.nms`` (its C++/CUDA kernel; a Python greedy
loop cannot match it — benchmarks/detection.py measures both). ``"min"`` runs
:func:`greedy_nms`: the overlap of every pair computed in row blocks, packed to one bit per pair,
then one pass over the sorted boxes (the same bitmask scheme as torchvision's CUDA kernel).
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision
from torch import Tensor

from strop._checks import check_choice, fail

__all__ = ["batched_nms", "greedy_nms", "nms"]

_BLOCK = 1024  # rows of the overlap matrix computed at once (1024 × N floats)


def _check(
    func: str, boxes: object, scores: object, iou_threshold: object, idxs: object = None
) -> None:
    if not isinstance(boxes, Tensor):
        fail(func, f"boxes must be a Tensor[N, 4]; got {type(boxes).__name__}", exc=TypeError)
    if not isinstance(scores, Tensor):
        fail(func, f"scores must be a Tensor[N]; got {type(scores).__name__}", exc=TypeError)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        fail(func, f"boxes must have shape (N, 4) of (x1, y1, x2, y2); got {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        fail(func, f"boxes must be floating point; got {boxes.dtype}", exc=TypeError)
    if scores.shape != (boxes.shape[0],):
        fail(
            func,
            f"scores must have shape ({boxes.shape[0]},) to match boxes {tuple(boxes.shape)}; "
            f"got {tuple(scores.shape)}",
        )
    if idxs is not None and (
        not isinstance(idxs, Tensor) or idxs.shape != scores.shape or idxs.is_floating_point()
    ):
        got = (
            f"{idxs.dtype} {tuple(idxs.shape)}" if isinstance(idxs, Tensor) else type(idxs).__name__
        )
        fail(func, f"idxs must be an integer Tensor of shape ({boxes.shape[0]},); got {got}")
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, (int, float)):
        fail(
            func,
            f"iou_threshold must be a number; got {type(iou_threshold).__name__}",
            exc=TypeError,
        )


def greedy_nms(
    boxes: Tensor, scores: Tensor, iou_threshold: float, *, denominator: str = "union"
) -> Tensor:
    """Greedy NMS in PyTorch + NumPy for either overlap; what :func:`nms` runs for ``"min"``.

    Same order of visit as torchvision (a stable descending ``scores.sort``, as its kernel sorts,
    so tied scores resolve identically) and the same rule (suppress when overlap ``>`` threshold),
    so for ``"union"`` it returns exactly ``torchvision.ops.nms``'s indices. Memory: about N²/16 bytes
    (6 MB for 10k boxes: only pairs j > i are kept). A zero denominator (two point boxes) counts as overlap 0.
    """
    check_choice("greedy_nms", "denominator", denominator, ("union", "min"))
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = scores.sort(stable=True, dim=0, descending=True)[1]
    b = boxes[order]
    x1, y1, x2, y2 = b.unbind(1)
    area = (x2 - x1) * (y2 - y1)
    # only pairs (i, j > i) matter: block rows [start, start + B) against columns [start, n);
    # start is a multiple of 8, so each packed row lines up with the global bitmask at start // 8
    rows = []
    for start in range(0, n, _BLOCK):
        sl, tail = slice(start, start + _BLOCK), slice(start, n)
        w = (
            torch.minimum(x2[sl, None], x2[tail]) - torch.maximum(x1[sl, None], x1[tail])
        ).clamp_min_(0)
        h = (
            torch.minimum(y2[sl, None], y2[tail]) - torch.maximum(y1[sl, None], y1[tail])
        ).clamp_min_(0)
        inter = w.mul_(h)
        if denominator == "union":
            # the kernel's expression, term for term: inter / (area_i + area_j - inter)
            den = (area[sl, None] + area[tail]).sub_(inter)
        else:
            den = torch.minimum(area[sl, None], area[tail])
        # 0/0 (point boxes) is NaN, and NaN > t is False: never suppressed, like the kernel
        over = inter.div_(den) > iou_threshold
        rows.append(np.packbits(over.cpu().numpy(), axis=1))
    removed = np.zeros((n + 7) // 8, dtype=np.uint8)
    keep = []
    for i in range(n):
        if removed[i >> 3] & (0x80 >> (i & 7)):
            continue
        keep.append(i)
        block = rows[i // _BLOCK]
        lo = (i // _BLOCK) * _BLOCK // 8
        removed[lo:] |= block[i % _BLOCK]
    return order[torch.as_tensor(keep, dtype=torch.int64, device=boxes.device)]


def nms(
    boxes: Tensor, scores: Tensor, iou_threshold: float, *, denominator: str = "union"
) -> Tensor:
    """Greedy non-maximum suppression.

    Args:
        boxes (Tensor[N, 4]): ``(x1, y1, x2, y2)`` boxes, floating point.
        scores (Tensor[N]): higher is kept first.
        iou_threshold: a box is dropped when a kept box overlaps it by more than this.
        denominator: ``"union"`` (default, IoU: ``torchvision.ops.nms``) or ``"min"``
            (intersection over the smaller box).

    Returns:
        Tensor[K] int64: indices of the kept boxes, in decreasing score order.
    """
    _check("nms", boxes, scores, iou_threshold)
    check_choice("nms", "denominator", denominator, ("union", "min"))
    if denominator == "union":
        return torchvision.ops.nms(boxes, scores, float(iou_threshold))
    return greedy_nms(boxes, scores, float(iou_threshold), denominator="min")


def batched_nms(
    boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, *, denominator: str = "union"
) -> Tensor:
    """NMS within each category ``idxs`` (boxes of different categories never suppress each other).

    ``"union"`` is ``torchvision.ops.batched_nms``. ``"min"`` uses torchvision's coordinate trick:
    each category is shifted by ``idx × (coordinate span + 1)`` so categories cannot overlap, and
    one :func:`greedy_nms` runs over all of them. Returns indices in decreasing score order.
    """
    _check("batched_nms", boxes, scores, iou_threshold, idxs)
    check_choice("batched_nms", "denominator", denominator, ("union", "min"))
    if denominator == "union":
        return torchvision.ops.batched_nms(boxes, scores, idxs, float(iou_threshold))
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    # the span, not the max: boxes with negative coordinates stay apart too
    offsets = idxs.to(boxes) * (boxes.max() - boxes.min() + 1)
    return greedy_nms(boxes + offsets[:, None], scores, float(iou_threshold), denominator="min")
