"""``task: detection`` end to end: fit writes a run whose val_map pycocotools reproduces from the
data set's own annotation file; eval/predict rebuild the detector from the checkpoint; resume is
exact; BatchNorm is recalibrated before validation; config keys are checked.

Tiny on purpose (6-8 images of 64 px, Faster R-CNN MobileNetV3 at 64 px, 1-2 epochs): each test
takes seconds on a CPU.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from strop.cli import main
from strop.data.shapes_detection import write_shapes_detection
from strop.train import config_from_dict, fit, load_checkpoint
from strop.train.detection_predict import load_detector_run, predict_detections
from strop.train.report import read_metrics

CLASSES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def det_root(tmp_path_factory):
    return write_shapes_detection(
        tmp_path_factory.mktemp("det"), n_train=6, n_val=4, size=64, seed=1
    )


def _config(root, out, **over):
    base = {
        "task": "detection",
        "data": {"root": str(root), "image_size": 64, "batch_size": 2, "num_workers": 0},
        "model": {"name": "fasterrcnn_mobilenet_v3_large_320_fpn"},
        "optimizer": {"name": "adam", "lr": 1e-3},
        "precision": "fp32",
        "device": "cpu",
        "epochs": 1,
        "seed": 0,
        "progress": False,
        "output": str(out),
    }
    for k, v in over.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return config_from_dict(base)


def _pixels(path):
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)


def _pycocotools_map(run_dir, root):
    """AP@[.5:.95] of the run's best.pt on root/val, by pycocotools against the set's own JSON."""
    gt = COCO(str(root / "val" / "annotations.json"))
    model, _, ck = load_detector_run(run_dir)
    ids = {c["name"]: c["id"] for c in gt.dataset["categories"]}
    dets = []
    with torch.no_grad():
        for img in gt.dataset["images"]:
            x = _pixels(root / "val" / "images" / img["file_name"]).float() / 255
            out = model([x])[0]
            for b, s, k in zip(
                out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist(), strict=True
            ):
                dets.append(
                    {
                        "image_id": img["id"],
                        "category_id": ids[ck["classes"][k - 1]],
                        "score": s,
                        "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                    }
                )
    ev = COCOeval(gt, gt.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats[0]


def test_fit_eval_predict(det_root, tmp_path, capsys):
    # score_threshold 0: an untrained detector keeps its (low-scoring) boxes, so AP is not 0
    res = fit(_config(det_root, tmp_path / "run", model={"score_threshold": 0.0}))
    run = res.run_dir
    epochs, steps = read_metrics(run / "metrics.csv")
    assert res.monitor == "val_map" and len(epochs) == 1 and "val_loss" not in epochs[0]
    # per step: the loss is the sum of torchvision's four parts (logged beside it)
    parts = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
    assert len(steps) == 3
    for s in steps:
        assert s["loss"] == pytest.approx(sum(s[p] for p in parts), rel=1e-5)
    ck = load_checkpoint(run / "checkpoints" / "best.pt")
    assert (ck["classes"], ck["num_classes"], ck["label_offset"]) == (CLASSES, 3, 1)
    capsys.readouterr()
    reference = _pycocotools_map(run, det_root)
    assert res.history[0]["val_map"] == pytest.approx(reference, abs=1e-6)

    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    table = capsys.readouterr().out
    assert f"AP @[IoU=0.50:0.95 | area=   all | maxDets=100] = {reference:.3f}" in table
    assert all(c in table for c in CLASSES)

    image = det_root / "val" / "images" / "0000.png"
    out, drawn = tmp_path / "preds.json", tmp_path / "drawn"
    assert (
        main(
            [
                "predict",
                str(run),
                str(image),
                "--score",
                "0",
                "--out",
                str(out),
                "--draw",
                str(drawn),
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())
    assert rows == predict_detections(run, [str(image)], score=0.0)
    assert (
        len(rows) == 1
        and len(rows[0]["boxes"]) == len(rows[0]["labels"]) == len(rows[0]["scores"]) > 0
    )
    assert set(rows[0]["labels"]) <= set(CLASSES) and rows[0]["scores"] == sorted(
        rows[0]["scores"], reverse=True
    )
    picture, original = _pixels(drawn / "0000.png"), _pixels(image)
    assert picture.shape == original.shape
    x1, y1 = (round(v) for v in rows[0]["boxes"][0][:2])  # the best box's top-left corner, red
    assert picture[:, y1, x1].tolist() == [255, 0, 0]
    assert (
        main(
            [
                "predict",
                str(run),
                str(image),
                "--format",
                "csv",
                "--score",
                "0.99",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert out.read_text().splitlines()[0] == "path,label,score,x1,y1,x2,y2"


def test_mid_epoch_resume_is_exact(det_root, tmp_path):
    # the detector resizes the 64-pixel images to 48: fewer anchors and proposals, a faster
    # step; exactness does not depend on the size
    small = {"image_size": 48}
    full = fit(_config(det_root, tmp_path / "full", epochs=2, data=small))

    class SigintAtBatch2:
        def on_batch_end(self, state, logs):
            if state.epoch == 1 and state.batch_in_epoch == 2:
                state.should_stop, state.interrupted = True, "SIGINT"

    part = _config(det_root, tmp_path / "part", epochs=2, data=small)
    assert fit(part, callbacks=[SigintAtBatch2()]).interrupted == "SIGINT"
    resumed = fit(part, resume=True)
    a = load_checkpoint(full.run_dir / "checkpoints" / "last.pt")["model"]
    # BatchNorm recalibrated before each validation: statistics reset, then the 3 batches of the
    # 6 training images; without it the counter holds the 6 training forwards of 2 epochs
    assert int(a["backbone.body.1.block.0.1.num_batches_tracked"]) == 3
    b = load_checkpoint(resumed.run_dir / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][
        :3
    ]
    assert resumed.history[-1]["val_map"] == full.history[-1]["val_map"]
    assert math.isfinite(full.history[-1]["train_loss"])


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"loss": "cross_entropy"}, "detection models compute their own losses"),
        ({"model": {"freeze": 2}}, "model.freeze for detection is null or 'backbone'; got 2"),
        ({"model": {"name": "resnet18"}}, "model.name must be one of .*got 'resnet18'"),
        ({"model": {"box_loss": "giou2"}}, "model.box_loss must be one of"),
        (
            {"data": {"augment": "crop"}},
            "data.augment for detection is one of none, flip, photometric, ssd; got 'crop'",
        ),
        ({"memory_format": "channels_last"}, "channels_last does not apply to detection"),
        (
            {"gradual_unfreeze": {"head_epochs": 1}},
            "gradual_unfreeze is not supported for detection",
        ),
        (
            {"task": "classification", "model": {"name": "resnet18", "box_loss": "giou"}},
            "model.box_loss applies to task: detection only; got task: classification",
        ),
        (
            {"task": "classification", "loss": "cross_entropy", "data": {"augment": "ssd"}},
            "data.augment 'ssd' is for task: detection",
        ),
    ],
)
def test_config_keys_are_checked(over, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        _config("x", tmp_path, **over)


def test_defaults_and_monitor(det_root, tmp_path):
    c = config_from_dict({"task": "detection", "data": {"root": str(det_root)}})
    assert (c.model.name, c.loss, c.monitor_metric, c.monitor_direction) == (
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        "none",
        "val_map",
        "max",
    )
    assert config_from_dict(c.to_dict()) == c  # what checkpoints store reloads
    with pytest.raises(ValueError, match="monitor 'val_loss' is not a metric this run logs"):
        fit(_config(det_root, tmp_path / "m", monitor="val_loss"))


@pytest.mark.parametrize(
    ("name", "over", "size"),
    [
        ("ssdlite320_mobilenet_v3_large", {}, 64),
        ("ssdlite320_mobilenet_v3_large", {"min_size": 96}, 96),
    ],
)
def test_ssd_runs_at_the_configured_size(name, over, size, det_root, tmp_path):
    """SSD's builders fix their input size (and refuse min_size / max_size): the config's size is
    set on the built transform, and a training step runs at that size."""
    from strop.train.detection_run import Detection, build_detection_parts

    config = _config(det_root, tmp_path, model={"name": name, **over})
    model, loss_fn, _ = build_detection_parts(config, 3)
    t = model.transform
    assert (t.min_size, t.max_size, t.fixed_size) == ((size,), size, (size, size))
    images, _ = t([torch.rand(3, 64, 48)])
    assert tuple(images.tensors.shape[-2:]) == (size, size)
    if name.startswith("ssdlite") and not over:
        task = Detection(3, CLASSES)
        target = {"boxes": torch.tensor([[4.0, 4, 40, 40]]), "labels": torch.tensor([1])}
        # two images: at 64 px SSDLite's last extra layers are 1x1, BatchNorm needs > 1 value
        batch = task.to_device(([torch.rand(3, 64, 64)] * 2, [target] * 2), "cpu")
        loss, _ = task.forward_loss(model.train(), loss_fn, batch, 0.0)
        assert math.isfinite(float(loss.detach())) and set(loss_fn.parts) == {
            "bbox_regression",
            "classification",
        }
