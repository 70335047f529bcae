"""The tutorial's own ``__main__`` examples, run with strop, give the corrected definitions' numbers.

The tutorial's functions are reproduced here verbatim (as test oracles) to show where strop agrees
and where, and by how much, it corrects them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import strop.losses as L


def tutorial_mse(target, output):
    if not isinstance(target, torch.Tensor) or not isinstance(output, torch.Tensor):
        target = torch.tensor(target)
        output = torch.tensor(output)
    return ((output - target) ** 2).sum().mean()


def tutorial_dice(inputs, targets, smooth=1):
    inputs = torch.sigmoid(inputs).view(-1)
    targets = targets.view(-1)
    intersection = (inputs * targets).sum()
    return 1 - (2.0 * intersection + smooth) / (inputs.sum() + targets.sum() + smooth)


def tutorial_focal(inputs, targets, alpha=0.8, gamma=0.2):
    inputs = torch.sigmoid(inputs).view(-1)
    bce = F.binary_cross_entropy(inputs, targets.view(-1), reduction="mean")
    return alpha * (1 - torch.exp(-bce)) ** gamma * bce


def test_mse_is_the_mean_not_the_sum():
    torch.manual_seed(0)
    target, output = torch.randn(20), torch.randn(20)
    ours = L.MSELoss()(output, target)
    torch.testing.assert_close(ours * 20, tutorial_mse(target, output))
    torch.testing.assert_close(ours, ((output - target) ** 2).mean())
    # array-likes, as the tutorial accepted
    torch.testing.assert_close(L.mse_loss(output.tolist(), target.tolist()), ours)
    assert math.isclose(L.mse_loss([1, 2, 3], [1, 2, 5]).item(), 4 / 3, rel_tol=1e-7)


def test_dice_on_ones_vs_zeros_matches_the_tutorial():
    inputs, targets = torch.ones(224, 224), torch.zeros(224, 224)
    ours = L.DiceLoss()(inputs, targets)
    expected = 1 - 1 / (224 * 224 * (1 / (1 + math.exp(-1))) + 1)  # 1 - smooth / (Σσ(1) + smooth)
    assert math.isclose(ours.item(), expected, rel_tol=1e-6)
    torch.testing.assert_close(ours, tutorial_dice(inputs, targets))


def test_dice_bce_on_ones_vs_zeros_is_bce_with_logits_plus_dice():
    inputs, targets = torch.ones(224, 224), torch.zeros(224, 224)
    ours = L.DiceBCELoss()(inputs, targets)
    bce = math.log(1 + math.e)  # -log(1 - σ(1)) = softplus(1)
    dice = 1 - 1 / (224 * 224 / (1 + math.exp(-1)) + 1)
    assert math.isclose(ours.item(), bce + dice, rel_tol=1e-6)
    # and it runs under autocast, returning float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = L.DiceBCELoss()(inputs.bfloat16(), targets)
    assert amp.dtype == torch.float32
    assert math.isclose(amp.item(), bce + dice, rel_tol=1e-3)


def test_focal_is_per_element_not_focal_of_the_mean():
    inputs, targets = torch.ones(224, 224), torch.zeros(224, 224)
    p = 1 / (1 + math.exp(-1))
    # per element with the tutorial's alpha=0.8, gamma=0.2: α_t = 1-α for t=0, 1-p_t = p
    ours = L.FocalLoss(alpha=0.8, gamma=0.2)(inputs, targets)
    assert math.isclose(ours.item(), 0.2 * p**0.2 * math.log(1 + math.e), rel_tol=1e-6)
    # strop's defaults (alpha=0.25, gamma=2, as torchvision)
    default = L.FocalLoss()(inputs, targets)
    assert math.isclose(default.item(), 0.75 * p**2 * math.log(1 + math.e), rel_tol=1e-6)
    # the tutorial's focal-of-the-mean gives a different number
    assert abs(tutorial_focal(inputs, targets).item() - ours.item()) > 0.5


def test_iou_example_with_and_without_is_min():
    a = torch.tensor([1, 1, 11, 11])
    bs = torch.tensor([[1, 1, 10, 10], [11, 11, 20, 20]])
    iou = L.box_iou(a[None], bs)
    assert iou.shape == (1, 2)
    torch.testing.assert_close(iou, torch.tensor([[81 / 100, 0.0]]))  # no smooth=1 added
    torch.testing.assert_close(
        L.box_iou(a[None], bs, denominator="min"), torch.tensor([[1.0, 0.0]])
    )
    # the tutorial's "loss" returned the IoU; strop's loss is 1 - IoU, element-wise
    loss = L.BoxIoULoss(reduction="none")(a[None].expand(2, 4), bs)
    torch.testing.assert_close(loss, torch.tensor([1 - 0.81, 1.0]))
