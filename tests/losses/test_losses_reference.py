"""strop's losses give the reference libraries' numbers (and gradients) where definitions coincide.

Each test names the reference flags that the docstring of the strop function promises.
"""

from __future__ import annotations

# the reference libraries are in the [test] extra: a missing one must fail, not skip
import monai.losses as monai_losses
import pytest
import segmentation_models_pytorch.losses as smp_losses
import torch
import torchvision.ops as tvo

import strop.losses as L


def _binary(empty: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 1, 12, 10, generator=g, dtype=torch.float64) * 2
    t = (torch.rand(3, 1, 12, 10, generator=g) > 0.6).double()
    if empty:
        t[1] = 0  # an image with an empty mask
    return x, t


def _multiclass(empty: bool, seed: int = 0, c: int = 4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c, 9, 11, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, c, (2, 9, 11), generator=g)
    if empty:
        y[y == 2] = 1  # class 2 absent from the whole batch
    return x, y


def _same(ours_fn, ref_fn, x, *args, atol=1e-10):
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    ours, ref = ours_fn(a, *args), ref_fn(b, *args)
    rtol = 1e-7 if atol < 1e-8 else 1e-5
    torch.testing.assert_close(ours, ref.to(ours.dtype), atol=atol, rtol=rtol)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(a.grad, b.grad.to(a.grad.dtype), atol=atol, rtol=rtol)


@pytest.mark.parametrize("empty", [False, True])
@pytest.mark.parametrize("per_image", [False, True])
def test_dice_binary_equals_monai(empty, per_image):
    x, t = _binary(empty)
    ref = monai_losses.DiceLoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0, batch=not per_image)
    _same(lambda a, b: L.dice_loss(a, b, per_image=per_image), ref, x, t)


@pytest.mark.parametrize("empty", [False, True])
def test_dice_multiclass_equals_monai(empty):
    x, y = _multiclass(empty)
    ref = monai_losses.DiceLoss(
        softmax=True, to_onehot_y=True, smooth_nr=1.0, smooth_dr=1.0, batch=True
    )
    _same(lambda a, b: L.dice_loss(a, b, mode="multiclass"), lambda a, b: ref(a, b[:, None]), x, y)


def test_dice_multilabel_equals_monai():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    t = (torch.rand(2, 3, 8, 8, generator=g) > 0.5).double()
    ref = monai_losses.DiceLoss(sigmoid=True, smooth_nr=0.5, smooth_dr=0.5, batch=False)
    _same(lambda a, b: L.dice_loss(a, b, mode="multilabel", smooth=0.5, per_image=True), ref, x, t)


@pytest.mark.parametrize("mode", ["binary", "multiclass"])
def test_dice_equals_smp_when_classes_present(mode):
    x, t = _binary(False) if mode == "binary" else _multiclass(False)
    # smp's soft_dice_score adds smooth to TP *and* the half-sum, i.e. 2*smooth in strop's terms
    ref = smp_losses.DiceLoss(mode, smooth=0.5)
    _same(lambda a, b: L.dice_loss(a, b, mode=mode), ref, x, t)


def test_dice_differs_from_smp_only_on_classes_absent_from_target():
    x, y = _multiclass(True)
    ours = L.dice_loss(x, y, mode="multiclass", reduction="none")
    ref_none = smp_losses.DiceLoss("multiclass", smooth=0.5)
    # smp zeroes absent classes and averages over all C: recover its mean from ours
    present = torch.stack([(y == c).any() for c in range(x.shape[1])])
    assert not present[2] and ours[2] > 0
    torch.testing.assert_close((ours * present).mean(), ref_none(x, y))


@pytest.mark.parametrize("empty", [False, True])
def test_jaccard_equals_monai(empty):
    x, t = _binary(empty)
    ref = monai_losses.DiceLoss(
        sigmoid=True, jaccard=True, smooth_nr=2.0, smooth_dr=2.0, batch=True
    )
    _same(L.jaccard_loss, ref, x, t)


@pytest.mark.parametrize("mode", ["binary", "multiclass"])
def test_jaccard_equals_smp(mode):
    x, t = _binary(False, 1) if mode == "binary" else _multiclass(False, 1)
    _same(
        lambda a, b: L.jaccard_loss(a, b, mode=mode), smp_losses.JaccardLoss(mode, smooth=1.0), x, t
    )


