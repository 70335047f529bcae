"""Relative precision in float32 against float64 references, over logits in [-15, 15].

Absolute tolerances hide the failure that matters for confident predictions: a loss of 5.9e-4
computed as ``-log(p)`` with ``p`` a float32 close to 1 keeps only ~4 significant digits. Each
reference here is an independent float64 formula (or torch's float64 op), never strop's code.

Tolerances: one float32 rounding is 6e-8 relative; the computations chain a handful of rounded
operations, so 1e-6 (~16 roundings) is the bound for hard targets; soft targets add the inherent
cancellation of ``softplus(x) - t·x`` (torch's own BCE has it), bounded by ``eps·(|x| + 1)``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import strop.losses as L

EPS32 = torch.finfo(torch.float32).eps
X = torch.linspace(-15, 15, 3001)


def _focal64(x: torch.Tensor, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Binary focal loss in float64: BCE-with-logits (torch, float64) times (1 - p_t)**gamma."""
    x64, t64 = x.double(), t.double()
    p = torch.sigmoid(x64)
    one_minus_pt = t64 * torch.sigmoid(-x64) + (1 - t64) * p  # no 1 - p in float32 anywhere
    return F.binary_cross_entropy_with_logits(x64, t64, reduction="none") * one_minus_pt**gamma


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref) / ref.abs()).abs().max().item()


def test_confident_correct_logit_7_44_target_1():
    # -log σ(x) = log1p(exp(-x)) by hand in float64 (x is float32 7.44 exactly as stored);
    # the old -log(p) path was off by ~1e-4 relative here
    x, t = torch.tensor([7.44]), torch.tensor([1.0])
    ref = math.log1p(math.exp(-x.double().item()))
    for path in ("no_grad", "grad"):
        with torch.set_grad_enabled(path == "grad"):
            got = L.focal_loss(x.clone().requires_grad_(path == "grad"), t, alpha=None, gamma=0.0)
        assert abs(got.item() - ref) / ref < 1e-6


@pytest.mark.parametrize("target", [0.0, 1.0])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 3.5])
@pytest.mark.parametrize("path", ["no_grad", "fused_autograd", "plain"])
def test_focal_hard_targets_relative_error(target, gamma, path):
    """Loss within 1e-6 and gradient within 4e-6 relative of float64, every logit in [-15, 15]."""
    t = torch.full_like(X, target)
    x = X.clone().requires_grad_(path != "no_grad")
    tt = t.clone().requires_grad_() if path == "plain" else t  # a target requiring grad: plain path
    if path == "no_grad":
        with torch.no_grad():
            loss = L.focal_loss(x, tt, alpha=None, gamma=gamma, reduction="none")
    else:
        loss = L.focal_loss(x, tt, alpha=None, gamma=gamma, reduction="none")
    x64 = X.double().requires_grad_()
    ref = _focal64(x64, t, gamma)
    assert _rel(loss.detach(), ref.detach()) < 1e-6
    if path != "no_grad":
        (g,) = torch.autograd.grad(loss.sum(), x)
        (g64,) = torch.autograd.grad(ref.sum(), x64)
        # the gradient chains more rounded factors (q**(γ-1), dq/dx, ce, the chain rule's sums)
        assert _rel(g, g64) < 4e-6


def test_focal_gamma0_equals_bce_with_logits_in_float64():
    """gamma=0, alpha=None is BCE-with-logits: float32 strop against torch's float64 op."""
    g = torch.Generator().manual_seed(0)
    t_soft = torch.rand(X.shape, generator=g)
    for t in (torch.ones_like(X), torch.zeros_like(X), (t_soft > 0.5).float()):
        ref = F.binary_cross_entropy_with_logits(X.double(), t.double(), reduction="none")
        assert _rel(L.focal_loss(X, t, alpha=None, gamma=0.0, reduction="none"), ref) < 1e-6
    ref = F.binary_cross_entropy_with_logits(X.double(), t_soft.double(), reduction="none")
    got = L.focal_loss(X, t_soft, alpha=None, gamma=0.0, reduction="none").double()
    # soft targets: softplus(x) - t·x cancels; the bound is the rounding of its terms
    assert ((got - ref).abs() <= 4 * EPS32 * (X.abs().double() + 1)).all()


@pytest.mark.parametrize("alpha", [0.25, 0.9])
def test_focal_alpha_keeps_relative_precision(alpha):
    for target in (0.0, 1.0):
        t = torch.full_like(X, target)
        a_t = alpha if target == 1 else 1 - alpha
        ref = a_t * _focal64(X, t, 2.0)
        assert _rel(L.focal_loss(X, t, alpha=alpha, gamma=2.0, reduction="none"), ref) < 1e-6


# -- overlap losses: the same check on their fused (closed-form backward) path ---------------


def _dice64(x, t, mode):
    """Soft Dice over the batch per class, smooth=1, in float64 (formula of docs/losses.md)."""
    x = x.double()
    if mode == "binary":
        p, oh = torch.sigmoid(x), t.double()
    else:
        p = torch.softmax(x, 1)
        oh = F.one_hot(t, x.shape[1]).movedim(-1, 1).double()
    dims = (0, *range(2, x.dim()))
    inter, card = (p * oh).sum(dims), (p + oh).sum(dims)
    return (1 - (2 * inter + 1) / (card + 1)).mean()


@pytest.mark.parametrize("mode", ["binary", "multiclass"])
def test_dice_fused_relative_error_random_logits(mode):
    g = torch.Generator().manual_seed(1)
    c = 1 if mode == "binary" else 4
    x = torch.rand(2, c, 16, 16, generator=g) * 30 - 15
    if mode == "binary":
        t = (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float()
    else:
        t = torch.randint(0, 4, (2, 16, 16), generator=g)
    xx = x.clone().requires_grad_()
    loss = L.dice_loss(xx, t, mode=mode)
    x64 = x.double().requires_grad_()
    ref = _dice64(x64, t, mode)
    assert abs(loss.item() - ref.item()) / ref.item() < 1e-6
    (gx,) = torch.autograd.grad(loss, xx)
    (g64,) = torch.autograd.grad(ref, x64)
    # each element's gradient is a sum of terms of the loss's scale; rounding is relative to it
    assert ((gx.double() - g64).abs().max() / g64.abs().max()).item() < 4e-6
