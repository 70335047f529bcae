"""Hand-computed values, empty masks, gradcheck, numerical stability, autocast and error messages."""

from __future__ import annotations

import math

import pytest
import torch

import strop.losses as L

BIG = 1e4


def _probs(values):
    return torch.tensor(values, dtype=torch.float64)[None]


# --- value tables (from_logits=False so the numbers are readable) ---------------------------------


@pytest.mark.parametrize(
    ("fn", "p", "t", "smooth", "expected"),
    [
        (L.dice_loss, [1, 1, 1, 1], [1, 1, 0, 0], 0.0, 1 - 4 / 6),
        (L.dice_loss, [1, 1, 1, 1], [1, 1, 0, 0], 1.0, 1 - 5 / 7),
        (L.dice_loss, [0.5, 0.5, 0, 0], [1, 1, 0, 0], 0.0, 1 - 2 / 3),
        (L.dice_loss, [0, 0, 0, 0], [0, 0, 0, 0], 0.0, 0.0),  # empty target and prediction: perfect
        (L.dice_loss, [0, 0, 0, 0], [0, 0, 0, 0], 1.0, 0.0),
        (
            L.dice_loss,
            [1, 1, 0, 0],
            [0, 0, 0, 0],
            1.0,
            1 - 1 / 3,
        ),  # empty target, predicted: 1 - s/(Σp+s)
        (L.dice_loss, [0, 0, 0, 0], [1, 1, 0, 0], 0.0, 1.0),  # nothing predicted
        (L.jaccard_loss, [1, 1, 1, 1], [1, 1, 0, 0], 0.0, 1 - 2 / 4),
        (L.jaccard_loss, [0.5, 0.5, 0, 0], [1, 1, 0, 0], 0.0, 1 - 1 / 2),
        (L.jaccard_loss, [0, 0, 0, 0], [0, 0, 0, 0], 0.0, 0.0),
        (L.jaccard_loss, [1, 1, 1, 0], [1, 1, 0, 0], 1.0, 1 - 3 / 4),
    ],
)
def test_overlap_value_table(fn, p, t, smooth, expected):
    got = fn(_probs(p), _probs(t), from_logits=False, smooth=smooth)
    assert math.isclose(got.item(), expected, abs_tol=1e-12)


@pytest.mark.parametrize(
    ("alpha", "beta", "gamma", "expected"),
    [
        (0.5, 0.5, 1.0, 1 - 2 / 3),  # TP=2, FP=2, FN=0 -> Dice
        (1.0, 1.0, 1.0, 1 - 2 / 4),  # Jaccard
        (0.3, 0.7, 1.0, 1 - 2 / (2 + 0.6)),
        (0.7, 0.3, 1.0, 1 - 2 / (2 + 1.4)),
        (0.7, 0.3, 2.0, (1 - 2 / (2 + 1.4)) ** 2),  # focal-Tversky
    ],
)
def test_tversky_value_table(alpha, beta, gamma, expected):
    got = L.tversky_loss(
        _probs([1, 1, 1, 1]),
        _probs([1, 1, 0, 0]),
        from_logits=False,
        smooth=0.0,
        alpha=alpha,
        beta=beta,
        gamma=gamma,
    )
    assert math.isclose(got.item(), expected, rel_tol=1e-12)


