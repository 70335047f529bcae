"""Error messages, value-check switch, build/registry, and the pinned public API."""

from __future__ import annotations

import pytest
import torch

import strop.losses as L


def test_public_api_is_pinned():
    assert L.__all__ == [
        "LOSSES",
        "BCEWithLogitsLoss",
        "BoxIoULoss",
        "CombinedLoss",
        "CrossEntropyLoss",
        "DiceBCELoss",
        "DiceLoss",
        "FocalLoss",
        "JaccardLoss",
        "LovaszLoss",
        "MSELoss",
        "TverskyLoss",
        "batched_nms",
        "bce",
        "bce_loss",
        "box_iou",
        "box_iou_loss",
        "build",
        "cross_entropy",
        "cross_entropy_loss",
        "dice_bce_loss",
        "dice_loss",
        "focal_loss",
        "jaccard_loss",
        "lovasz_loss",
        "mse_loss",
        "nms",
        "set_value_checks",
        "tversky_loss",
        "value_checks",
        "value_checks_enabled",
    ]
    for name in L.__all__:
        obj = getattr(L, name)
        assert callable(obj) or name == "LOSSES", name
        if name != "LOSSES":
            assert obj.__module__.startswith("strop.losses."), (name, obj.__module__)


X4 = torch.zeros(2, 5, 8, 8)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (
            lambda: L.dice_loss(X4, torch.zeros(2, 1, 8, 8, dtype=torch.long), mode="multiclass"),
            ValueError,
            r"dice_loss: target must have shape \(N, \.\.\.\)=\(2, 8, 8\) .*got \(2, 1, 8, 8\)\. Hint: drop the channel",
        ),
        (
            lambda: L.dice_loss(X4, torch.zeros(2, 5, 8, 8), mode="multiclass"),
            ValueError,
            r"Hint: use mode='multilabel' for one-hot targets",
        ),
        (
            lambda: L.dice_loss(X4, torch.zeros(2, 8, 8), mode="multiclass"),
            TypeError,
            r"dice_loss: target must hold integer class ids .* got torch.float32",
        ),
        (
            lambda: L.dice_loss(X4, torch.full((2, 8, 8), 5), mode="multiclass"),
            ValueError,
            r"dice_loss: target class ids must lie in \[0, 4\]; got values in \[5, 5\]",
        ),
        (
            lambda: L.focal_loss(
                X4, torch.full((2, 8, 8), -1), mode="multiclass", ignore_index=255
            ),
            ValueError,
            r"focal_loss: target class ids \(other than ignore_index=255\) must lie in \[0, 4\]",
        ),
        (
            lambda: L.dice_loss(torch.zeros(2, 1, 4), torch.full((2, 1, 4), 2.0)),
            ValueError,
            r"dice_loss: target for mode='binary' must lie in \[0, 1\]; got values in \[2, 2\]",
        ),
        (
            lambda: L.focal_loss(torch.zeros(2, 1, 4), torch.full((2, 1, 4), float("nan"))),
            ValueError,
            r"focal_loss: target .* must lie in \[0, 1\].*\(8 NaN\)",
        ),
        (
            lambda: L.lovasz_loss(torch.zeros(2, 1, 4), torch.full((2, 1, 4), 0.5)),
            ValueError,
            r"lovasz_loss: target must be 0/1",
        ),
        (
            lambda: L.dice_loss(torch.zeros(2, 3, 4), torch.zeros(2, 4)),
            ValueError,
            r"dice_loss: target must have the shape of input \(2, 3, 4\) for mode='binary'; got \(2, 4\)\. "
            r"Hint: for C=3 classes with integer targets use mode='multiclass'",
        ),
        (
            lambda: L.jaccard_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5), mode="multilabel"),
            ValueError,
            r"jaccard_loss: target must have the shape of input",
        ),
        (
            lambda: L.dice_loss(torch.zeros(2, 1, 4), torch.zeros(2, 1, 4), mode="binaryy"),
            ValueError,
            r"dice_loss: mode must be one of .*; got 'binaryy'; did you mean 'binary'\?",
        ),
        (
            lambda: L.dice_loss(torch.zeros(2, 1, 4), torch.zeros(2, 1, 4), reduction="avg"),
            ValueError,
            r"dice_loss: reduction must be one of 'mean', 'sum', 'none'; got 'avg'",
        ),
        (
            lambda: L.focal_loss(torch.zeros(2, 1, 4), torch.zeros(2, 1, 4), reduction="batchmean"),
            ValueError,
            r"focal_loss: reduction must be one of",
        ),
        (
            lambda: L.dice_loss(torch.zeros(2, 1, 4, dtype=torch.long), torch.zeros(2, 1, 4)),
            TypeError,
            r"dice_loss: input must be a floating-point tensor; got torch.int64",
        ),
        (
            lambda: L.dice_loss([0.0, 1.0], torch.zeros(2)),
            TypeError,
            r"dice_loss: input must be a torch.Tensor; got list",
        ),
        (
            lambda: L.focal_loss(torch.zeros(2, 1), torch.zeros(2, 1), alpha=1.5),
            ValueError,
            r"focal_loss: alpha must lie in \[0, 1\]",
        ),
        (
            lambda: L.focal_loss(
                X4, torch.zeros(2, 8, 8, dtype=torch.long), mode="multiclass", alpha=[1, 2]
            ),
            ValueError,
            r"focal_loss: alpha must have one weight per class \(C=5\); got 2",
        ),
        (
            lambda: L.tversky_loss(torch.zeros(2, 1), torch.zeros(2, 1), gamma=0),
            ValueError,
            r"tversky_loss: gamma must be > 0; got 0",
        ),
        (
            lambda: L.dice_loss(torch.zeros(2, 1, 4), torch.zeros(2, 1, 4), smooth=-1),
            ValueError,
            r"dice_loss: smooth must be >= 0; got -1",
        ),
        (
            lambda: L.dice_loss(torch.zeros(2, 1, 4), torch.zeros(2, 1, 4), ignore_index=2.5),
            TypeError,
            r"dice_loss: ignore_index must be an int or None",
        ),
        (
            lambda: L.dice_loss(torch.zeros(2, 1, 4), torch.zeros(2, 1, 4), mode="multiclass"),
            ValueError,
            r"dice_loss: input must have C >= 2 channels for mode='multiclass'.*Hint: use mode='binary'",
        ),
        (
            lambda: L.box_iou(torch.tensor([[2.0, 0, 1, 1]]), torch.zeros(1, 4)),
            ValueError,
            r"box_iou: boxes1 must have finite coordinates with x1 <= x2 and y1 <= y2; got 1 box\(es\) .*index 0: "
            r"\[2\.0, 0\.0, 1\.0, 1\.0\]",
        ),
        (
            lambda: L.box_iou_loss(
                torch.zeros(3, 4), torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [0, 3, 1, 1.0]])
            ),
            ValueError,
            r"box_iou_loss: target must have finite coordinates .* index 2",
        ),
        (
            lambda: L.box_iou_loss(torch.zeros(3, 4), torch.zeros(2, 4)),
            ValueError,
            r"box_iou_loss: target must have the shape of pred \(3, 4\); got \(2, 4\)\. Hint: .*use box_iou",
        ),
        (
            lambda: L.box_iou_loss(torch.zeros(3, 5), torch.zeros(3, 5)),
            ValueError,
            r"box_iou_loss: pred must have shape \(\.\.\., 4\)",
        ),
        (
            lambda: L.box_iou_loss(torch.zeros(3, 4), torch.zeros(3, 4), kind="gio"),
            ValueError,
            r"box_iou_loss: kind must be one of .*did you mean 'giou'",
        ),
        (
            lambda: L.box_iou(torch.zeros(3, 4), torch.zeros(3, 4), denominator="max"),
            ValueError,
            r"box_iou: denominator must be one of 'union', 'min'; got 'max'",
        ),
        (
            lambda: L.mse_loss(torch.zeros(3), torch.zeros(3, 1)),
            ValueError,
            r"mse_loss: target must have the shape of input \(3,\); got \(3, 1\)",
        ),
        (
            lambda: L.mse_loss(torch.zeros(3), "abc"),
            TypeError,
            r"mse_loss: target must be a tensor or array-like",
        ),
        (
            lambda: L.cross_entropy(torch.zeros(2, 3), torch.tensor([0, 3])),
            ValueError,
            r"cross_entropy_loss: target class ids must lie in \[0, 2\]; got values in \[0, 3\]",
        ),
        (
            lambda: L.cross_entropy(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long)),
            ValueError,
            r"cross_entropy_loss: target must have shape \(N, \.\.\.\)=\(2,\)",
        ),
        (
            lambda: L.bce(torch.zeros(2, 3), torch.full((2, 3), -0.5)),
            ValueError,
            r"bce_loss: target .* must lie in \[0, 1\]",
        ),
    ],
)
def test_bad_input_raises_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_value_checks_can_be_switched_off():
    bad = torch.full((2, 1, 4), 2.0)
    assert L.value_checks_enabled()
    with L.value_checks(False):
        assert not L.value_checks_enabled()
        out = L.dice_loss(
            torch.zeros(2, 1, 4), bad
        )  # no sync, no check: the caller's responsibility
        assert torch.isfinite(out)
        # an inverted box is not refused: it has no intersection, so the IoU is torchvision's 0
        import torchvision

        out = L.box_iou(torch.tensor([[2.0, 0, 1, 1]]), torch.zeros(1, 4))
        ref = torchvision.ops.box_iou(torch.tensor([[2.0, 0, 1, 1]]), torch.zeros(1, 4))
        assert out.shape == (1, 1) and float(out) == float(ref) == 0.0
        # shape checks stay on
        with pytest.raises(ValueError, match="dice_loss: target must have the shape"):
            L.dice_loss(torch.zeros(2, 1, 4), torch.zeros(2, 1, 5))
    assert L.value_checks_enabled()
    previous = L.set_value_checks(False)
    assert previous is True
    assert L.set_value_checks(True) is False
    with pytest.raises(TypeError, match="set_value_checks: enabled must be a bool"):
        L.set_value_checks("no")


