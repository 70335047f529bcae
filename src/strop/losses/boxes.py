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

    grad_mode = torch.is_grad_enabled()
    if grad_mode and t.requires_grad:
        loss = _box_loss_plain(p, t, kind)
    elif grad_mode and p.requires_grad:
        loss = _BoxLoss.apply(p, t, kind)
    else:
        loss = _box_loss_fused(p, t, kind, with_grad=False)[0]
    return reduce(loss, reduction)


def _box_loss_plain(p: Tensor, t: Tensor, kind: str) -> Tensor:
    """Element-wise box loss as the textbook formula; autograd differentiates it.

    Used when the target requires grad, for double backward, and by the tests as the reference
    of :func:`_box_loss_fused`.
    """
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
    return loss


def _box_loss_fused(p: Tensor, t: Tensor, kind: str, *, with_grad: bool) -> tuple[Tensor, Tensor | None]:
    """Element-wise box loss and (``with_grad``) its gradient in ``p`` as ``(4, n)``, in closed form.

    The same numbers as :func:`_box_loss_plain`, computed on coordinate columns with the chain rule
    written out: autograd's backward of the slices, ``minimum``/``maximum`` (several masks each) and
    divisions costs several times the forward for these small element-wise ops. Conventions follow
    torch's derivatives exactly: a tie of ``minimum``/``maximum`` sends half the gradient to each
    side; ``clamp_min`` passes the gradient only where its input is ``> min``; the ``den`` of
    ``_safe_div`` gets no gradient where it was clamped (``den == 0``).
    """
    shape = p.shape[:-1]
    px1, py1, px2, py2 = p.reshape(-1, 4).unbind(1)
    tx1, ty1, tx2, ty2 = t.reshape(-1, 4).unbind(1)
    tiny = torch.finfo(p.dtype).tiny
    wp, hp, wt, ht = px2 - px1, py2 - py1, tx2 - tx1, ty2 - ty1
    iw_raw = torch.minimum(px2, tx2) - torch.maximum(px1, tx1)
    ih_raw = torch.minimum(py2, ty2) - torch.maximum(py1, ty1)
    iw, ih = iw_raw.clamp_min(0), ih_raw.clamp_min(0)
    inter = iw * ih
    union = torch.addcmul(wt * ht, wp, hp).sub_(inter)
    union_c = union.clamp_min(tiny)
    iou = inter / union_c
    loss = torch.rsub(iou, 1)
    if kind != "iou":
        cw = torch.maximum(px2, tx2) - torch.minimum(px1, tx1)
        ch = torch.maximum(py2, ty2) - torch.minimum(py1, ty1)
        if kind == "giou":
            area_c = cw * ch
            area_cc = area_c.clamp_min(tiny)
            extra = (area_c - union) / area_cc
            loss.add_(extra)
        else:
            diag2 = torch.addcmul(cw * cw, ch, ch)
            diag2_c = diag2.clamp_min(tiny)
            dx = (px1 + px2 - tx1 - tx2) / 2
            dy = (py1 + py2 - ty1 - ty2) / 2
            rho2 = torch.addcmul(dx * dx, dy, dy)
            dist = rho2 / diag2_c
            loss.add_(dist)
            if kind == "ciou":
                at_p, hp_safe = _aspect_cols(wp, hp)
                delta = _aspect_cols(wt, ht)[0].sub_(at_p)
                v = delta.square().mul_(4 / math.pi**2)
                alpha = v / (torch.rsub(iou, 1).add_(v)).clamp_min_(tiny)
                loss.addcmul_(alpha, v)
    loss = loss.view(shape)
    if not with_grad:
        return loss, None

    # dL/dunion and dL/dinter (the latter also through union = |A| + |B| - inter)
    g_union = (iou / union_c).mul_(union > tiny)
    g_inter = torch.reciprocal(union_c).neg_()
    if kind == "giou":
        g_union.sub_(torch.reciprocal(area_cc))
    g_inter.sub_(g_union)
    g_iw = (g_inter * ih).mul_(iw_raw > 0)
    g_ih = (g_inter * iw).mul_(ih_raw > 0)
    # the gradient goes straight into one (4, n) buffer (contiguous rows); backward's multiplication
    # by the incoming gradient writes it back in (n, 4) order
    grad = torch.empty(4, px1.shape[0], dtype=p.dtype, device=p.device)
    gx1, gy1, gx2, gy2 = grad.unbind(0)
    # d(min(p2, t2) - max(p1, t1)): p2 counts where p2 < t2, p1 where p1 > t1
    torch.mul(g_iw, _first_weight(px2, tx2), out=gx2)
    torch.mul(g_iw, _first_weight(tx1, px1), out=gx1).neg_()
    torch.mul(g_ih, _first_weight(py2, ty2), out=gy2)
    torch.mul(g_ih, _first_weight(ty1, py1), out=gy1).neg_()
    g_wp, g_hp = g_union * hp, g_union * wp  # |A| = wp·hp
    if kind != "iou":
        if kind == "giou":
            g_c = torch.reciprocal(area_cc).sub_((extra / area_cc).mul_(area_c > tiny))
            g_cw, g_ch = g_c * ch, g_c * cw
        else:
            g_diag2 = (dist / diag2_c).mul_(diag2 > tiny).mul_(-2)
            g_cw, g_ch = g_diag2 * cw, g_diag2 * ch
            g_rho2 = torch.reciprocal(diag2_c)
            # dρ²/dp1 = dρ²/dp2 = 2·d/2 = d; added to |A|'s term, which enters p2 with + and p1 with -
            g_dx, g_dy = g_rho2 * dx, g_rho2 * dy
            gx1.add_(g_dx)
            gx2.add_(g_dx)
            gy1.add_(g_dy)
            gy2.add_(g_dy)
            if kind == "ciou":
                # v = k·(atan2(wt, ht) - atan2(wp, hp))², alpha constant: dv/dat_p = -2k·delta
                g_at = alpha.mul_(delta).mul_(-8 / math.pi**2)
                norm = torch.addcmul(wp * wp, hp_safe, hp_safe)
                g_at.div_(norm)
                g_wp.addcmul_(g_at, hp_safe)
                # a point box takes atan2(0, 1): its height gets no gradient
                g_hp.sub_(g_at.mul_(wp).mul_(hp_safe == hp))
        # d(max(p2, t2) - min(p1, t1))
        gx2.addcmul_(g_cw, _first_weight(tx2, px2))
        gx1.sub_(g_cw.mul_(_first_weight(px1, tx1)))
        gy2.addcmul_(g_ch, _first_weight(ty2, py2))
        gy1.sub_(g_ch.mul_(_first_weight(py1, ty1)))
    gx2.add_(g_wp)
    gx1.sub_(g_wp)
    gy2.add_(g_hp)
    gy1.sub_(g_hp)
    return loss, grad


