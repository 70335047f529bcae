"""Detection under ``torchrun`` (2 processes, gloo, CPU): one data-parallel run equals one process
with the global batch, weight for weight; validation (COCO mAP) is gathered across ranks.

The helpers (the launch with a timeout, the worker script, the weight comparison) are those of
``tests/train/test_distributed.py``, loaded from that file.

Which detector: ``retinanet_resnet50_fpn`` built from a weights file. With weights torchvision
swaps the backbone's BatchNorm for ``FrozenBatchNorm2d``; v1's FPN and heads have no norm layer,
and RetinaNet's losses are per image (focal sum / that image's foreground anchors, then the mean
over images) with no random sampling, so the mean over 2 ranks of 2 images each *is* the mean
over 4 images. Faster R-CNN does not have that property: its RPN and ROI heads draw a random
sample of anchors / proposals per image (each rank from its own RNG stream) and normalise the
loss over the batch's whole sample; SSD divides by the batch's foreground count. Both train under
DDP (``tests/train`` covers the mechanics), but not to the one-process weights by construction.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _load_distributed_helpers():
    path = ROOT / "tests" / "train" / "test_distributed.py"
    spec = importlib.util.spec_from_file_location("strop_distributed_helpers", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


dist = _load_distributed_helpers()

STEPS = 4  # 2 epochs × 8 training images / global batch 4
# same bound as tests/train: the gradient is averaged in another order across world sizes
ACROSS_WORLD_ATOL = dist.ACROSS_WORLD_ATOL


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from torchvision.models.detection import retinanet_resnet50_fpn

    from strop.data.shapes_detection import write_shapes_detection

    base = tmp_path_factory.mktemp("det_ddp")
    root = write_shapes_detection(base / "data", n_train=8, n_val=4, size=64, seed=3)
    torch.manual_seed(0)
    source = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
    weights = base / "retinanet.pth"
    torch.save(source.state_dict(), weights)
    return base, root, weights


def _config(root: Path, weights: Path, out: Path, **over) -> dict:
    cfg = {
        "task": "detection",
        # augment none: a random flip would draw from each rank's own RNG
        "data": {
            "root": str(root),
            "image_size": 64,
            "batch_size": 4,
            "augment": "none",
            "num_workers": 0,
        },
        "model": {
            "name": "retinanet_resnet50_fpn",
            "weights": str(weights),
            "trainable_backbone_layers": 0,
            "score_threshold": 0.0,
        },
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        "precision": "fp32",
        "device": "cpu",
        "epochs": 2,
        "seed": 0,
        "progress": False,
        "output": str(out),
    }
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return cfg


@pytest.mark.slow
def test_two_processes_train_the_one_process_global_batch_weights(setup):
    import json

    base, root, weights = setup
    run = base / "ddp"
    rc, out, _ = dist._run_driver(
        [{"config": _config(root, weights, run), "report": str(base / "r.json")}], base
    )
    assert rc == 0, out[-4000:]
    choices = json.loads((run / "run.json").read_text())
    assert (choices["world_size"], choices["backend"], choices["per_process_batch"]) == (
        2,
        "gloo",
        2,
    )
    assert dist._load(run)["state"]["step"] == STEPS

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = dist._fit_here(_config(root, weights, base / "b4"))
        dist._fit_here(_config(root, weights, base / "b2", data={"batch_size": 2}))
    finally:
        torch.set_num_threads(threads)
    w2, w1 = dist._weights(run), dist._weights(base / "b4")
    assert dist._max_diff(w2, w1) < ACROSS_WORLD_ATOL
    # the bound can fail: training moved the weights, and another global batch lands far away
    assert dist._max_diff(w1, dist._weights(base / "b2")) > 100 * ACROSS_WORLD_ATOL
    source = torch.load(weights, weights_only=True)
    assert (
        max(float((w1[k] - source[k]).abs().max()) for k in w1 if k.startswith("head."))
        > 100 * ACROSS_WORLD_ATOL
    )
    # one log, from rank 0: every step and epoch once
    rows = dist._csv_rows(run)
    assert [int(r["step"]) for r in rows if r["kind"] == "step"] == list(range(1, STEPS + 1))
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert len(epochs) == 2
    # validation is gathered: each rank predicted 2 of the 4 images, the metric saw all 4 (at
    # this size the barely trained detector's mAP may be 0 in both; the train loss, summed over
    # both ranks' shards, is the check that cannot pass by coincidence)
    for row, hist in zip(epochs, ref.history, strict=True):
        assert float(row["val_map_50"]) == pytest.approx(hist["val_map_50"], abs=1e-4)
        assert float(row["val_map"]) == pytest.approx(hist["val_map"], abs=1e-4)
        assert float(row["train_loss"]) == pytest.approx(hist["train_loss"], rel=1e-4)
