"""Box overlap: pairwise ``box_iou`` and the element-wise IoU / GIoU / DIoU / CIoU losses.

Boxes are ``(x1, y1, x2, y2)`` with ``x1 <= x2`` and ``y1 <= y2`` (torchvision's ``xyxy``).
Degenerate (zero-area) boxes are valid; a ratio whose denominator is 0 (two point boxes: union 0)
is 0, never NaN. Integer boxes compute in float32 (float64 boxes in float64).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from strop._checks import check_choice, fail
from strop.losses._prepare import (
    check_reduction,
    check_tensor,
    compute_dtype,
    reduce,
    value_checks_enabled,
)

__all__ = ["box_iou", "box_iou_loss"]

KINDS = ("iou", "giou", "diou", "ciou")


def _check_boxes(func: str, arg: str, boxes: object, *, pairwise: bool = False) -> Tensor:
    boxes = check_tensor(func, arg, boxes)
    if boxes.is_complex() or boxes.dtype == torch.bool:
        fail(func, f"{arg} must hold real coordinates; got {boxes.dtype}", exc=TypeError)
    if (pairwise and boxes.dim() != 2) or boxes.dim() < 1 or boxes.shape[-1] != 4:
        expected = "(N, 4)" if pairwise else "(..., 4)"
        fail(func, f"{arg} must have shape {expected} of (x1, y1, x2, y2); got {tuple(boxes.shape)}")
    return boxes.to(compute_dtype(boxes.dtype) if boxes.is_floating_point() else torch.float32)


def _check_box_values(func: str, named: list[tuple[str, Tensor]]) -> None:
    """x1 <= x2, y1 <= y2 and finite coordinates; one cheap pass and one sync for all tensors."""
    named = [(arg, b) for arg, b in named if b.numel()]
    if not value_checks_enabled() or not named:
        return
    # (w, h) = (x2 - x1, y2 - y1) lies in [0, inf) exactly when the box is ordered and finite:
    # a NaN or inf coordinate makes w or h NaN or inf
    extremes = torch.stack([torch.stack(torch.aminmax(b[..., 2:] - b[..., :2])) for _, b in named]).tolist()
    for (arg, boxes), (lo, hi) in zip(named, extremes, strict=True):
        if lo >= 0 and hi < math.inf:
            continue
        wh = boxes[..., 2:] - boxes[..., :2]
        mask = ~((wh >= 0) & (wh < math.inf)).all(-1)
        flat = boxes.reshape(-1, 4)
        idx = int(mask.reshape(-1).nonzero()[0])
        fail(func, f"{arg} must have finite coordinates with x1 <= x2 and y1 <= y2; got "
                   f"{int(mask.sum())} box(es) that do not, e.g. index {idx}: {flat[idx].tolist()}",
             hint="boxes are (x1, y1, x2, y2); convert (x, y, w, h) with torchvision.ops.box_convert")


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    # den == 0 implies num == 0 here (an intersection inside an empty union, ...): define 0/0 = 0
    return num / den.clamp_min(torch.finfo(den.dtype).tiny)


def _area(boxes: Tensor) -> Tensor:
    wh = boxes[..., 2:] - boxes[..., :2]
    return wh[..., 0] * wh[..., 1]


def _intersection(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Broadcast intersection area of ``boxes1`` and ``boxes2`` (..., 4)."""
    wh = (torch.minimum(boxes1[..., 2:], boxes2[..., 2:]) - torch.maximum(boxes1[..., :2], boxes2[..., :2]))
    wh = wh.clamp_min(0)
    return wh[..., 0] * wh[..., 1]


def box_iou(boxes1: Tensor, boxes2: Tensor, *, denominator: str = "union") -> Tensor:
    """Pairwise IoU of two sets of boxes.

    Args:
        boxes1 (Tensor[N, 4]), boxes2 (Tensor[M, 4]): ``(x1, y1, x2, y2)`` boxes.
        denominator: ``"union"`` (default): ``|A ∩ B| / |A ∪ B|``; ``"min"``:
            ``|A ∩ B| / min(|A|, |B|)``, the tutorial's ``isMin=True`` (intersection over the smaller
            box, used by some NMS variants).

    Returns:
        Tensor[N, M]: float32 (float64 for float64 boxes). A zero denominator gives 0.

    Same number as ``torchvision.ops.box_iou`` for ``"union"`` on boxes with positive area. The
    tutorial's ``IoULoss`` added ``smooth=1`` to numerator and denominator (and returned the IoU,
    not a loss); strop computes the unsmoothed ratio.
    """
    func = "box_iou"
    check_choice(func, "denominator", denominator, ("union", "min"))
    b1 = _check_boxes(func, "boxes1", boxes1, pairwise=True)
    b2 = _check_boxes(func, "boxes2", boxes2, pairwise=True)
    if b1.device != b2.device:
        fail(func, f"boxes2 is on {b2.device} but boxes1 is on {b1.device}")
    b1, b2 = b1.to(torch.promote_types(b1.dtype, b2.dtype)), b2.to(torch.promote_types(b1.dtype, b2.dtype))
    _check_box_values(func, [("boxes1", b1), ("boxes2", b2)])
    inter = _intersection(b1[:, None, :], b2[None, :, :])
    area1, area2 = _area(b1)[:, None], _area(b2)[None, :]
    if denominator == "min":
        return _safe_div(inter, torch.minimum(area1, area2))
    return _safe_div(inter, area1 + area2 - inter)


