"""``reduction="sum"`` and ``"none"`` of Dice / Jaccard / Tversky against values worked by hand.

Two images, two classes, two pixels each, probabilities given directly (``from_logits=False``):

    image 1: p(class 0, class 1) = (0.8, 0.2), (0.4, 0.6); target 0, 1
    image 2: p(class 0, class 1) = (0.5, 0.5), (1.0, 0.0); target 1, 0

Over the batch: class 0 has TP 1.8, Σp 2.7, Σt 2 (FP 0.9, FN 0.2); class 1 TP 1.1, Σp 1.3, Σt 2
(FP 0.2, FN 0.9).
"""

import pytest
import torch

from strop.losses import dice_loss, jaccard_loss, tversky_loss

PROBS = torch.tensor(
    [[[[0.8, 0.4]], [[0.2, 0.6]]], [[[0.5, 1.0]], [[0.5, 0.0]]]], dtype=torch.float64
)  # (N=2, C=2, 1, 2)
TARGET = torch.tensor([[[0, 1]], [[1, 0]]])  # (2, 1, 2)

# per-class losses over the batch, smooth = 0
DICE = [1 - 3.6 / 4.7, 1 - 2.2 / 3.3]
JACCARD = [1 - 1.8 / 2.9, 1 - 1.1 / 2.2]
TVERSKY_37 = [1 - 1.8 / (1.8 + 0.3 * 0.9 + 0.7 * 0.2), 1 - 1.1 / (1.1 + 0.3 * 0.2 + 0.7 * 0.9)]
# per image (rows) and class (columns), Dice, smooth = 0
DICE_PER_IMAGE = [[1 - 1.6 / 2.2, 1 - 1.2 / 1.8], [1 - 2.0 / 2.5, 1 - 1.0 / 1.5]]


def _call(fn, reduction, **kw):
    return fn(
        PROBS, TARGET, mode="multiclass", from_logits=False, smooth=0.0, reduction=reduction, **kw
    )


@pytest.mark.parametrize(
    ("fn", "kw", "per_class"),
    [
        (dice_loss, {}, DICE),
        (jaccard_loss, {}, JACCARD),
        (tversky_loss, {"alpha": 0.3, "beta": 0.7}, TVERSKY_37),
    ],
    ids=["dice", "jaccard", "tversky"],
)
def test_none_sum_mean_per_class(fn, kw, per_class):
    # caught by: "sum" averaging, "none" reducing, alpha/beta swapped (Tversky), union miscounted
    none = _call(fn, "none", **kw)
    assert none.shape == (2,)
    torch.testing.assert_close(none, torch.tensor(per_class, dtype=torch.float64))
    assert _call(fn, "sum", **kw).item() == pytest.approx(sum(per_class))
    assert _call(fn, "mean", **kw).item() == pytest.approx(sum(per_class) / 2)


def test_per_image_none_and_sum():
    none = _call(dice_loss, "none", per_image=True)
    assert none.shape == (2, 2)
    torch.testing.assert_close(none, torch.tensor(DICE_PER_IMAGE, dtype=torch.float64))
    assert _call(dice_loss, "sum", per_image=True).item() == pytest.approx(
        sum(map(sum, DICE_PER_IMAGE))
    )


def test_smooth_enters_numerator_and_denominator():
    got = dice_loss(
        PROBS, TARGET, mode="multiclass", from_logits=False, smooth=1.0, reduction="none"
    )
    torch.testing.assert_close(
        got, torch.tensor([1 - 4.6 / 5.7, 1 - 3.2 / 4.3], dtype=torch.float64)
    )


def test_ignored_pixels_leave_none_and_sum():
    # ignore image 2's first pixel: class 0 TP 1.8, Σp 2.2, Σt 2; class 1 TP 0.6, Σp 0.8, Σt 1
    target = TARGET.clone()
    target[1, 0, 0] = 255
    got = dice_loss(
        PROBS,
        target,
        mode="multiclass",
        from_logits=False,
        smooth=0.0,
        reduction="none",
        ignore_index=255,
    )
    expected = torch.tensor([1 - 3.6 / 4.2, 1 - 1.2 / 1.8], dtype=torch.float64)
    torch.testing.assert_close(got, expected)
    summed = dice_loss(
        PROBS,
        target,
        mode="multiclass",
        from_logits=False,
        smooth=0.0,
        reduction="sum",
        ignore_index=255,
    )
    assert summed.item() == pytest.approx(float(expected.sum()))


def test_focal_tversky_gamma_per_class_before_the_sum():
    got = _call(tversky_loss, "sum", alpha=0.3, beta=0.7, gamma=2.0).item()
    assert got == pytest.approx(TVERSKY_37[0] ** 2 + TVERSKY_37[1] ** 2)


def test_elementwise_losses_with_none_are_zero_where_ignored():
    # caught by: reduction="none" returning the loss before the ignore mask is applied
    import torchvision
    from torch.nn import functional as F

    from strop.losses import cross_entropy, focal_loss

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 3, 4, generator=g, dtype=torch.float64)
    t = (torch.rand(2, 1, 3, 4, generator=g) > 0.5).double()
    t[0, 0, 0, :2] = 255
    got = focal_loss(x, t, ignore_index=255, reduction="none")
    keep = t != 255
    ref = torchvision.ops.sigmoid_focal_loss(
        x, t.masked_fill(~keep, 0), alpha=0.25, gamma=2.0, reduction="none"
    )
    torch.testing.assert_close(got, ref * keep)
    assert (got[~keep] == 0).all() and (got[keep] > 0).all()

    logits = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (2, 4, 4), generator=g)
    y[1, :2] = 255
    torch.testing.assert_close(
        cross_entropy(logits, y, ignore_index=255, reduction="none"),
        F.cross_entropy(logits, y, ignore_index=255, reduction="none"),
    )
