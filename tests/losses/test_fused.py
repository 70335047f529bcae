"""The fused fast paths (closed-form gradients) give the plain formula's values and gradients.

Focal (binary/multilabel), box IoU losses and the overlap statistics behind Dice/Jaccard/Tversky
compute their gradient in closed form; each is compared here with the textbook formula that
autograd differentiates, including ties, degenerate boxes, ignored pixels, soft targets, extreme
logits and double backward (which falls back to the plain formula).
"""

from __future__ import annotations

import pytest
import torch

import strop.losses as L
from strop.losses._fused import overlap, overlap_plain
from strop.losses.boxes import _box_loss_fused, _box_loss_plain
from strop.losses.classification import _binary_focal_fused, _binary_focal_plain


def _grad(fn, x, *args):
    a = x.detach().clone().requires_grad_()
    out = fn(a, *args)
    (g,) = torch.autograd.grad(out.sum(), a)
    return out.detach(), g


def _logits_and_soft_targets(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 40, generator=g, dtype=dtype) * 4
    x[0, 0, :6] = torch.tensor(
        [1e4, -1e4, 30.0, -30.0, 0.0, 1e-3], dtype=dtype
    )  # saturated and flat
    t = torch.rand(3, 2, 40, generator=g, dtype=dtype)
    t[1] = (t[1] > 0.5).to(dtype)  # hard targets too
    t[0, 0, :6] = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 1.0], dtype=dtype)
    return x, t


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 3.5])
@pytest.mark.parametrize("alpha", [None, 0.25, 0.0, 1.0, 0.9])
def test_fused_binary_focal_equals_plain(alpha, gamma, dtype):
    x, t = _logits_and_soft_targets(dtype)
    ours = _binary_focal_fused(x, t, alpha, gamma, with_grad=False)[0]
    ref, ref_grad = _grad(lambda a: _binary_focal_plain(a, t, alpha, gamma), x)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 1e-6}
    torch.testing.assert_close(ours, ref, **tol)
    # the closed-form gradient from the forward, and through focal_loss's autograd.Function
    grad = _binary_focal_fused(x, t, alpha, gamma, with_grad=True)[1]
    _, via_public = _grad(
        lambda a: L.focal_loss(a, t, mode="multilabel", alpha=alpha, gamma=gamma, reduction="none"),
        x,
    )
    # at x = 0 exactly autograd of relu(x) - log σ(|x|) takes the subgradient 0 of both kinks and
    # misses softplus'(0) = 1/2; the closed form is right there (checked by finite differences)
    smooth = x != 0
    torch.testing.assert_close(grad[smooth], ref_grad[smooth], **tol)
    torch.testing.assert_close(via_public, grad)
    if dtype == torch.float64:
        h = 1e-6
        at0 = torch.zeros_like(x, dtype=torch.bool)
        at0[0, 0, 4] = True
        fd = _binary_focal_plain(x + h * at0, t, alpha, gamma) - _binary_focal_plain(
            x - h * at0, t, alpha, gamma
        )
        torch.testing.assert_close(grad[0, 0, 4], fd[0, 0, 4] / (2 * h), rtol=1e-6, atol=1e-8)
    assert torch.isfinite(grad).all()
    assert not torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fused_focal_with_ignore_index_equals_plain(reduction):
    x, t = _logits_and_soft_targets(torch.float64)
    x[x == 0] = 0.3  # away from the kink the plain formula's autograd mishandles (see above)
    t = (t > 0.5).double()
    t[:, :, ::7] = 255
    ours = _grad(
        lambda a: L.focal_loss(a, t, mode="multilabel", ignore_index=255, reduction=reduction), x
    )

    def plain(a):
        keep = t != 255
        loss = _binary_focal_plain(a, t.masked_fill(~keep, 0), 0.25, 2.0) * keep
        if reduction == "none":
            return loss
        return loss.sum() / (keep.sum() if reduction == "mean" else 1)

    for got, want in zip(ours, _grad(plain, x), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_fused_focal_double_backward_and_target_grad_use_the_plain_formula():
    x, t = _logits_and_soft_targets(torch.float64)
    x[x == 0] = 0.3
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    (ga,) = torch.autograd.grad(L.focal_loss(a, t, mode="multilabel"), a, create_graph=True)
    plain = _binary_focal_plain(b, t, 0.25, 2.0).mean()
    (gb,) = torch.autograd.grad(plain, b, create_graph=True)
    torch.testing.assert_close(ga, gb)
    (hess_a,) = torch.autograd.grad(ga.square().sum(), a)
    (hess_b,) = torch.autograd.grad(gb.square().sum(), b)
    torch.testing.assert_close(hess_a, hess_b)
    # a target that requires grad (distillation) gets its gradient
    soft = t.clone().requires_grad_()
    L.focal_loss(x, soft, mode="multilabel").backward()
    assert soft.grad is not None and soft.grad.abs().sum() > 0
    # no grad: the same value without a graph
    with torch.no_grad():
        torch.testing.assert_close(L.focal_loss(a, t, mode="multilabel"), plain.detach())


def _box_pairs(dtype):
    g = torch.Generator().manual_seed(3)
    lo = torch.rand(64, 2, generator=g, dtype=dtype) * 10
    p = torch.cat([lo, lo + torch.rand(64, 2, generator=g, dtype=dtype) * 8], 1)
    lo = torch.rand(64, 2, generator=g, dtype=dtype) * 10
    t = torch.cat([lo, lo + torch.rand(64, 2, generator=g, dtype=dtype) * 8], 1)
    p[:6] = t[:6]  # identical: every min/max ties
    p[6, [0, 2]] = t[6, [0, 2]]  # shared vertical edges
    p[7] = torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=dtype)  # point box
    t[7] = torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=dtype)  # ... on a point box: union 0
    p[8] = torch.tensor([0.0, 0.0, 4.0, 0.0], dtype=dtype)  # line
    p[9] = torch.tensor([2.0, 2.0, 3.0, 3.0], dtype=dtype)  # disjoint from its target
    t[9] = torch.tensor([5.0, 6.0, 7.0, 9.0], dtype=dtype)
    p[10] = torch.tensor([2.0, 2.0, 3.0, 3.0], dtype=dtype)  # touching: intersection width 0
    t[10] = torch.tensor([3.0, 2.0, 4.0, 3.0], dtype=dtype)
    return p.reshape(4, 16, 4), t.reshape(4, 16, 4)  # also (..., 4) with two leading dims


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou"])
def test_fused_box_loss_equals_plain(kind, dtype):
    p, t = _box_pairs(dtype)
    ref, ref_grad = _grad(lambda a: _box_loss_plain(a, t, kind), p)
    ours, grad = _box_loss_fused(p, t, kind, with_grad=True)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(ours, ref, **tol)
    torch.testing.assert_close(grad.t().reshape(p.shape), ref_grad, **tol)
    _, via_public = _grad(lambda a: L.box_iou_loss(a, t, kind=kind, reduction="none"), p)
    torch.testing.assert_close(via_public, ref_grad, **tol)
    assert not torch.equal(ref_grad, torch.zeros_like(ref_grad))


