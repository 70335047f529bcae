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
        fail(
            func, f"{arg} must have shape {expected} of (x1, y1, x2, y2); got {tuple(boxes.shape)}"
        )
    return boxes.to(compute_dtype(boxes.dtype) if boxes.is_floating_point() else torch.float32)


def _check_box_values(func: str, named: list[tuple[str, Tensor]]) -> None:
    """x1 <= x2, y1 <= y2 and finite coordinates; one cheap pass and one sync for all tensors."""
    named = [(arg, b) for arg, b in named if b.numel()]
    if not value_checks_enabled() or not named:
        return
    # (w, h) = (x2 - x1, y2 - y1) lies in [0, inf) exactly when the box is ordered and finite:
    # a NaN or inf coordinate makes w or h NaN or inf
    extremes = torch.stack(
        [torch.stack(torch.aminmax(b[..., 2:] - b[..., :2])) for _, b in named]
    ).tolist()
    for (arg, boxes), (lo, hi) in zip(named, extremes, strict=True):
        if lo >= 0 and hi < math.inf:
            continue
        wh = boxes[..., 2:] - boxes[..., :2]
        mask = ~((wh >= 0) & (wh < math.inf)).all(-1)
        flat = boxes.reshape(-1, 4)
        idx = int(mask.reshape(-1).nonzero()[0])
        fail(
            func,
            f"{arg} must have finite coordinates with x1 <= x2 and y1 <= y2; got "
            f"{int(mask.sum())} box(es) that do not, e.g. index {idx}: {flat[idx].tolist()}",
            hint="boxes are (x1, y1, x2, y2); convert (x, y, w, h) with torchvision.ops.box_convert",
        )


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    # den == 0 implies num == 0 here (an intersection inside an empty union, ...): define 0/0 = 0
    return num / den.clamp_min(torch.finfo(den.dtype).tiny)


def _area(boxes: Tensor) -> Tensor:
    wh = boxes[..., 2:] - boxes[..., :2]
    return wh[..., 0] * wh[..., 1]