def test_focal_value_table():
    # logit 0 -> p = 0.5; target 1: -log 0.5 * 0.5**2 * alpha
    x = torch.zeros(1, 1, dtype=torch.float64)
    assert math.isclose(
        L.focal_loss(x, torch.ones(1, 1)).item(), 0.25 * 0.25 * math.log(2), rel_tol=1e-12
    )
    assert math.isclose(
        L.focal_loss(x, torch.zeros(1, 1)).item(), 0.75 * 0.25 * math.log(2), rel_tol=1e-12
    )
    # gamma=0, alpha=None is BCE with logits
    g = torch.Generator().manual_seed(0)
    x, t = (
        torch.randn(4, 7, generator=g, dtype=torch.float64),
        torch.rand(4, 7, generator=g, dtype=torch.float64),
    )
    torch.testing.assert_close(
        L.focal_loss(x, t, gamma=0, alpha=None),
        torch.nn.functional.binary_cross_entropy_with_logits(x, t),
    )
    # multiclass: two-class softmax focal on logits [0, x] equals binary focal on x
    xm = torch.stack([torch.zeros_like(x[:, 0]), x[:, 0]], 1)
    y = (t[:, 0] > 0.5).long()
    torch.testing.assert_close(
        L.focal_loss(xm, y, mode="multiclass"), L.focal_loss(x[:, 0], y.double())
    )


def test_lovasz_value_table():
    # one image, logits [2, -1], labels [1, 0]: errors 1-2=-1 -> 0 and 1-1=0 -> 0: perfect
    assert L.lovasz_loss(torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]])).item() == 0.0
    # logits [0, 0], labels [1, 0]: errors [1, 1]; sorted gt [1, 0] (ties: same value either way)
    # g = [J1, J2 - J1] = [1 - 0/1, (1 - 0/2) - 1] = [1, 0] -> loss 1
    assert math.isclose(L.lovasz_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])).item(), 1.0)
    # all-negative image: relu of the largest error
    assert math.isclose(L.lovasz_loss(torch.tensor([[0.5, -3.0]]), torch.zeros(1, 2)).item(), 1.5)


def test_box_value_table():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    assert math.isclose(L.box_iou_loss(a, b).item(), 1 - 1 / 7, rel_tol=1e-6)
    # GIoU: enclosing 3x3 = 9, union 7: 1 - 1/7 + 2/9
    assert math.isclose(L.box_iou_loss(a, b, kind="giou").item(), 1 - 1 / 7 + 2 / 9, rel_tol=1e-6)
    # DIoU: centres (1,1),(2,2): ρ²=2; diagonal² of the enclosing box = 18
    assert math.isclose(L.box_iou_loss(a, b, kind="diou").item(), 1 - 1 / 7 + 2 / 18, rel_tol=1e-6)
    # CIoU: same aspect ratio -> v = 0 -> equals DIoU
    assert math.isclose(L.box_iou_loss(a, b, kind="ciou").item(), 1 - 1 / 7 + 2 / 18, rel_tol=1e-6)
    assert L.box_iou(a, b, denominator="min").item() == 0.25


def test_degenerate_boxes_give_documented_values():
    point = torch.tensor([[1.0, 1.0, 1.0, 1.0]], requires_grad=True)
    for kind in ("iou", "giou", "diou", "ciou"):
        loss = L.box_iou_loss(point, point.detach(), kind=kind)
        assert loss.item() == 1.0  # IoU of two point boxes is 0 (0/0 := 0); no extra terms
        (grad,) = torch.autograd.grad(loss, point)
        assert torch.isfinite(grad).all()
    line = torch.tensor([[0.0, 0.0, 4.0, 0.0]])
    assert L.box_iou(line, line).item() == 0.0


def test_ignore_index_pixels_do_not_count():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 5, 5, generator=g)
    y = torch.randint(0, 3, (2, 5, 5), generator=g)
    y_ign = y.clone()
    y_ign[:, 0] = 255
    for fn in (L.dice_loss, L.jaccard_loss, L.tversky_loss, L.focal_loss, L.lovasz_loss):
        full = fn(x[:, :, 1:], y[:, 1:], mode="multiclass")
        ignored = fn(x, y_ign, mode="multiclass", ignore_index=255)
        torch.testing.assert_close(ignored, full, msg=fn.__name__)


@pytest.mark.parametrize(
    "fn",
    [
        L.dice_loss,
        L.jaccard_loss,
        L.tversky_loss,
        L.focal_loss,
        L.bce,
        L.dice_bce_loss,
        L.lovasz_loss,
    ],
)
def test_empty_batch_gives_zero(fn):
    x = torch.zeros(0, 1, 4, 4, requires_grad=True)
    out = fn(x, torch.zeros(0, 1, 4, 4))
    assert out.item() == 0.0
    assert out.requires_grad