def test_fused_box_loss_double_backward_and_target_grad():
    p, t = _box_pairs(torch.float64)
    a, b = p.clone().requires_grad_(), p.clone().requires_grad_()
    (ga,) = torch.autograd.grad(L.box_iou_loss(a, t, kind="giou"), a, create_graph=True)
    (gb,) = torch.autograd.grad(_box_loss_plain(b, t, "giou").mean(), b, create_graph=True)
    torch.testing.assert_close(ga, gb)
    torch.testing.assert_close(
        torch.autograd.grad(ga.sum(), a)[0], torch.autograd.grad(gb.sum(), b)[0]
    )
    tt = t.clone().requires_grad_()
    L.box_iou_loss(p, tt, kind="diou").backward()
    assert tt.grad is not None and tt.grad.abs().sum() > 0


def _overlap_cases():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 4, 50, generator=g, dtype=torch.float64) * 3
    soft = torch.rand(3, 4, 50, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (3, 50), generator=g)
    labels[:, :5] = 0  # class 3 rarer
    keep_mc = torch.rand(3, 1, 50, generator=g) > 0.2
    keep_ml = torch.rand(3, 4, 50, generator=g) > 0.2
    return [
        ("binary", x[:, :1], soft[:, :1], None, None),
        ("binary ignore", x[:, :1], soft[:, :1] * keep_ml[:, :1], None, keep_ml[:, :1]),
        ("multilabel", x, soft, None, None),
        ("multilabel ignore", x, soft * keep_ml, None, keep_ml),
        ("multiclass", x, None, labels, None),
        ("multiclass ignore", x, None, labels.masked_fill(~keep_mc[:, 0], 0), keep_mc),
    ]


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("case", _overlap_cases(), ids=lambda c: c[0])
def test_fused_overlap_equals_plain(case, per_image):
    name, x, target, labels, valid = case
    mode = "multiclass" if labels is not None else "multilabel"
    weights = torch.linspace(0.5, 2.0, 3 * x.shape[1], dtype=x.dtype)

    def stats(fn):
        a = x.clone().requires_grad_()
        tp, sum_p, sum_t = fn(a, target, labels, valid, mode, True, per_image)
        # a loss that weighs TP and Σp differently per entry, so both gradients are exercised
        n = tp.numel()
        loss = (tp.flatten() * weights[:n]).sum() - (sum_p.flatten() * weights[-n:] ** 2).sum()
        (grad,) = torch.autograd.grad(loss, a)
        return tp.detach(), sum_p.detach(), sum_t, grad

    for got, want in zip(stats(overlap), stats(overlap_plain), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("mode", ["binary", "multiclass"])
def test_fused_dice_double_backward_and_no_grad(mode):
    x, target, labels, _ = _overlap_cases()[0 if mode == "binary" else 4][1:]
    t = target if mode == "binary" else labels
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    (ga,) = torch.autograd.grad(L.dice_loss(a, t, mode=mode, per_image=True), a, create_graph=True)

    def plain(v):
        tp, sum_p, sum_t = overlap_plain(v, target, labels, None, mode, True, True)
        return (1 - (2 * tp + 1) / (sum_p + sum_t + 1)).mean()

    (gb,) = torch.autograd.grad(plain(b), b, create_graph=True)
    torch.testing.assert_close(ga, gb)
    torch.testing.assert_close(
        torch.autograd.grad(ga.square().sum(), a)[0], torch.autograd.grad(gb.square().sum(), b)[0]
    )
    with torch.no_grad():
        torch.testing.assert_close(L.dice_loss(a, t, mode=mode, per_image=True), plain(b).detach())