def _first_weight(a: Tensor, b: Tensor) -> Tensor:
    """Share of ``a`` in the gradient of ``minimum(a, b)`` (of ``maximum(b, a)``): 1 where ``a < b``,
    0 where ``a > b`` and 1/2 on a tie, as torch's own derivatives (``heaviside`` is far slower)."""
    return torch.sub(b, a).sign_().add_(1).mul_(0.5)


def _aspect_cols(w: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """``atan2(w, h)`` with a point box's ``h`` replaced by 1 (see :func:`_aspect`), and that ``h``."""
    h_safe = torch.where((w == 0) & (h == 0), 1.0, h)
    return torch.atan2(w, h_safe), h_safe


class _BoxLoss(torch.autograd.Function):
    """Element-wise box loss with the gradient computed in the forward (:func:`_box_loss_fused`).

    Double backward (``create_graph=True``) recomputes through :func:`_box_loss_plain`.
    """

    @staticmethod
    def forward(ctx, p: Tensor, t: Tensor, kind: str) -> Tensor:  # type: ignore[override]
        loss, grad = _box_loss_fused(p, t, kind, with_grad=True)
        ctx.save_for_backward(p, t, grad)
        ctx.kind = kind
        return loss

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, None, None]:  # type: ignore[override]
        p, t, grad = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the gradient must itself be differentiable
            with torch.enable_grad():
                plain = _box_loss_plain(p, t, ctx.kind)
                (gp,) = torch.autograd.grad(plain, p, grad_out, create_graph=True)
            return gp, None, None
        out = torch.empty(p.shape, dtype=grad.dtype, device=grad.device)
        torch.mul(grad.t(), grad_out.reshape(-1, 1), out=out.view(-1, 4))
        return out, None, None


def _aspect(wh: Tensor) -> Tensor:
    """``atan(w / h)`` as ``atan2(w, h)``: π/2 for h = 0, and 0 with a finite gradient for a point box."""
    w, h = wh[..., 0], wh[..., 1]
    point = (w == 0) & (h == 0)
    return torch.atan2(w, torch.where(point, torch.ones_like(h), h))