def test_empty_boxes_and_mse_give_zero():
    assert L.box_iou_loss(torch.zeros(0, 4), torch.zeros(0, 4), kind="ciou").item() == 0.0
    assert L.box_iou(torch.zeros(0, 4), torch.zeros(3, 4)).shape == (0, 3)
    assert L.mse_loss(torch.zeros(0), torch.zeros(0)).item() == 0.0
    assert L.cross_entropy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)).item() == 0.0
    logits = torch.zeros(2, 3, requires_grad=True)
    all_ignored = L.cross_entropy(logits, torch.full((2,), 255), ignore_index=255)
    assert all_ignored.item() == 0.0
    (grad,) = torch.autograd.grad(all_ignored, logits)
    assert torch.equal(grad, torch.zeros(2, 3))  # no 0/0 in the backward either


# --- gradcheck (float64) -------------------------------------------------------------------------


def _seg(mode, g):
    if mode == "multiclass":
        return torch.randn(2, 3, 4, 3, generator=g, dtype=torch.float64), torch.randint(
            0, 3, (2, 4, 3), generator=g
        )
    c = 1 if mode == "binary" else 2
    x = torch.randn(2, c, 4, 3, generator=g, dtype=torch.float64)
    return x, (torch.rand(2, c, 4, 3, generator=g) > 0.5).double()


SEG = [
    ("dice", lambda x, t, m: L.dice_loss(x, t, mode=m)),
    ("dice per image", lambda x, t, m: L.dice_loss(x, t, mode=m, per_image=True, smooth=0.0)),
    ("jaccard", lambda x, t, m: L.jaccard_loss(x, t, mode=m)),
    ("tversky focal", lambda x, t, m: L.tversky_loss(x, t, mode=m, alpha=0.3, beta=0.7, gamma=1.5)),
    ("dice_bce", lambda x, t, m: L.dice_bce_loss(x, t, mode=m)),
    ("focal", lambda x, t, m: L.focal_loss(x, t, mode=m)),
    ("focal gamma 0.5", lambda x, t, m: L.focal_loss(x, t, mode=m, gamma=0.5)),
    ("lovasz", lambda x, t, m: L.lovasz_loss(x, t, mode=m)),
    ("lovasz per image", lambda x, t, m: L.lovasz_loss(x, t, mode=m, per_image=True)),
]


@pytest.mark.parametrize("mode", ["binary", "multiclass", "multilabel"])
@pytest.mark.parametrize(("name", "fn"), SEG, ids=[s[0] for s in SEG])
def test_gradcheck_segmentation(name, fn, mode):
    g = torch.Generator().manual_seed(2)
    x, t = _seg(mode, g)
    assert torch.autograd.gradcheck(lambda a: fn(a, t, mode), (x.requires_grad_(),))


def test_gradcheck_other_losses():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 4, (3,), generator=g)
    assert torch.autograd.gradcheck(lambda a: L.cross_entropy(a, y, label_smoothing=0.1), (x,))
    soft = torch.rand(3, 4, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: L.bce(a, soft), (x,))
    assert torch.autograd.gradcheck(
        lambda a: L.mse_loss(a, torch.zeros(3, 4, dtype=torch.float64)), (x,)
    )
    lo = torch.rand(6, 2, generator=g, dtype=torch.float64) * 5
    p = torch.cat([lo, lo + 1 + torch.rand(6, 2, generator=g, dtype=torch.float64)], 1)
    lo = torch.rand(6, 2, generator=g, dtype=torch.float64) * 5
    t = torch.cat([lo, lo + 1 + torch.rand(6, 2, generator=g, dtype=torch.float64)], 1)
    # CIoU holds its α constant in the gradient by definition, so gradcheck cannot apply; its
    # gradient is compared with torchvision's in test_losses_reference.py
    for kind in ("iou", "giou", "diou"):
        assert torch.autograd.gradcheck(
            lambda a, k=kind: L.box_iou_loss(a, t, kind=k), (p.requires_grad_(),)
        )
    assert torch.autograd.gradcheck(lambda a: L.box_iou(a, t), (p,))


