"""TTA equals the mean of the flipped (and rescaled) predictions computed by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from strop.train.tta import tta_predict


def _classifier():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()


class _Seg(nn.Module):
    # a position-dependent segmenter (a flip changes its output), with torchvision's dict output
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        ramp = torch.linspace(0, 1, x.shape[-1]).expand_as(x[:, :1])
        return {"out": self.conv(x) + 2 * ramp}


X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def test_classification_flip_tta_is_the_mean_of_both_softmaxes():
    m = _classifier()
    expected = (m(X).softmax(1) + m(X.flip(-1)).softmax(1)) / 2
    torch.testing.assert_close(tta_predict(m, X), expected)
    assert not torch.allclose(expected, m(X).softmax(1))  # the flip made a difference


def test_two_flips_and_sigmoid():
    m = _classifier()
    expected = (m(X).sigmoid() + m(X.flip(-1)).sigmoid() + m(X.flip(-2)).sigmoid()) / 3
    torch.testing.assert_close(
        tta_predict(m, X, flips=("horizontal", "vertical"), activation="sigmoid"), expected
    )


def test_segmentation_predictions_are_flipped_back_before_averaging():
    m = _Seg().eval()
    with torch.no_grad():
        a = m(X)["out"].softmax(1)
        b = m(X.flip(-1))["out"].softmax(1).flip(-1)
    torch.testing.assert_close(tta_predict(m, X), (a + b) / 2)


def test_multi_scale_resizes_back():
    m = _Seg().eval()
    with torch.no_grad():
        views = []
        for s in (1.0, 1.5):
            xs = (
                X
                if s == 1
                else F.interpolate(X, scale_factor=s, mode="bilinear", align_corners=False)
            )
            for flip in (False, True):
                p = m(xs.flip(-1) if flip else xs)["out"].softmax(1)
                p = p.flip(-1) if flip else p
                views.append(F.interpolate(p, size=(8, 8), mode="bilinear", align_corners=False))
    got = tta_predict(m, X, scales=(1.0, 1.5))
    assert got.shape == (2, 3, 8, 8)
    torch.testing.assert_close(got, torch.stack(views).mean(0))


def test_no_flip_no_scale_is_plain_softmax():
    m = _classifier()
    torch.testing.assert_close(tta_predict(m, X, flips=()), m(X).softmax(1).detach())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"flips": ("diagonal",)}, "flips must be one of"),
        ({"scales": (0.0,)}, "scales must be positive numbers"),
        ({"activation": "relu"}, "activation must be one of"),
        ({"scales": (1.0, 0.5)}, r"scales=\[1.0, 0.5\] need a dense \(N, C, H, W\) output"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match="tta_predict: " + match):
        tta_predict(_classifier(), X, **kwargs)