def _intersection(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Broadcast intersection area of ``boxes1`` and ``boxes2`` (..., 4)."""
    wh = torch.minimum(boxes1[..., 2:], boxes2[..., 2:]) - torch.maximum(
        boxes1[..., :2], boxes2[..., :2]
    )
    wh = wh.clamp_min(0)
    return wh[..., 0] * wh[..., 1]


def box_iou(boxes1: Tensor, boxes2: Tensor, *, denominator: str = "union") -> Tensor:
    """Pairwise IoU of two sets of boxes.

    Args:
        boxes1 (Tensor[N, 4]), boxes2 (Tensor[M, 4]): ``(x1, y1, x2, y2)`` boxes.
        denominator: ``"union"`` (default): ``|A ∩ B| / |A ∪ B|``; ``"min"``:
            ``|A ∩ B| / min(|A|, |B|)`` (intersection over the smaller box, used by some NMS
            variants).

    Returns:
        Tensor[N, M]: float32 (float64 for float64 boxes). A zero denominator gives 0.

    Same number as ``torchvision.ops.box_iou`` for ``"union"`` on boxes with positive area: the
    unsmoothed ratio (no ``smooth`` added to numerator and denominator).
    """
    func = "box_iou"
    check_choice(func, "denominator", denominator, ("union", "min"))
    b1 = _check_boxes(func, "boxes1", boxes1, pairwise=True)
    b2 = _check_boxes(func, "boxes2", boxes2, pairwise=True)
    if b1.device != b2.device:
        fail(func, f"boxes2 is on {b2.device} but boxes1 is on {b1.device}")
    b1, b2 = (
        b1.to(torch.promote_types(b1.dtype, b2.dtype)),
        b2.to(torch.promote_types(b1.dtype, b2.dtype)),
    )
    _check_box_values(func, [("boxes1", b1), ("boxes2", b2)])
    inter = _intersection(b1[:, None, :], b2[None, :, :])
    area1, area2 = _area(b1)[:, None], _area(b2)[None, :]
    if denominator == "min":
        return _safe_div(inter, torch.minimum(area1, area2))
    return _safe_div(inter, area1 + area2 - inter)


def box_iou_loss(
    pred: Tensor, target: Tensor, *, kind: str = "iou", reduction: str = "mean"
) -> Tensor:
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
        fail(
            func,
            f"target must have the shape of pred {tuple(pred.shape)}; got {tuple(target.shape)}",
            hint="box_iou_loss is element-wise; use box_iou for all pairs",
        )
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


def _box_loss_fused(
    p: Tensor, t: Tensor, kind: str, *, with_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """Element-wise box loss and (``with_grad``) its gradient in ``p`` as ``(4, n)``, in closed form.

    The same numbers as :func:`_box_loss_plain`, computed on coordinate columns with the chain rule
    written out: autograd's backward of the slices, ``minimum``/``maximum`` (several masks each) and
    divisions costs several times the forward for these small element-wise ops. Conventions follow
    torch's derivatives exactly: a tie of ``minimum``/``maximum`` sends half the gradient to each
    side; ``clamp_min`` passes the gradient only where its input is ``> min``; the ``den`` of
    ``_safe_div`` gets no gradient where it was clamped (``den == 0``).
    """
    f = _BoxTerms(p.reshape(-1, 4).unbind(1), t.reshape(-1, 4).unbind(1), torch.finfo(p.dtype).tiny)
    loss = f.iou_loss()
    if kind == "giou":
        loss.add_(f.giou_penalty())
    elif kind in ("diou", "ciou"):
        loss.add_(f.distance_penalty())
        if kind == "ciou":
            loss.addcmul_(*f.aspect_penalty())
    loss = loss.view(p.shape[:-1])
    if not with_grad:
        return loss, None
    return loss, f.gradient(kind)


class _BoxTerms:
    """The columns and intermediate terms of one box-loss evaluation, kept for its gradient."""

    def __init__(self, pred: tuple[Tensor, ...], target: tuple[Tensor, ...], tiny: float) -> None:
        self.p, self.t, self.tiny = pred, target, tiny
        px1, py1, px2, py2 = pred
        tx1, ty1, tx2, ty2 = target
        self.wp, self.hp, self.wt, self.ht = px2 - px1, py2 - py1, tx2 - tx1, ty2 - ty1
        self.iw_raw = torch.minimum(px2, tx2) - torch.maximum(px1, tx1)
        self.ih_raw = torch.minimum(py2, ty2) - torch.maximum(py1, ty1)
        self.iw, self.ih = self.iw_raw.clamp_min(0), self.ih_raw.clamp_min(0)
        self.inter = self.iw * self.ih
        self.union = torch.addcmul(self.wt * self.ht, self.wp, self.hp).sub_(self.inter)
        self.union_c = self.union.clamp_min(tiny)
        self.iou = self.inter / self.union_c

    # -- forward terms -----------------------------------------------------------------------
    def iou_loss(self) -> Tensor:
        return torch.rsub(self.iou, 1)

    def _enclosing(self) -> None:
        (px1, py1, px2, py2), (tx1, ty1, tx2, ty2) = self.p, self.t
        self.cw = torch.maximum(px2, tx2) - torch.minimum(px1, tx1)
        self.ch = torch.maximum(py2, ty2) - torch.minimum(py1, ty1)

    def giou_penalty(self) -> Tensor:
        """``(|C| - |A ∪ B|) / |C|``, C the smallest enclosing box."""
        self._enclosing()
        self.area_c = self.cw * self.ch
        self.area_cc = self.area_c.clamp_min(self.tiny)
        self.extra = (self.area_c - self.union) / self.area_cc
        return self.extra

    def distance_penalty(self) -> Tensor:
        """``ρ² / c²``: squared centre distance over the enclosing box's squared diagonal."""
        self._enclosing()
        (px1, py1, px2, py2), (tx1, ty1, tx2, ty2) = self.p, self.t
        self.diag2 = torch.addcmul(self.cw * self.cw, self.ch, self.ch)
        self.diag2_c = self.diag2.clamp_min(self.tiny)
        self.dx = (px1 + px2 - tx1 - tx2) / 2
        self.dy = (py1 + py2 - ty1 - ty2) / 2
        self.dist = torch.addcmul(self.dx * self.dx, self.dy, self.dy) / self.diag2_c
        return self.dist

    def aspect_penalty(self) -> tuple[Tensor, Tensor]:
        """``(alpha, v)`` of CIoU's ``alpha·v``, alpha held constant as in the paper."""
        at_p, self.hp_safe = _aspect_cols(self.wp, self.hp)
        self.delta = _aspect_cols(self.wt, self.ht)[0].sub_(at_p)
        v = self.delta.square().mul_(4 / math.pi**2)
        self.alpha = v / (torch.rsub(self.iou, 1).add_(v)).clamp_min_(self.tiny)
        return self.alpha, v

    # -- gradient ----------------------------------------------------------------------------
    def gradient(self, kind: str) -> Tensor:
        """``dL/dp`` as ``(4, n)`` (rows x1, y1, x2, y2), after the forward terms of ``kind``."""
        (px1, py1, px2, py2), (tx1, ty1, tx2, ty2) = self.p, self.t
        # dL/dunion and dL/dinter (the latter also through union = |A| + |B| - inter)
        g_union = (self.iou / self.union_c).mul_(self.union > self.tiny)
        g_inter = torch.reciprocal(self.union_c).neg_()
        if kind == "giou":
            g_union.sub_(torch.reciprocal(self.area_cc))
        g_inter.sub_(g_union)
        g_iw = (g_inter * self.ih).mul_(self.iw_raw > 0)
        g_ih = (g_inter * self.iw).mul_(self.ih_raw > 0)
        # the gradient goes straight into one (4, n) buffer (contiguous rows); backward's
        # multiplication by the incoming gradient writes it back in (n, 4) order
        grad = torch.empty(4, px1.shape[0], dtype=px1.dtype, device=px1.device)
        gx1, gy1, gx2, gy2 = grad.unbind(0)
        # d(min(p2, t2) - max(p1, t1)): p2 counts where p2 < t2, p1 where p1 > t1
        torch.mul(g_iw, _first_weight(px2, tx2), out=gx2)
        torch.mul(g_iw, _first_weight(tx1, px1), out=gx1).neg_()
        torch.mul(g_ih, _first_weight(py2, ty2), out=gy2)
        torch.mul(g_ih, _first_weight(ty1, py1), out=gy1).neg_()
        g_wp, g_hp = g_union * self.hp, g_union * self.wp  # |A| = wp·hp
        if kind != "iou":
            if kind == "giou":
                g_c = torch.reciprocal(self.area_cc).sub_(
                    (self.extra / self.area_cc).mul_(self.area_c > self.tiny)
                )
                g_cw, g_ch = g_c * self.ch, g_c * self.cw
            else:
                g_cw, g_ch = self._distance_grad(grad)
                if kind == "ciou":
                    self._aspect_grad(g_wp, g_hp)
            # d(max(p2, t2) - min(p1, t1))
            gx2.addcmul_(g_cw, _first_weight(tx2, px2))
            gx1.sub_(g_cw.mul_(_first_weight(px1, tx1)))
            gy2.addcmul_(g_ch, _first_weight(ty2, py2))
            gy1.sub_(g_ch.mul_(_first_weight(py1, ty1)))
        gx2.add_(g_wp)
        gx1.sub_(g_wp)
        gy2.add_(g_hp)
        gy1.sub_(g_hp)
        return grad

    def _distance_grad(self, grad: Tensor) -> tuple[Tensor, Tensor]:
        """Add ``d(ρ²/c²)`` through ρ² to ``grad``; return its parts through ``cw`` and ``ch``."""
        g_diag2 = (self.dist / self.diag2_c).mul_(self.diag2 > self.tiny).mul_(-2)
        g_rho2 = torch.reciprocal(self.diag2_c)
        # dρ²/dp1 = dρ²/dp2 = 2·d/2 = d
        g_dx, g_dy = g_rho2 * self.dx, g_rho2 * self.dy
        gx1, gy1, gx2, gy2 = grad.unbind(0)
        gx1.add_(g_dx)
        gx2.add_(g_dx)
        gy1.add_(g_dy)
        gy2.add_(g_dy)
        return g_diag2 * self.cw, g_diag2 * self.ch

    def _aspect_grad(self, g_wp: Tensor, g_hp: Tensor) -> None:
        """Add CIoU's ``d(alpha·v)`` to the width/height gradients (in place)."""
        # v = k·(atan2(wt, ht) - atan2(wp, hp))², alpha constant: dv/dat_p = -2k·delta
        g_at = self.alpha.mul_(self.delta).mul_(-8 / math.pi**2)
        g_at.div_(torch.addcmul(self.wp * self.wp, self.hp_safe, self.hp_safe))
        g_wp.addcmul_(g_at, self.hp_safe)
        # a point box takes atan2(0, 1): its height gets no gradient
        g_hp.sub_(g_at.mul_(self.wp).mul_(self.hp_safe == self.hp))


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
