"""The detection demo: each recipe trains what it says (trainable parameters counted on
torchvision's own builder); at toy size the source -> target run writes the table and the plot
and the source weights load into the target detector."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

from strop.demo_detection import detection_recipes, format_detection_table, run_detection_demo
from strop.train import config_from_dict
from strop.train.detection_run import build_detection_parts


def test_recipes_train_what_they_say(tmp_path):
    reference = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=4)
    weights = tmp_path / "source.pth"
    torch.save(reference.state_dict(), weights)
    total = sum(p.numel() for p in reference.parameters())
    body = reference.backbone.body
    bn_affine = sum(p.numel() for m in body.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters())
    # frozen: no backbone.body parameter trains; full: all of them but the BN affine parameters
    # (torchvision freezes BatchNorm of pretrained backbones); scratch: everything
    expected = {"frozen backbone": total - sum(p.numel() for p in body.parameters()),
                "full fine-tuning": total - bn_affine, "from scratch": total}
    for label, _, lr, model in detection_recipes(weights):
        config = config_from_dict({"task": "detection", "data": {"root": "x"}, "model": model,
                                   "optimizer": {"lr": lr}})
        detector, _, optimizer = build_detection_parts(config, 3)
        trainable = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
        assert trainable == expected[label] == sum(p.numel() for p in detector.parameters() if p.requires_grad), label
    with pytest.raises(ValueError, match=r"recipes must name some of .*got \['frozen'\]"):
        detection_recipes(weights, ["frozen"])


def test_demo_end_to_end_at_toy_size(tmp_path):
    lines = []
    rows = run_detection_demo(tmp_path, n_source=4, n_target=4, n_val=4, image_size=64, source_epochs=1,
                              target_epochs=1, precision="fp32", progress=False, recipes=["frozen backbone"],
                              log=lines.append)
    assert [r.recipe for r in rows] == ["frozen backbone"]
    # the frozen backbone is the source detector's, bit for bit, after target training
    source = torch.load(tmp_path / "detection" / "detector-shapes-source.pth", weights_only=True)
    target = torch.load(rows[0].run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    body = [k for k in source if k.startswith("backbone.body.") and "num_batches" not in k]
    assert body and all(torch.equal(source[k], target[k]) for k in body)
    assert not torch.equal(source["rpn.head.conv.0.0.weight"], target["rpn.head.conv.0.0.weight"])
    assert 0.0 <= rows[0].val_map <= rows[0].val_map_50 <= 1.0
    assert (tmp_path / "detection" / "comparison.png").stat().st_size > 1000
    table = format_detection_table(rows)
    assert table in "\n".join(lines) and table.count("\n") == 2
