"""Element-wise losses: focal, cross-entropy, BCE with logits, MSE.

``cross_entropy_loss`` and ``bce_loss`` wrap ``F.cross_entropy`` /
``F.binary_cross_entropy_with_logits`` with strop's validation (shapes, class-id range,
``ignore_index``) and an empty batch giving 0, so that configs can name them next to the other
losses. ``cross_entropy`` and ``bce`` are the same functions under their earlier names.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from strop._checks import check_positive, fail
from strop.losses._prepare import (
    _check_values,
    check_alpha,
    check_ignore_index,
    check_reduction,
    check_tensor,
    compute_dtype,
    prepare,
    reduce,
)

__all__ = ["bce", "bce_loss", "cross_entropy", "cross_entropy_loss", "focal_loss", "mse_loss"]


def focal_loss(
    input: Tensor,
    target: Tensor,
    *,
    mode: str = "binary",
    alpha: float | Sequence[float] | None = 0.25,
    gamma: float = 2.0,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Focal loss of Lin et al. (2017), per element: ``-α_t · (1 - p_t)**γ · log(p_t)``.

    * ``"binary"`` / ``"multilabel"``: ``p = sigmoid(input)``, ``p_t = p·t + (1-p)·(1-t)`` (soft
      targets allowed), ``α_t = α·t + (1-α)·(1-t)``; ``-log p_t`` is computed from the logits as
      ``softplus(x) - t·x``, so logits of ±1e4 stay finite.
    * ``"multiclass"``: ``p_t`` is the softmax probability of the target class; a float ``alpha``
      weighs class 0 (background) by ``1-α`` and every other class by ``α`` (MONAI's convention,
      which makes two-class softmax focal equal binary focal); a sequence gives one weight per
      class; ``None`` no weighting. For plain classification pass ``alpha=None``.

    Args:
        input (Tensor[N, C, *]): logits. target: as in :mod:`strop.losses._prepare`; for
            classification ``(N, C)`` logits and ``(N,)`` class ids with ``mode="multiclass"``.
        alpha: see above (default 0.25, as torchvision). gamma: focusing exponent ``>= 0``
            (default 2); ``gamma=0, alpha=None`` is BCE / cross-entropy.
        ignore_index: target value whose elements are left out (zero in ``"none"``).
        reduction: ``"mean"`` over non-ignored elements (pixels for multiclass), ``"sum"`` or
            ``"none"`` (input's shape; the target's shape for multiclass).

    Same number as:
        * torchvision ``sigmoid_focal_loss(input, target.float(), alpha, gamma, reduction)``
          (binary/multilabel; ``alpha=None`` there is ``alpha=-1``).
        * smp ``FocalLoss("binary", alpha=alpha, gamma=gamma)`` (binary, also with ignore_index).
        * MONAI ``FocalLoss(use_softmax=True, to_onehot_y=True, alpha=alpha, gamma=gamma,
          reduction="none")`` summed over channels (multiclass; MONAI's ``"mean"`` also divides
          by C), and ``FocalLoss(alpha=alpha, gamma=gamma)`` for binary/multilabel.

    The focal factor is applied per element: applied to the *mean* BCE instead, it would weigh
    every pixel by the same factor (a rescaled BCE, no focusing on hard examples).
    """
    func = "focal_loss"
    check_positive(func, "gamma", gamma, allow_zero=True)
    check_reduction(func, reduction)
    check_alpha(func, alpha, mode)
    prepared = prepare(func, input, target, mode=mode, ignore_index=ignore_index)
    x = prepared.input
    if mode == "multiclass":
        assert prepared.labels is not None
        labels = prepared.labels
        log_pt = torch.log_softmax(x, dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
        loss = -log_pt
        if gamma != 0:
            # -expm1(log p) is 1 - p without cancellation when p is close to 1
            loss = loss * _power(-torch.expm1(log_pt), gamma)
        if alpha is not None:
            c = prepared.num_classes
            if isinstance(alpha, (int, float)):
                weights = torch.full((c,), float(alpha), dtype=x.dtype, device=x.device)
                weights[0] = 1 - alpha
            else:
                weights = torch.as_tensor(alpha, dtype=x.dtype, device=x.device).flatten()
                if weights.numel() != c:
                    fail(
                        func, f"alpha must have one weight per class (C={c}); got {weights.numel()}"
                    )
            loss = loss * weights[labels]
        valid = None if prepared.valid is None else prepared.valid.squeeze(1)
        return (
            reduce(loss, reduction, valid).reshape(prepared.shape)
            if reduction == "none"
            else reduce(loss, reduction, valid)
        )

    assert prepared.target is not None
    t = prepared.target
    grad_mode = torch.is_grad_enabled()
    if (gamma != 0 and gamma < 1) or (grad_mode and t.requires_grad):
        loss = _binary_focal_plain(x, t, alpha, gamma)
    elif grad_mode and x.requires_grad:
        loss = _BinaryFocal.apply(x, t, alpha, gamma)
    else:
        loss = _binary_focal_fused(x, t, alpha, gamma, with_grad=False)[0]
    out = reduce(loss, reduction, prepared.valid)
    return out.reshape(prepared.shape) if reduction == "none" else out


def _binary_focal_plain(x: Tensor, t: Tensor, alpha: float | None, gamma: float) -> Tensor:
    """Element-wise binary focal loss written as the textbook formula; autograd differentiates it.

    Used for ``0 < gamma < 1`` (whose gradient needs the clamp of :func:`_power`), when the target
    requires grad, for double backward, and by the tests as the reference of the fused path.
    """
    # -log p_t = softplus(x) - t·x = [x·(1 - t) if x >= 0 else -x·t] + softplus(-|x|): finite for
    # any logit; softplus(-|x|) = log1p(exp(-|x|)) keeps its relative precision where p_t is close
    # to 1 (log of a probability near 1 would lose it), and the branch is exactly 0 for a hard
    # target the logit agrees with, so neither the loss nor its autograd gradient cancels there
    ce = torch.where(x >= 0, x * (1 - t), -x * t) + F.softplus(-x.abs())
    loss = ce
    if gamma != 0:
        # 1 - p_t = lerp(σ(x), σ(-x), t): exact at t = 0 and t = 1, no 1 - p cancellation
        one_minus_pt = torch.lerp(torch.sigmoid(x), torch.sigmoid(-x), t)
        loss = loss * _power(one_minus_pt, gamma)
    if alpha is not None:
        loss = loss * ((1 - alpha) + t * (2 * alpha - 1))
    return loss


def _binary_focal_fused(
    x: Tensor, t: Tensor, alpha: float | None, gamma: float, *, with_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """Element-wise binary focal loss and (``with_grad``) its derivative in ``x``, for ``gamma == 0``
    or ``gamma >= 1``, in few passes over memory and without autograd.

    With ``p = σ(x)``, ``q = 1 - p_t = p + t(1 - 2p)``, ``ce = -log p_t = softplus(x) - t·x`` and
    ``w = α_t`` (1 without alpha), the loss is ``w·q^γ·ce`` and its derivative
    ``w·q^(γ-1)·(γ·ce·dq/dx + q·(p - t))`` with ``dq/dx = (1 - 2t)·p·(1 - p)``.
    """
    # every fresh full-size tensor costs a page-faulting allocation on CPU, more than the arithmetic
    # on it: four buffers (p, 1 - p, ce, and one for log σ(|x|) then q) are updated in place
    p = torch.sigmoid(x)
    # 1 - p as σ(-x), not 1 - σ(x): where p is close to 1 the subtraction would keep only a few
    # significant digits of 1 - p (5.87e-4 at x = 7.44 is then off by 2e-4 relative)
    pm = torch.sigmoid(-x)
    # softplus(x) = relu(x) - log σ(|x|) and -log σ(|x|) = -log1p(-σ(-|x|)), σ(-|x|) = min(p, 1 - p):
    # log1p keeps the relative precision that log of a number close to 1 loses
    ce = _neg_log1p_neg(torch.minimum(p, pm))
    # relu(x) - t·x first: it is exactly 0 for a hard target the logit agrees with, and adding the
    # small term to relu(x) before subtracting t·x would absorb it (0 instead of 3e-7 at x = 15)
    buf = torch.clamp_min(x, 0).addcmul_(x, t, value=-1)
    ce.add_(buf)
    if gamma == 0:
        loss = _times_alpha_t(ce, t, alpha)
        # p - t as lerp(p, -(1 - p), t): torch.lerp is exact at t = 0 and t = 1
        return loss, _times_alpha_t(torch.lerp(p, pm.neg_(), t), t, alpha) if with_grad else None
    q = torch.lerp(p, pm, t, out=buf)
    qg = None if gamma == 1 else (q if gamma == 2 else q.pow(gamma - 1))  # q^(γ-1)
    if not with_grad:
        loss = ce.mul_(q) if qg is None else ce.mul_(q).mul_(qg)
        return _times_alpha_t(loss, t, alpha), None
    p_minus_t = torch.lerp(p, pm.neg(), t)
    dq = pm.mul_(p).addcmul_(t, pm, value=-2)  # (1 - 2t)·p·(1 - p)
    grad = p_minus_t.mul_(q).addcmul_(dq, ce, value=gamma)
    loss = ce.mul_(q)
    if qg is not None:
        grad.mul_(qg)
        loss.mul_(qg)
    return _times_alpha_t(loss, t, alpha), _times_alpha_t(grad, t, alpha)


def _neg_log1p_neg(s: Tensor) -> Tensor:
    """``-log1p(-s)`` for ``s`` in ``[0, 1/2]``, within a few ulps, using ``log`` (Kahan's trick).

    torch's CPU ``log1p`` is not vectorised and costs ~30 times ``log``; with ``w = 1 - s``
    (rounded) ``w - 1`` is exact, and ``log(w) · s / (w - 1)`` corrects the rounding of ``w``
    (Goldberg, "What every computer scientist should know about floating-point", thm. 4). Where
    ``w`` rounds to 1 (``s`` below 2^-25) the answer is ``s`` itself to float precision.
    """
    w = torch.rsub(s, 1)
    d = w - 1
    tiny = d == 0
    out = torch.log_(w).mul_(s).div_(d.masked_fill_(tiny, -1.0))
    return torch.where(tiny, s, out)


def _times_alpha_t(value: Tensor, t: Tensor, alpha: float | None) -> Tensor:
    """``value · α_t`` in place, ``α_t = α·t + (1 - α)·(1 - t) = (1 - α)·(1 + c·t)``, ``c = (2α - 1) / (1 - α)``."""
    if alpha is None:
        return value
    if alpha == 1:
        return value.mul_(t)
    return value.addcmul_(value, t, value=(2 * alpha - 1) / (1 - alpha)).mul_(1 - alpha)


class _BinaryFocal(torch.autograd.Function):
    """Binary focal loss whose gradient is computed with the loss, in closed form (one saved tensor).

    Double backward (``create_graph=True``) recomputes through :func:`_binary_focal_plain`.
    """

    @staticmethod
    def forward(ctx, x: Tensor, t: Tensor, alpha: float | None, gamma: float) -> Tensor:  # type: ignore[override]
        loss, grad = _binary_focal_fused(x, t, alpha, gamma, with_grad=True)
        ctx.save_for_backward(x, t, grad)
        ctx.alpha, ctx.gamma = alpha, gamma
        return loss

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, None, None, None]:  # type: ignore[override]
        x, t, grad = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the gradient must itself be differentiable
            with torch.enable_grad():
                plain = _binary_focal_plain(x, t, ctx.alpha, ctx.gamma)
                (gx,) = torch.autograd.grad(plain, x, grad_out, create_graph=True)
            return gx, None, None, None
        return grad_out * grad, None, None, None


def _power(base: Tensor, gamma: float) -> Tensor:
    if gamma == 1:
        return base
    if gamma == 2:
        return base * base
    if gamma < 1:
        # d(b**γ)/db is infinite at b = 0 for γ < 1; b = 0 only for a saturated, correct
        # prediction whose loss is 0 anyway, so cut the gradient there instead of making NaN
        base = base.clamp_min(torch.finfo(base.dtype).tiny)
    return base.pow(gamma)


def bce_loss(
    input: Tensor,
    target: Tensor,
    *,
    pos_weight: Tensor | float | None = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Binary cross-entropy with logits: ``F.binary_cross_entropy_with_logits`` plus validation.

    Args:
        input (Tensor[N, *]): logits. target: same shape (or ``(N, *spatial)`` for an
            ``(N, 1, *spatial)`` input), values in ``[0, 1]``.
        pos_weight: weight of positive examples, broadcast over the input's trailing dims as in
            torch. ignore_index: target value left out of the loss.
        reduction: ``"mean"`` over non-ignored elements (an empty batch gives 0), ``"sum"``,
            ``"none"`` (input's shape).

    Same number as ``F.binary_cross_entropy_with_logits(input, target, pos_weight=pos_weight)``.
    """
    func = "bce_loss"
    check_reduction(func, reduction)
    prepared = prepare(func, input, target, mode="binary", ignore_index=ignore_index)
    assert prepared.target is not None
    x = prepared.input.reshape(prepared.shape)
    t = prepared.target.reshape(prepared.shape)
    if pos_weight is not None:
        if not isinstance(pos_weight, Tensor):
            check_positive(func, "pos_weight", pos_weight, allow_zero=True)
        pos_weight = torch.as_tensor(pos_weight, dtype=x.dtype, device=x.device)
    if prepared.valid is None and reduction != "none":
        total = F.binary_cross_entropy_with_logits(x, t, pos_weight=pos_weight, reduction="sum")
        return total if reduction == "sum" else total / max(x.numel(), 1)
    loss = F.binary_cross_entropy_with_logits(x, t, pos_weight=pos_weight, reduction="none")
    valid = None if prepared.valid is None else prepared.valid.reshape(prepared.shape)
    return reduce(loss, reduction, valid)


def cross_entropy_loss(
    input: Tensor,
    target: Tensor,
    *,
    weight: Tensor | Sequence[float] | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """Cross-entropy of logits: ``F.cross_entropy`` plus validation.

    Args:
        input (Tensor[N, C, *]): logits, ``C >= 2``.
        target: ``(N, *)`` integer class ids in ``[0, C)`` (or ``ignore_index``), or class
            probabilities with the input's shape.
        weight: per-class weights ``(C,)``. ignore_index: class id left out (default None:
            nothing ignored). label_smoothing: in ``[0, 1]``.
        reduction: ``"mean"`` (torch's weighted mean over non-ignored targets; a batch with no
            counted target gives 0 instead of NaN), ``"sum"`` or ``"none"``.

    Same number as ``F.cross_entropy(input, target, weight, ignore_index=ignore_index or -100,
    label_smoothing=label_smoothing, reduction=reduction)`` whenever torch's is finite. As in
    torch, the logits of an ignored target are never read (a NaN there does not reach the loss).
    """
    func = "cross_entropy_loss"
    check_reduction(func, reduction)
    check_tensor(func, "input", input, floating=True)
    check_tensor(func, "target", target)
    check_ignore_index(func, ignore_index)
    if (
        isinstance(label_smoothing, bool)
        or not isinstance(label_smoothing, (int, float))
        or not 0 <= label_smoothing <= 1
    ):
        fail(func, f"label_smoothing must be a number in [0, 1]; got {label_smoothing!r}")
    if input.dim() < 2:
        fail(
            func,
            f"input must have shape (N, C, ...); got {tuple(input.shape)}",
            hint="add a batch dimension: input[None]",
        )
    n, c = input.shape[:2]
    if c < 2:
        fail(
            func,
            f"input must have C >= 2 classes; got {tuple(input.shape)}",
            hint="use bce_loss for one logit",
        )
    x = input.to(compute_dtype(input.dtype))
    if weight is not None:
        weight = torch.as_tensor(weight, dtype=x.dtype, device=x.device)
        if weight.shape != (c,):
            fail(func, f"weight must have shape (C,)=({c},); got {tuple(weight.shape)}")
    ii = -100 if ignore_index is None else ignore_index
    if target.is_floating_point():
        if target.shape != input.shape:
            fail(
                func,
                f"target of class probabilities must have the shape of input {tuple(input.shape)}; "
                f"got {tuple(target.shape)}",
                hint="class ids must be an integer tensor of shape (N, ...)",
            )
        t = target.to(x.dtype)
        _check_values(func, [("target probabilities", t, 0.0, 1.0)])
        denom = None
    else:
        expected = (n, *input.shape[2:])
        if tuple(target.shape) != expected:
            hint = (
                "use bce_loss for multi-label one-hot targets"
                if target.shape == input.shape
                else None
            )
            fail(
                func,
                f"target must have shape (N, ...)={expected} for input (N, C, ...)={tuple(input.shape)}; "
                f"got {tuple(target.shape)}",
                hint=hint,
            )
        if target.dtype == torch.bool:
            fail(
                func,
                "target must hold integer class ids; got torch.bool",
                hint="call target.long()",
                exc=TypeError,
            )
        t = target.long()
        keep = t != ii if ignore_index is not None else None
        ids = t if keep is None else t.masked_fill(~keep, 0)
        _check_values(
            func,
            [
                (
                    "target class ids"
                    + (
                        f" (other than ignore_index={ignore_index})"
                        if ignore_index is not None
                        else ""
                    ),
                    ids,
                    0,
                    c - 1,
                )
            ],
        )
        if reduction == "mean":
            # torch's mean divides by the summed weight of counted targets; recomputed here so
            # an empty (or fully ignored) batch gives 0 instead of 0/0
            w = weight[ids] if weight is not None else torch.ones_like(ids, dtype=x.dtype)
            denom = (w if keep is None else w * keep).sum()
    if reduction == "none":
        return F.cross_entropy(
            x, t, weight=weight, ignore_index=ii, label_smoothing=label_smoothing, reduction="none"
        )
    total = F.cross_entropy(
        x, t, weight=weight, ignore_index=ii, label_smoothing=label_smoothing, reduction="sum"
    )
    if reduction == "sum":
        return total
    if denom is None:  # probabilities: torch divides by the number of samples (pixels)
        return total / max(x.numel() // c, 1)
    return total / torch.where(denom > 0, denom, torch.ones_like(denom))


# the earlier names, kept for code that imports them
bce = bce_loss
cross_entropy = cross_entropy_loss


def mse_loss(input: object, target: object, reduction: str = "mean") -> Tensor:
    """Mean squared error ``mean((input - target)**2)``; ``F.mse_loss`` with validation.

    Accepts tensors and array-likes (lists, numpy arrays); an array-like goes to the other
    argument's device. Integer values compute in float32.
    Shapes must match exactly (torch would broadcast with only a warning).

    ``reduction="mean"`` (default) is the true mean (not ``((input - target)**2).sum().mean()``,
    which is the *sum*, N times larger). An empty input gives 0.

    Same number as ``F.mse_loss(input, target, reduction=reduction)`` and ``nn.MSELoss``.
    """
    func = "mse_loss"
    check_reduction(func, reduction)
    x, t = _as_tensor(func, "input", input, target), _as_tensor(func, "target", target, input)
    if x.shape != t.shape:
        fail(
            func,
            f"target must have the shape of input {tuple(x.shape)}; got {tuple(t.shape)}",
            hint="reshape explicitly; strop does not broadcast a loss",
        )
    if x.device != t.device:
        fail(func, f"target is on {t.device} but input is on {x.device}")
    dtype = compute_dtype(
        torch.promote_types(x.dtype, t.dtype)
        if x.is_floating_point() or t.is_floating_point()
        else torch.float32
    )
    x, t = x.to(dtype), t.to(dtype)
    if reduction == "none":
        return F.mse_loss(x, t, reduction="none")
    total = F.mse_loss(x, t, reduction="sum")
    return total if reduction == "sum" else total / max(x.numel(), 1)


def _as_tensor(func: str, arg: str, value: object, other: object) -> Tensor:
    if isinstance(value, Tensor):
        out = value
    else:
        device = other.device if isinstance(other, Tensor) else None
        try:
            out = torch.as_tensor(value, device=device)
        except (TypeError, ValueError, RuntimeError) as err:
            fail(
                func,
                f"{arg} must be a tensor or array-like of numbers; got {type(value).__name__} ({err})",
                exc=TypeError,
            )
    if out.is_complex() or out.dtype == torch.bool:
        fail(func, f"{arg} must hold real numbers; got {out.dtype}", exc=TypeError)
    return out