def box_iou_loss(pred: Tensor, target: Tensor, *, kind: str = "iou", reduction: str = "mean") -> Tensor:
    """Element-wise box regression loss ``1 - IoU`` and its GIoU / DIoU / CIoU variants.

    * ``"iou"``: ``1 - IoU``.
    * ``"giou"``: ``1 - IoU + |C \\ (A ∪ B)| / |C|``, C the smallest enclosing box
      (Rezatofighi et al., 2019).
    * ``"diou"``: ``1 - IoU + ρ²(centres) / c²``, c the diagonal of C (Zheng et al., 2020).
    * ``"ciou"``: DIoU ``+ α·v`` with ``v = 4/π² · (atan(w_t/h_t) - atan(w_p/h_p))²`` and
      ``α = v / (1 - IoU + v)`` held constant in the gradient, as in the paper and torchvision.

    Args:
        pred, target (Tensor[..., 4]): matching boxes ``(x1, y1, x2, y2)``, same shape.
        kind: ``"iou"`` (default), ``"giou"``, ``"diou"``, ``"ciou"``.
        reduction: ``"mean"`` (empty input gives 0), ``"sum"``, ``"none"`` (shape ``pred.shape[:-1]``).

    Same number as torchvision ``generalized_box_iou_loss`` / ``distance_box_iou_loss`` /
    ``complete_box_iou_loss`` (up to their ``eps=1e-7`` in denominators) for boxes with positive
    area. For point boxes (zero width and height) strop takes ``0/0 = 0`` where torchvision's CIoU
    gives NaN.
    """
    func = "box_iou_loss"
    check_choice(func, "kind", kind, KINDS)
    check_reduction(func, reduction)
    p = _check_boxes(func, "pred", pred)
    t = _check_boxes(func, "target", target)
    if p.shape != t.shape:
        fail(func, f"target must have the shape of pred {tuple(pred.shape)}; got {tuple(target.shape)}",
             hint="box_iou_loss is element-wise; use box_iou for all pairs")
    if p.device != t.device:
        fail(func, f"target is on {t.device} but pred is on {p.device}")
    dtype = torch.promote_types(p.dtype, t.dtype)
    p, t = p.to(dtype), t.to(dtype)
    _check_box_values(func, [("pred", p), ("target", t)])

    wh_p = p[..., 2:] - p[..., :2]
    wh_t = t[..., 2:] - t[..., :2]
    inter = _intersection(p, t)
    union = wh_p[..., 0] * wh_p[..., 1] + wh_t[..., 0] * wh_t[..., 1] - inter
    iou = _safe_div(inter, union)
    loss = 1 - iou
    if kind != "iou":
        wh_c = torch.maximum(p[..., 2:], t[..., 2:]) - torch.minimum(p[..., :2], t[..., :2])
        if kind == "giou":
            area_c = wh_c[..., 0] * wh_c[..., 1]
            loss = loss + _safe_div(area_c - union, area_c)
        else:
            diag2 = (wh_c * wh_c).sum(-1)
            centre = (p[..., :2] + p[..., 2:] - t[..., :2] - t[..., 2:]) / 2
            loss = loss + _safe_div((centre * centre).sum(-1), diag2)
            if kind == "ciou":
                v = (4 / math.pi**2) * (_aspect(wh_t) - _aspect(wh_p)).square()
                with torch.no_grad():
                    alpha = _safe_div(v, 1 - iou + v)
                loss = loss + alpha * v
    return reduce(loss, reduction)


def _aspect(wh: Tensor) -> Tensor:
    """``atan(w / h)`` as ``atan2(w, h)``: π/2 for h = 0, and 0 with a finite gradient for a point box."""
    w, h = wh[..., 0], wh[..., 1]
    point = (w == 0) & (h == 0)
    return torch.atan2(w, torch.where(point, torch.ones_like(h), h))