# --- numerical stability -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["binary", "multiclass", "multilabel"])
@pytest.mark.parametrize(("name", "fn"), SEG, ids=[s[0] for s in SEG])
def test_huge_logits_give_finite_loss_and_gradient(name, fn, mode):
    g = torch.Generator().manual_seed(4)
    x, t = _seg(mode, g)
    x = (torch.sign(x) * BIG).float().requires_grad_()
    out = fn(x, t.float() if mode != "multiclass" else t, mode)
    (grad,) = torch.autograd.grad(out, x)
    assert torch.isfinite(out) and torch.isfinite(grad).all(), name


def test_huge_logits_keep_their_value():
    x = torch.tensor([[BIG, -BIG]])
    assert L.focal_loss(x, torch.tensor([[1.0, 0.0]])).item() == 0.0  # confident and right
    wrong = L.focal_loss(x, torch.tensor([[0.0, 1.0]]), alpha=None, gamma=0)
    assert math.isclose(wrong.item(), BIG, rel_tol=1e-6)  # -log σ(-1e4) = 1e4


# --- autocast ------------------------------------------------------------------------------------

AMP = [
    ("mse", lambda x, t, tb: L.mse_loss(x, tb)),
    ("bce", lambda x, t, tb: L.bce(x, tb)),
    ("dice", lambda x, t, tb: L.dice_loss(x, tb)),
    ("jaccard", lambda x, t, tb: L.jaccard_loss(x, tb)),
    ("tversky", lambda x, t, tb: L.tversky_loss(x, tb, gamma=0.75)),
    ("dice_bce", lambda x, t, tb: L.dice_bce_loss(x, tb)),
    ("focal", lambda x, t, tb: L.focal_loss(x, tb)),
    ("lovasz", lambda x, t, tb: L.lovasz_loss(x, tb)),
    ("dice mc", lambda x, t, tb: L.dice_loss(x, t, mode="multiclass")),
    ("focal mc", lambda x, t, tb: L.focal_loss(x, t, mode="multiclass")),
    ("lovasz mc", lambda x, t, tb: L.lovasz_loss(x, t, mode="multiclass")),
    ("cross_entropy", lambda x, t, tb: L.cross_entropy(x, t)),
    ("box giou", lambda x, t, tb: L.box_iou_loss(_as_boxes(x), _as_boxes(tb), kind="giou")),
    ("box ciou", lambda x, t, tb: L.box_iou_loss(_as_boxes(x), _as_boxes(tb), kind="ciou")),
]


def _as_boxes(v):
    v = v.reshape(-1, 2)[:8].abs()
    return torch.cat([v, v + 1 + v.flip(1)], 1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("name", "fn"), AMP, ids=[a[0] for a in AMP])
def test_autocast_returns_float32_close_to_fp32(name, fn, dtype):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 8, 8, generator=g)
    t = torch.randint(0, 3, (2, 8, 8), generator=g)
    tb = (torch.rand(2, 3, 8, 8, generator=g) > 0.5).float()
    if name in {"dice", "jaccard", "tversky", "dice_bce", "focal", "lovasz", "bce", "mse"}:
        x, tb = x[:, :1], tb[:, :1]
    ref = fn(x, t, tb)
    with torch.autocast("cpu", dtype=dtype):
        # a model under autocast hands the loss a low-precision output
        out = fn(x.to(dtype), t, tb)
    assert out.dtype == torch.float32
    # measured (torch 2.14, this input): largest error 3.7e-4 absolute (bf16 mse), 2.6e-4 relative
    # (bf16 box giou); the input's rounding to bf16/fp16 is most of it. Margin ~3x.
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)
