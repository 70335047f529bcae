"""The detection demo: each recipe trains what it says (trainable parameters counted on
torchvision's own builder); at toy size the source -> target run writes the table and the plot
and the source weights load into the target detector."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import ssdlite320_mobilenet_v3_large

from strop.demo_detection import (
    MODEL,
    detection_recipes,
    format_detection_table,
    run_detection_demo,
)
from strop.train import config_from_dict
from strop.train.detection_run import build_detection_parts


def test_recipes_train_what_they_say(tmp_path):
    reference = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4)
    weights = tmp_path / "source.pth"
    torch.save(reference.state_dict(), weights)
    total = sum(p.numel() for p in reference.parameters())
    features = sum(p.numel() for p in reference.backbone.features.parameters())
    # frozen: no MobileNetV3 feature parameter trains (the SSD extras and heads do); full and
    # scratch: everything (SSDLite keeps plain BatchNorm2d, as torchvision builds it)
    expected = {
        "frozen backbone": total - features,
        "full fine-tuning": total,
        "from scratch": total,
    }
    assert 0 < features < total
    for label, _, lr, model in detection_recipes(weights):
        config = config_from_dict(
            {
                "task": "detection",
                "data": {"root": "x"},
                "model": {"name": MODEL, **model},
                "optimizer": {"lr": lr},
            }
        )
        detector, _, optimizer = build_detection_parts(config, 3)
        trainable = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
        assert (
            trainable
            == expected[label]
            == sum(p.numel() for p in detector.parameters() if p.requires_grad)
        ), label
    with pytest.raises(ValueError, match=r"recipes must name some of .*got \['frozen'\]"):
        detection_recipes(weights, ["frozen"])


def test_demo_end_to_end_at_toy_size(tmp_path):
    lines = []
    rows = run_detection_demo(
        tmp_path,
        n_source=4,
        n_target=4,
        n_val=4,
        image_size=64,
        source_epochs=1,
        target_epochs=1,
        precision="fp32",
        progress=False,
        recipes=["frozen backbone"],
        log=lines.append,
    )
    assert [r.recipe for r in rows] == ["frozen backbone"]
    # the frozen backbone's weights are the source detector's, bit for bit, after target training;
    # its BatchNorm statistics were recalibrated on the target images
    source = torch.load(tmp_path / "detection" / "detector-shapes-source.pth", weights_only=True)
    target = torch.load(rows[0].run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    stats = ("running_mean", "running_var", "num_batches_tracked")
    body = [k for k in source if k.startswith("backbone.features.") and not k.endswith(stats)]
    assert body and all(torch.equal(source[k], target[k]) for k in body)
    assert any(
        not torch.equal(source[k], target[k])
        for k in source
        if k.startswith("backbone.features.") and k.endswith("running_mean")
    )
    assert any(not torch.equal(source[k], target[k]) for k in source if k.startswith("head."))
    assert 0.0 <= rows[0].val_map <= rows[0].val_map_50 <= 1.0
    assert (tmp_path / "detection" / "comparison.png").stat().st_size > 1000
    table = format_detection_table(rows)
    assert table in "\n".join(lines) and table.count("\n") == 2
