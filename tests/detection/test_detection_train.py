"""The detection task trains: loss falls and COCO mAP rises on tiny bundled images; metrics
equal pycocotools run by hand; bf16 autocast runs; the task's label offset round-trips."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from strop.data.detection import DetectionDataset, detection_collate, detection_folder
from strop.data.shapes_detection import write_shapes_detection
from strop.finetune.detection import build_detector
from strop.precision import MixedPrecision, resolve
from strop.train.detection import DetectionTask, evaluate_detection, train_one_epoch, update_bn

CLASSES = ["circle", "square", "triangle"]


def _pycocotools(preds, truths, num_classes):
    """COCO AP@[.5:.95], AP@.5, AP@.75 and per-class AP straight from pycocotools' COCOeval."""
    images, anns, dets = [], [], []
    for i, (p, t) in enumerate(zip(preds, truths, strict=True)):
        images.append({"id": i, "height": 100, "width": 100})
        for b, c in zip(t["boxes"].tolist(), t["labels"].tolist(), strict=True):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": c,
                    "iscrowd": 0,
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                    "area": (b[2] - b[0]) * (b[3] - b[1]),
                }
            )
        for b, s, c in zip(
            p["boxes"].tolist(), p["scores"].tolist(), p["labels"].tolist(), strict=True
        ):
            dets.append(
                {
                    "image_id": i,
                    "category_id": c,
                    "score": s,
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                }
            )
    gt = COCO()
    gt.dataset = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": k} for k in range(num_classes)],
    }
    gt.createIndex()
    ev = COCOeval(gt, gt.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    precision = ev.eval["precision"][:, :, :, 0, 2]  # T, R, K at area=all, maxDets=100
    per_class = []
    for k in range(num_classes):
        p = precision[:, :, k]
        per_class.append(float(np.mean(p[p > -1])) if (p > -1).any() else -1.0)
    return ev.stats, per_class


def test_metrics_equal_pycocotools_on_a_fixed_case(capsys):
    model = build_detector("retinanet_resnet50_fpn", num_classes=3, min_size=64, max_size=64)
    task = DetectionTask(model, CLASSES)
    truths = [
        {
            "boxes": torch.tensor([[10.0, 10, 50, 50], [60, 60, 90, 95]]),
            "labels": torch.tensor([0, 1]),
        },
        {"boxes": torch.tensor([[5.0, 5, 30, 40]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # a negative
    ]
    preds = [
        {
            "boxes": torch.tensor([[12.0, 8, 52, 49], [61, 58, 88, 96], [0, 0, 20, 20]]),
            "scores": torch.tensor([0.9, 0.6, 0.7]),
            "labels": torch.tensor([0, 1, 1]),
        },
        {
            "boxes": torch.tensor([[4.0, 9, 33, 38], [5, 5, 30, 40]]),
            "scores": torch.tensor([0.8, 0.3]),
            "labels": torch.tensor([2, 0]),
        },
        {
            "boxes": torch.tensor([[40.0, 40, 60, 60]]),
            "scores": torch.tensor([0.5]),
            "labels": torch.tensor([2]),
        },
    ]
    metric = task.metrics()
    metric.update(
        preds, [dict(t, iscrowd=torch.zeros(len(t["labels"]), dtype=torch.int64)) for t in truths]
    )
    ours = task.compute(metric)
    stats, per_class = _pycocotools(preds, truths, 3)
    capsys.readouterr()  # pycocotools prints its table
    assert ours["val_map"] == pytest.approx(stats[0]) and ours["val_map_50"] == pytest.approx(
        stats[1]
    )
    assert ours["val_map_75"] == pytest.approx(stats[2]) and ours["val_mar_100"] == pytest.approx(
        stats[8]
    )
    assert 0 < stats[0] < 1 and stats[1] > stats[0]
    for k, c in enumerate(CLASSES):
        assert ours[f"val_ap_{c}"] == pytest.approx(per_class[k])
    assert math.isnan(ours["val_map_large"]) == (stats[5] < 0)
    assert set(ours) == set(task.metric_names)


@pytest.mark.parametrize(
    ("name", "offset"), [("fasterrcnn_mobilenet_v3_large_320_fpn", 1), ("fcos_resnet50_fpn", 0)]
)
def test_label_offset_round_trips(name, offset):
    model = build_detector(name, num_classes=3, min_size=64, max_size=64)
    task = DetectionTask(model, CLASSES)
    batch = (
        [torch.rand(3, 64, 64)],
        [
            {
                "boxes": torch.tensor([[1.0, 2, 30, 40]]),
                "labels": torch.tensor([2]),
                "iscrowd": torch.tensor([0]),
            }
        ],
    )
    images, targets = task.to_device(batch, "cpu")
    assert targets[0]["labels"].tolist() == [2 + offset]
    metric = task.metrics()
    preds = task.update(metric, model.eval(), images, targets)
    assert all(((p["labels"] >= 0) & (p["labels"] < 3)).all() for p in preds)
    with pytest.raises(ValueError, match="classes has 2 names but the model was built for 3"):
        DetectionTask(model, CLASSES[:2])
    with pytest.raises(ValueError, match=r"DetectionTask\.loss: the model is in eval mode"):
        task.loss(model.eval(), images, targets)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = write_shapes_detection(tmp_path_factory.mktemp("shapes"), n_train=12, n_val=4, size=64)
    train, _, classes = detection_folder(root)
    records = [r for r in train if r.boxes][:4]
    ds = DetectionDataset(records, classes)
    return detection_collate([ds[i] for i in range(len(ds))]), records


@pytest.mark.slow
def test_ssdlite_learns_the_shapes(shapes):
    """15 Adam steps on 4 images of 64 px: loss falls and mAP@.5 on those images rises from ~0 to
    > 0.5 (about 3 s of CPU; 40 steps at 96 px took 276 s under load in phase 1).

    The bound is independent of strop's metric code: the untrained model's mAP, from pycocotools.
    """
    batch, _ = shapes
    torch.manual_seed(0)
    model = build_detector("ssdlite320_mobilenet_v3_large", num_classes=3, score_thresh=0.0)
    # 64-pixel images stay 64 pixels (SSDLite's builder fixes 320; its anchors are relative)
    model.transform.min_size, model.transform.max_size, model.transform.fixed_size = (
        (64,),
        64,
        (64, 64),
    )
    task = DetectionTask(model, CLASSES)
    images, targets = task.to_device(batch, "cpu")
    with torch.no_grad():
        before = [dict(p) for p in task.update(task.metrics(), model.eval(), images, targets)]
    truths = [{"boxes": t["boxes"], "labels": t["labels"] - 1} for t in targets]
    bound = _pycocotools(before, truths, 3)[0][1]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = [train_one_epoch(model, [batch], optimizer, task)["train_loss"] for _ in range(15)]
    assert np.mean(losses[-5:]) < 0.2 * losses[0]
    assert update_bn(model, [batch], task) > 0
    after = evaluate_detection(model, [batch], task)
    assert bound < 0.05 and after["val_map_50"] > bound + 0.5, (bound, after)


@pytest.mark.slow
def test_faster_rcnn_loss_falls_and_bf16_autocast_runs(shapes):
    batch, _ = shapes
    torch.manual_seed(0)
    model = build_detector(
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        num_classes=3,
        min_size=64,
        max_size=64,
        rpn_batch_size_per_image=32,
        box_batch_size_per_image=32,
        rpn_pre_nms_top_n_train=200,
        rpn_post_nms_top_n_train=50,
    )
    task = DetectionTask(model, CLASSES)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = train_one_epoch(model, [batch], optimizer, task)
    assert set(first) >= {
        "train_loss",
        "train_loss_classifier",
        "train_loss_box_reg",
        "train_loss_objectness",
        "train_loss_rpn_box_reg",
    }
    assert first["train_loss"] == pytest.approx(
        sum(v for k, v in first.items() if k.startswith("train_loss_"))
    )
    losses = [train_one_epoch(model, [batch], optimizer, task)["train_loss"] for _ in range(10)]
    assert np.mean(losses[-3:]) < 0.6 * first["train_loss"]
    bf16 = MixedPrecision(resolve("bf16", "cpu"))
    reference = copy.deepcopy(model)
    out = train_one_epoch(model, [batch], optimizer, task, amp=bf16, clip_grad_norm=1.0)
    assert math.isfinite(out["train_loss"])
    assert any(
        not torch.equal(a, b)
        for a, b in zip(model.parameters(), reference.parameters(), strict=True)
    )
    metrics = evaluate_detection(model, [batch], task, amp=bf16)
    assert 0 <= metrics["val_map"] <= 1