# --- build ---------------------------------------------------------------------------------------


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 1, 6, 6, generator=g), (torch.rand(2, 1, 6, 6, generator=g) > 0.5).float()


def test_build_single_names_and_aliases():
    x, t = _data()
    assert isinstance(L.build("dice"), L.DiceLoss)
    assert isinstance(L.build("Dice-Loss"), L.DiceLoss)
    assert isinstance(L.build("ce"), L.CrossEntropyLoss)
    torch.testing.assert_close(L.build("focal")(x, t), L.focal_loss(x, t))
    torch.testing.assert_close(
        L.build({"name": "focal", "gamma": 1.0})(x, t), L.focal_loss(x, t, gamma=1.0)
    )
    assert not getattr(L.build("dice"), "parts", {})
    assert set(L.LOSSES.names()) == {
        "bce",
        "box_iou",
        "cross_entropy",
        "dice",
        "dice_bce",
        "focal",
        "jaccard",
        "lovasz",
        "mse",
        "tversky",
    }


def test_every_loss_function_is_named_loss_and_the_earlier_names_stay():
    import torch.nn.functional as F

    x, t = _data()
    assert L.bce is L.bce_loss and L.cross_entropy is L.cross_entropy_loss
    torch.testing.assert_close(L.bce_loss(x, t), F.binary_cross_entropy_with_logits(x, t))
    logits, ids = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
    torch.testing.assert_close(L.cross_entropy_loss(logits, ids), F.cross_entropy(logits, ids))
    for name in ("bce", "bce_loss", "binary_cross_entropy"):
        assert isinstance(L.build(name), L.BCEWithLogitsLoss), name
        assert L.LOSSES.canonical(name) == "bce"  # run.json and the loss_bce column keep their name
    for name in ("cross_entropy", "cross_entropy_loss", "ce"):
        assert L.LOSSES.canonical(name) == "cross_entropy", name


