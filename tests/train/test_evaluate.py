"""``evaluate``: eval mode, restored afterwards, and metrics equal to hand computations.

The call goes through ``_train_seams.run_evaluate`` (re-point it there when evaluate's signature
changes).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _train_seams import run_evaluate


def _net(num_classes=3):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(4, num_classes),
    )
    with (
        torch.no_grad()
    ):  # running stats far from any batch's, so train-mode BN changes the outputs
        net[1].running_mean.fill_(0.7)
        net[1].running_var.fill_(3.0)
    return net


def _batches(num_classes, sizes=(5, 5, 3)):
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, num_classes, (n,), generator=g))
        for n in sizes
    ]


@pytest.mark.parametrize("num_classes", [3, 7])  # 7 classes: top-5 is reported too
def test_classification_metrics_equal_eval_mode_by_hand(num_classes):
    # caught by: evaluate in train mode (batch statistics, dropout on), running stats updated by
    # validation, an unweighted mean over batches of unequal size, top-5 counted wrongly
    net = _net(num_classes)
    batches = _batches(num_classes)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    got = run_evaluate(
        net, F.cross_entropy, batches, task="classification", num_classes=num_classes
    )
    assert net.training  # restored
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm running stats and counters untouched

    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    net.eval()
    with torch.no_grad():
        logits = net(x)
    expected = {
        "val_loss": F.cross_entropy(logits, y).item(),
        "val_accuracy": (logits.argmax(1) == y).double().mean().item(),
    }
    if num_classes > 5:
        top5 = logits.topk(5, dim=1).indices
        expected["val_top5"] = (top5 == y[:, None]).any(1).double().mean().item()
    assert set(got) == set(expected)
    for k in expected:
        assert got[k] == pytest.approx(expected[k], rel=1e-6, abs=1e-12), k


def test_eval_mode_model_stays_in_eval_mode():
    net = _net().eval()
    run_evaluate(net, F.cross_entropy, _batches(3), task="classification", num_classes=3)
    assert not net.training and not any(m.training for m in net.modules())


def _const_loss(output, target):
    return output.float().sum() * 0 + 0.25


def test_segmentation_dice_iou_from_a_hand_made_confusion_matrix():
    # caught by: background averaged in, IoU/Dice formula slips, ignored pixels counted,
    # absent classes averaged in as 0 or 1
    target = torch.tensor([[[0, 0, 1, 1, 255], [2, 2, 1, 2, 255]]])
    pred = torch.tensor([[[0, 1, 1, 1, 1], [2, 0, 0, 1, 2]]])
    # valid (target, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (1,0) (2,1)
    # class 1: TP 2, FP 2, FN 1 -> Dice 4/7, IoU 2/5;  class 2: TP 1, FP 0, FN 2 -> Dice 1/2, IoU 1/3
    # class 3 never occurs (excluded); class 0 is background (excluded); pixel accuracy 4/8
    logits = F.one_hot(pred, 4).permute(0, 3, 1, 2).float() * 5.0
    got = run_evaluate(
        nn.Identity(), _const_loss, [(logits, target)], task="segmentation", num_classes=4
    )
    assert got["val_dice"] == pytest.approx((4 / 7 + 1 / 2) / 2)
    assert got["val_iou"] == pytest.approx((2 / 5 + 1 / 3) / 2)
    assert got["val_pixel_accuracy"] == pytest.approx(4 / 8)
    assert got["val_loss"] == pytest.approx(0.25)


def test_binary_segmentation_thresholds_one_logit_at_zero():
    target = torch.tensor([[[1, 1, 0, 0]]])
    logits = torch.tensor([[[[2.0, -1.0, 3.0, -2.0]]]])  # pred 1 0 1 0: TP 1, FP 1, FN 1
    got = run_evaluate(
        nn.Identity(), _const_loss, [(logits, target)], task="segmentation", num_classes=2
    )
    assert (got["val_dice"], got["val_iou"], got["val_pixel_accuracy"]) == pytest.approx(
        (0.5, 1 / 3, 0.5)
    )