@pytest.mark.parametrize("empty", [False, True])
@pytest.mark.parametrize("mode", ["binary", "multiclass"])
def test_tversky_equals_monai(mode, empty):
    x, t = _binary(empty, 2) if mode == "binary" else _multiclass(empty, 2)
    onehot = mode == "multiclass"
    ref = monai_losses.TverskyLoss(
        sigmoid=not onehot,
        softmax=onehot,
        to_onehot_y=onehot,
        alpha=0.3,
        beta=0.7,
        smooth_nr=1.0,
        smooth_dr=1.0,
        batch=True,
    )
    _same(
        lambda a, b: L.tversky_loss(a, b, mode=mode, alpha=0.3, beta=0.7),
        lambda a, b: ref(a, b[:, None] if onehot else b),
        x,
        t,
    )


@pytest.mark.parametrize("gamma", [1.0, 0.75, 2.0])
def test_tversky_binary_equals_smp_including_focal(gamma):
    x, t = _binary(False, 4)
    ref = smp_losses.TverskyLoss("binary", smooth=1.0, alpha=0.3, beta=0.7, gamma=gamma)
    _same(lambda a, b: L.tversky_loss(a, b, alpha=0.3, beta=0.7, gamma=gamma), ref, x, t)


@pytest.mark.parametrize("alpha", [0.25, None])
@pytest.mark.parametrize("gamma", [2.0, 0.0, 1.5])
def test_focal_binary_equals_torchvision(alpha, gamma):
    x, t = _binary(False, 5)
    _same(
        lambda a, b: L.focal_loss(a, b, alpha=alpha, gamma=gamma),
        lambda a, b: tvo.sigmoid_focal_loss(
            a, b, alpha=-1 if alpha is None else alpha, gamma=gamma, reduction="mean"
        ),
        x,
        t,
    )


def test_focal_binary_with_ignore_equals_smp():
    x, t = _binary(False, 6)
    t[0, 0, :3] = 255
    ref = smp_losses.FocalLoss("binary", alpha=0.25, gamma=2.0, ignore_index=255)
    _same(lambda a, b: L.focal_loss(a, b, ignore_index=255), ref, x, t)


def test_focal_multilabel_equals_monai():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)
    t = (torch.rand(2, 3, 6, 6, generator=g) > 0.5).double()
    _same(
        lambda a, b: L.focal_loss(a, b, mode="multilabel", alpha=0.4, gamma=1.5),
        monai_losses.FocalLoss(alpha=0.4, gamma=1.5),
        x,
        t,
        atol=1e-6,
    )  # MONAI computes in float32


@pytest.mark.parametrize("alpha", [0.25, None, (0.1, 0.2, 0.3, 0.4)])
def test_focal_multiclass_equals_monai_softmax(alpha):
    x, y = _multiclass(False, 8)
    ref = monai_losses.FocalLoss(
        use_softmax=True,
        to_onehot_y=True,
        alpha=alpha if not isinstance(alpha, tuple) else torch.tensor(alpha, dtype=torch.float64),
        gamma=2.0,
        reduction="none",
    )
    _same(
        lambda a, b: L.focal_loss(a, b, mode="multiclass", alpha=alpha),
        lambda a, b: ref(a, b[:, None]).sum(1).mean(),
        x,
        y,
        atol=1e-6,
    )  # MONAI computes in float32


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("empty", [False, True])
def test_lovasz_binary_equals_smp(per_image, empty):
    x, t = _binary(empty, 9)  # smp's Lovász runs in float32 only; this also tests strop's fast path
    _same(
        lambda a, b: L.lovasz_loss(a, b, per_image=per_image),
        smp_losses.LovaszLoss("binary", per_image=per_image),
        x.float(),
        t.float(),
        atol=1e-6,
    )


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("empty", [False, True])
def test_lovasz_multiclass_equals_smp(per_image, empty):
    x, y = _multiclass(empty, 10)
    _same(
        lambda a, b: L.lovasz_loss(a, b, mode="multiclass", per_image=per_image),
        smp_losses.LovaszLoss("multiclass", per_image=per_image),
        x.float(),
        y,
        atol=1e-6,
    )


