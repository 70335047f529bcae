"""Soft overlap statistics (TP, Σp, Σt) of logits with a closed-form backward.

Dice, Jaccard and Tversky depend on the logits only through ``TP = Σ p·t`` and ``Σp`` per class,
so ``dL/dp = a·t + b`` with ``a = dL/dTP`` and ``b = dL/dΣp`` small ``(N, C)`` tensors. Writing
that gradient and the sigmoid/softmax derivative out avoids what autograd would otherwise build on
the CPU: a materialised one-hot target, full-size products and their backward, and softmax's
backward; every fresh full-size tensor also costs a page-faulting allocation. Results equal
:func:`overlap_plain` (tested to rounding), which remains the path for ``from_logits=False``, a
target that requires grad, and double backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["overlap", "overlap_plain"]


def overlap_plain(
    x: Tensor,
    target: Tensor | None,
    labels: Tensor | None,
    valid: Tensor | None,
    mode: str,
    from_logits: bool,
    per_image: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(TP, Σp, Σt)`` per class written as the formula (autograd differentiates it).

    ``x``: ``(N, C, P)``; ``target``: ``(N, C, P)`` float (binary/multilabel) or ``labels``:
    ``(N, P)`` int64 (multiclass); ``valid``: bool mask broadcastable to ``x`` or None.
    """
    if not from_logits:
        probs = x
    elif mode == "multiclass":
        probs = torch.softmax(x, dim=1)
    else:
        probs = torch.sigmoid(x)
    if valid is not None:
        probs = probs * valid
    if target is None:
        assert labels is not None
        target = torch.zeros(x.shape, dtype=probs.dtype, device=x.device)
        target.scatter_(1, labels.unsqueeze(1), 1.0)
        if valid is not None:
            target.mul_(valid)
    dims = (2,) if per_image else (0, 2)
    return (probs * target).sum(dims), probs.sum(dims), target.sum(dims)


def overlap(
    x: Tensor,
    target: Tensor | None,
    labels: Tensor | None,
    valid: Tensor | None,
    mode: str,
    from_logits: bool,
    per_image: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Same as :func:`overlap_plain`, through the closed-form backward where it applies."""
    grad_mode = torch.is_grad_enabled()
    if not from_logits or (grad_mode and target is not None and target.requires_grad):
        return overlap_plain(x, target, labels, valid, mode, from_logits, per_image)
    if grad_mode and x.requires_grad:
        return _Overlap.apply(x, target, labels, valid, mode, per_image)
    with torch.no_grad():
        return _forward(x, target, labels, valid, mode, per_image)[0]


def _forward(
    x: Tensor,
    target: Tensor | None,
    labels: Tensor | None,
    valid: Tensor | None,
    mode: str,
    per_image: bool,
) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor, Tensor | None]:
    """``(TP, Σp, Σt)`` (``(N, C)`` each, or ``(C,)`` summed over the batch), the probabilities and
    (multiclass) the probability of each pixel's label."""
    n, c, p = x.shape
    vf = None if valid is None else valid.to(x.dtype)
    if mode == "multiclass":
        assert labels is not None
        probs = torch.softmax(x, dim=1)
        p_label = probs.gather(1, labels.unsqueeze(1)).squeeze(1)  # (N, P)
        counted = p_label if vf is None else p_label * vf.reshape(n, p)
        tp = torch.zeros(n, c, dtype=x.dtype, device=x.device).scatter_add_(1, labels, counted)
        ones = (
            torch.ones((), dtype=x.dtype, device=x.device).expand(n, p)
            if vf is None
            else vf.reshape(n, p)
        )
        sum_t = torch.zeros(n, c, dtype=x.dtype, device=x.device).scatter_add_(1, labels, ones)
        # Σ_i p·v as a batched matrix-vector product: no masked copy of the probabilities
        sum_p = (
            probs.sum(2)
            if vf is None
            else torch.bmm(vf.reshape(n, 1, p), probs.transpose(1, 2)).view(n, c)
        )
        stats = (tp, sum_p, sum_t) if per_image else (tp.sum(0), sum_p.sum(0), sum_t.sum(0))
        return stats, probs, p_label
    assert target is not None
    probs = torch.sigmoid(x)
    dims = 2 if per_image else (0, 2)
    # the target is already 0 at ignored positions, so TP needs no mask; one class over the batch
    # is one dot product, which needs no full-size product
    if c == 1 and not per_image:
        tp = torch.dot(probs.view(-1), target.reshape(-1)).view(1)
        sum_p = (
            probs.sum().view(1) if vf is None else torch.dot(probs.view(-1), vf.reshape(-1)).view(1)
        )
    else:
        tp = (probs * target).sum(dims)
        sum_p = probs.sum(dims) if vf is None else (probs * vf).sum(dims)
    return (tp, sum_p, target.sum(dims)), probs, None


class _Overlap(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, target, labels, valid, mode, per_image):  # type: ignore[override]
        stats, probs, p_label = _forward(x, target, labels, valid, mode, per_image)
        ctx.save_for_backward(x, target, labels, valid, probs, p_label)
        ctx.mode, ctx.per_image = mode, per_image
        ctx.mark_non_differentiable(stats[2])
        return stats

    @staticmethod
    def backward(ctx, g_tp, g_sum_p, _g_sum_t):  # type: ignore[override]
        x, target, labels, valid, probs, p_label = ctx.saved_tensors
        mode = ctx.mode
        if torch.is_grad_enabled():  # create_graph: recompute with a differentiable graph
            with torch.enable_grad():
                tp, sum_p, _ = overlap_plain(x, target, labels, valid, mode, True, ctx.per_image)
                (gx,) = torch.autograd.grad((tp, sum_p), x, (g_tp, g_sum_p), create_graph=True)
            return gx, None, None, None, None, None
        n, c, p = x.shape
        a = g_tp.expand(n, c)  # dL/dTP, (N, C) also when the statistics were summed over the batch
        b = g_sum_p.expand(n, c)  # dL/dΣp
        if mode == "multiclass":
            # dL/dp_k = v·(a_k·[y = k] + b_k); through softmax dL/dx_k = p_k·(dL/dp_k - Σ_j p_j·dL/dp_j)
            a_label = a.gather(1, labels).mul_(p_label)  # a_y·p_y, (N, P)
            r = torch.bmm(b.unsqueeze(1), probs).view(n, p).add_(a_label)
            grad = torch.sub(b.unsqueeze(2), r.unsqueeze(1)).mul_(probs)
            grad.scatter_add_(1, labels.unsqueeze(1), a_label.unsqueeze(1))
            if valid is not None:
                grad.mul_(valid)
            return grad, None, None, None, None, None
        # dL/dp = a·t + b·v; sigmoid' = p·(1 - p)
        if valid is None:
            grad = torch.addcmul(b.unsqueeze(2), target, a.unsqueeze(2))
        else:
            grad = torch.mul(valid, b.unsqueeze(2)).addcmul_(target, a.unsqueeze(2))
        grad.mul_(probs)
        return grad.addcmul_(grad, probs, value=-1), None, None, None, None, None
