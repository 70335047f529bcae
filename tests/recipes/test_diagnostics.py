"""Diagnostics: counts and labels against hand-computed values and scikit-learn (not pixels)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, jaccard_score

from strop.train.diagnostics import (
    classification_table,
    pixel_confusion,
    plot_confusion_matrix,
    plot_segmentation_grid,
    plot_top_losses,
    segmentation_table,
    top_losses,
    write_table,
)

NAMES = ["cat", "dog", "fox"]
Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2]
Y_PRED = [0, 0, 1, 1, 2, 2, 2, 2, 0]


def test_confusion_matrix_cells_and_labels(tmp_path):
    fig = plot_confusion_matrix(Y_TRUE, Y_PRED, NAMES, tmp_path / "cm.png")
    ax = fig.axes[0]
    cells = {
        (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts
    }
    # by hand: row = true, column = predicted
    expected = {
        (0, 0): "2",
        (0, 1): "1",
        (0, 2): "0",
        (1, 0): "0",
        (1, 1): "1",
        (1, 2): "1",
        (2, 0): "1",
        (2, 1): "0",
        (2, 2): "3",
    }
    assert cells == expected
    assert [t.get_text() for t in ax.get_xticklabels()] == NAMES
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"
    assert (tmp_path / "cm.png").stat().st_size > 0


def test_classification_table_matches_hand_computed_precision_recall(tmp_path):
    rows = {r["class"]: r for r in classification_table(Y_TRUE, Y_PRED, NAMES)}
    # cat: TP 2, predicted 3, actual 3; dog: TP 1, predicted 2, actual 2; fox: TP 3, predicted 4, actual 4
    assert rows["cat"]["precision"] == pytest.approx(2 / 3) and rows["cat"][
        "recall"
    ] == pytest.approx(2 / 3)
    assert rows["dog"]["precision"] == pytest.approx(1 / 2) and rows["dog"]["support"] == 2
    assert rows["fox"]["f1"] == pytest.approx(3 / 4)
    assert rows["accuracy"]["f1"] == pytest.approx(6 / 9)
    assert rows["macro avg"]["recall"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)
    with (write_table(list(rows.values()), tmp_path / "r.csv")).open() as fh:
        table = list(csv.DictReader(fh))
    assert [r["class"] for r in table] == [*NAMES, "accuracy", "macro avg", "weighted avg"]
    assert table[0]["precision"] == "0.6667"
    md = write_table(list(rows.values()), tmp_path / "r.md").read_text().splitlines()
    assert md[0] == "| class | precision | recall | f1 | support |" and len(md) == 2 + 6


def test_top_losses_are_the_largest_cross_entropies_in_order():
    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0], [1.0, 0.0], [0.0, 0.2]])
    targets = torch.tensor([1, 1, 1, 0])
    idx, losses = top_losses(logits, targets, 2)
    by_hand = [-torch.log_softmax(logits[i], 0)[targets[i]].item() for i in range(4)]
    order = sorted(range(4), key=lambda i: -by_hand[i])
    assert idx.tolist() == order[:2]
    torch.testing.assert_close(losses, torch.tensor([by_hand[i] for i in order[:2]]))


def test_top_losses_grid_titles_name_prediction_actual_loss_probability(tmp_path):
    images = torch.zeros(4, 3, 8, 8)
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0], [2.0, 0.0, 0.0]])
    targets = torch.tensor([0, 2, 2, 1])
    fig = plot_top_losses(images, logits, targets, NAMES, tmp_path / "top.png", k=2, ncols=2)
    titles = [t.get_text() for ax in fig.axes for t in ax.texts]  # one caption per tile
    p = torch.tensor([3.0, 0, 0]).softmax(0)[0].item()
    loss_dog = -torch.log_softmax(torch.tensor([0.0, 3.0, 0.0]), 0)[2].item()
    assert titles[0] == f"dog / fox / {loss_dog:.2f} / {p:.2f}"  # sample 1, the largest loss
    assert titles[1].startswith("cat / dog / ")  # then sample 3
    assert len(titles) == 2 and (tmp_path / "top.png").exists()


def test_segmentation_iou_dice_match_scikit_learn():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (2, 6, 6), generator=g)
    pred = torch.where(
        torch.rand(2, 6, 6, generator=g) < 0.7, target, torch.randint(0, 3, (2, 6, 6), generator=g)
    )
    target[0, 0, :3] = 255  # ignored pixels
    cm = pixel_confusion(pred, target, 3)
    keep = (target != 255).flatten()
    t, p = target.flatten()[keep].numpy(), pred.flatten()[keep].numpy()
    assert cm.sum() == keep.sum()
    rows = segmentation_table(cm, NAMES)
    iou = jaccard_score(t, p, labels=[0, 1, 2], average=None)
    dice = f1_score(t, p, labels=[0, 1, 2], average=None)
    for c in range(3):
        assert rows[c]["iou"] == pytest.approx(iou[c]) and rows[c]["dice"] == pytest.approx(dice[c])
    assert rows[3]["class"] == "mean" and rows[3]["iou"] == pytest.approx(np.mean(iou))


def test_absent_class_is_undefined_not_zero():
    cm = pixel_confusion(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]), 3)
    rows = segmentation_table(cm, NAMES)
    assert rows[2]["iou"] is None and rows[3]["iou"] == 1.0


def test_segmentation_grid_has_image_target_prediction_per_row(tmp_path):
    images = torch.zeros(2, 3, 6, 6)
    masks = torch.zeros(2, 6, 6, dtype=torch.long)
    masks[:, :3] = 1
    masks[0, 0, 0] = 255
    fig = plot_segmentation_grid(
        images,
        masks,
        masks.clamp(max=2),
        NAMES,
        tmp_path / "seg.png",
        mean=(0, 0, 0),
        std=(1, 1, 1),
    )
    assert len(fig.axes) == 6
    assert [ax.get_title() for ax in fig.axes[:3]] == ["image", "target", "prediction"]
    shown = fig.axes[1].images[0].get_array()
    assert np.allclose(shown[0, 0], 0) and not np.allclose(
        shown[1, 0], 0
    )  # ignored pixel uncoloured


def test_bad_input_names_the_argument():
    with pytest.raises(
        ValueError, match="plot_confusion_matrix: y_true and y_pred must have the same length"
    ):
        plot_confusion_matrix([0, 1], [0], NAMES)
    with pytest.raises(ValueError, match=r"write_table: path must end in \.csv or \.md"):
        write_table([{"a": 1}], "x.txt")
    with pytest.raises(
        ValueError, match="pixel_confusion: pred and target must have the same shape"
    ):
        pixel_confusion(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3), 2)