@pytest.mark.parametrize("mode", ["binary", "multiclass"])
def test_lovasz_ignore_index_equals_smp(mode):
    x, t = _binary(False, 11) if mode == "binary" else _multiclass(False, 11)
    t = t.clone()
    t[0, ..., :4] = 255
    _same(
        lambda a, b: L.lovasz_loss(a, b, mode=mode, ignore_index=255),
        smp_losses.LovaszLoss(mode, ignore_index=255),
        x.float(),
        t,
        atol=1e-6,
    )


def test_lovasz_float32_fast_path_equals_float64():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(4, 1, 64, 64, dtype=torch.float64, generator=g)
    t = (torch.rand(4, 1, 64, 64, generator=g) > 0.5).double()
    for per_image in (False, True):
        torch.testing.assert_close(
            L.lovasz_loss(x.float(), t.float(), per_image=per_image),
            L.lovasz_loss(x, t, per_image=per_image).float(),
            rtol=1e-5,
            atol=1e-6,
        )


def _boxes(n: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(n, 2, generator=g, dtype=dtype) * 10
    return torch.cat([lo, lo + 0.1 + torch.rand(n, 2, generator=g, dtype=dtype) * 10], 1)


@pytest.mark.parametrize(
    ("kind", "ref"),
    [
        ("giou", "generalized_box_iou_loss"),
        ("diou", "distance_box_iou_loss"),
        ("ciou", "complete_box_iou_loss"),
    ],
)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_box_losses_equal_torchvision(kind, ref, reduction):
    p, t = _boxes(50, 1), _boxes(50, 2)
    p[:5] = t[:5]  # some identical pairs
    fn = getattr(tvo, ref)
    a, b = p.clone().requires_grad_(), p.clone().requires_grad_()
    ours = L.box_iou_loss(a, t, kind=kind, reduction=reduction)
    theirs = fn(b, t, reduction=reduction)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)  # torchvision adds eps=1e-7
    ours.sum().backward()
    theirs.sum().backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5)


def test_box_iou_equals_torchvision():
    b1, b2 = _boxes(30, 3), _boxes(20, 4)
    torch.testing.assert_close(L.box_iou(b1, b2), tvo.box_iou(b1, b2))
    torch.testing.assert_close(
        L.box_iou(b1.float(), b2.float()), tvo.box_iou(b1.float(), b2.float())
    )


def test_box_iou_loss_iou_is_one_minus_diagonal_of_box_iou():
    b1, b2 = _boxes(30, 5), _boxes(30, 6)
    torch.testing.assert_close(
        L.box_iou_loss(b1, b2, reduction="none"), 1 - torch.diagonal(tvo.box_iou(b1, b2))
    )


def test_bce_and_cross_entropy_equal_torch():
    x, t = _binary(False, 13)
    _same(L.bce, torch.nn.functional.binary_cross_entropy_with_logits, x, t)
    pw = torch.tensor([2.0], dtype=torch.float64)
    _same(
        lambda a, b: L.bce(a, b, pos_weight=pw),
        lambda a, b: torch.nn.functional.binary_cross_entropy_with_logits(a, b, pos_weight=pw),
        x,
        t,
    )
    x, y = _multiclass(False, 14)
    y[0, 0] = 255
    w = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)
    for kwargs in (
        {},
        {"weight": w},
        {"label_smoothing": 0.1},
        {"weight": w, "label_smoothing": 0.2},
    ):
        _same(
            lambda a, b, k=kwargs: L.cross_entropy(a, b, ignore_index=255, **k),
            lambda a, b, k=kwargs: torch.nn.functional.cross_entropy(a, b, ignore_index=255, **k),
            x,
            y,
        )
    probs = torch.softmax(
        torch.randn(2, 4, 9, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(12)),
        1,
    )
    _same(L.cross_entropy, torch.nn.functional.cross_entropy, x, probs)


def test_dice_bce_equals_monai_dicece():
    x, t = _binary(True, 15)
    ref = monai_losses.DiceCELoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0, batch=True)
    _same(L.dice_bce_loss, ref, x, t)
    x, y = _multiclass(True, 16)
    ref = monai_losses.DiceCELoss(
        softmax=True, to_onehot_y=True, smooth_nr=1.0, smooth_dr=1.0, batch=True
    )
    _same(
        lambda a, b: L.dice_bce_loss(a, b, mode="multiclass"), lambda a, b: ref(a, b[:, None]), x, y
    )