def test_build_combined_reports_parts():
    x, t = _data()
    loss = L.build("dice+bce")
    assert isinstance(loss, L.CombinedLoss)
    total = loss(x, t)
    assert set(loss.parts) == {"dice", "bce"}
    assert all(not p.requires_grad for p in loss.parts.values())
    torch.testing.assert_close(total, L.dice_loss(x, t) + L.bce(x, t))
    torch.testing.assert_close(loss.parts["dice"], L.dice_loss(x, t))

    weighted = L.build({"dice": {"weight": 2.0, "smooth": 0}, "focal": 0.5})
    x.requires_grad_()
    out = weighted(x, t)
    torch.testing.assert_close(out, 2 * L.dice_loss(x, t, smooth=0) + 0.5 * L.focal_loss(x, t))
    torch.testing.assert_close(weighted.parts["dice"], L.dice_loss(x, t, smooth=0))  # unweighted
    out.backward()  # differentiable end to end


def test_build_defaults_fill_accepting_parts_only():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 5, 5, generator=g)
    y = torch.randint(0, 3, (2, 5, 5), generator=g)
    y[0, 0] = 255
    loss = L.build("dice+cross_entropy", mode="multiclass", ignore_index=255)
    expected = L.dice_loss(x, y, mode="multiclass", ignore_index=255) + L.cross_entropy(
        x, y, ignore_index=255
    )
    torch.testing.assert_close(loss(x, y), expected)
    explicit = L.build({"name": "dice", "smooth": 0.0}, smooth=5.0)
    assert explicit.options["smooth"] == 0.0  # explicit options win


@pytest.mark.parametrize(
    ("spec", "exc", "match"),
    [
        ("dise", ValueError, r"unknown loss 'dise'; did you mean 'dice'\? available: bce, box_iou"),
        (
            {"name": "dice", "smoth": 0},
            ValueError,
            r"build: unknown option 'smoth' for loss 'dice'; did you mean 'smooth'",
        ),
        ({"dice": -1.0}, ValueError, r"build: weight of 'dice' must be >= 0"),
        ({"dice": "heavy"}, TypeError, r"build: weight of 'dice' must be a number"),
        ("dice+dice_loss", ValueError, r"build: loss 'dice' appears twice"),
        ("dice+", ValueError, r"build: empty loss name"),
        ({"name": "dice+bce", "smooth": 0}, ValueError, r"ambiguous for the combined loss"),
        ({}, ValueError, r"build: spec mapping is empty"),
        (3, TypeError, r"build: spec must be a loss name"),
        (
            {"name": "focal", "mode": "multiclas"},
            ValueError,
            r"FocalLoss: mode must be one of .*did you mean 'multiclass'",
        ),
        ({"name": "dice", "reduction": "avg"}, ValueError, r"DiceLoss: reduction must be one of"),
    ],
)
def test_build_errors(spec, exc, match):
    with pytest.raises(exc, match=match):
        L.build(spec)


def test_build_passes_modules_through():
    m = torch.nn.MSELoss()
    assert L.build(m) is m
