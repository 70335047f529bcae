"""build_detector against torchvision's own builders: same weights, same frozen layers, same
FrozenBatchNorm2d, same outputs; heads, weights from files and backbones, box losses, NMS."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torchvision.models import get_model_builder, get_model_weights
from torchvision.models.detection.retinanet import RetinaNetRegressionHead
from torchvision.ops.misc import FrozenBatchNorm2d

from strop.finetune.detection import (
    DETECTORS,
    build_detector,
    detector_info,
    detector_param_groups,
    set_nms,
)
from strop.finetune.weights import hub_cache_path
from strop.losses import batched_nms

SMALL = {"min_size": 64, "max_size": 64}


def _kwargs(name):
    return {} if name.startswith("ssd") else dict(SMALL)


@pytest.fixture(scope="module")
def fake_hub(tmp_path_factory):
    """``fake_hub(name, monkeypatch)``: torchvision-shaped COCO weights (91 outputs, random
    values) in a temporary hub cache, pointed to by ``$TORCH_HOME``; written once per builder for
    the module (the tests only read the file)."""
    home = tmp_path_factory.mktemp("torch_home")
    made: dict[str, tuple] = {}

    def make(name, monkeypatch):
        monkeypatch.setenv("TORCH_HOME", str(home))
        weights = get_model_weights(name).DEFAULT
        if name not in made:
            torch.manual_seed(1)
            source = get_model_builder(name)(weights=None, weights_backbone=None, num_classes=91)
            with torch.no_grad():
                for p in source.parameters():
                    p.normal_(0, 0.02)  # not the builder's init: a load that silently fails shows
            path = hub_cache_path(weights)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(source.state_dict(), path)
            made[name] = (weights, source.state_dict())
        return made[name]

    return make


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _norm_types(model):
    return {
        n: (type(m).__name__, m.eps)
        for n, m in model.named_modules()
        if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))
    }


# every builder at torchvision's default trainable_backbone_layers, and the values that exercise
# each freezing rule's edges: mobilenet all/none, resnet's bn1 at 5, SSD300's VGG split, SSDLite's
CASES = [(n, None) for n in DETECTORS] + [
    ("fasterrcnn_mobilenet_v3_large_320_fpn", 0),
    ("fasterrcnn_mobilenet_v3_large_320_fpn", 6),
    ("fasterrcnn_resnet50_fpn", 5),
    ("retinanet_resnet50_fpn_v2", 0),
    ("ssd300_vgg16", 0),
    ("ssdlite320_mobilenet_v3_large", 0),
    ("ssdlite320_mobilenet_v3_large", 2),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "trainable"), CASES)
def test_same_model_as_torchvision_from_the_hub_cache(name, trainable, fake_hub, monkeypatch):
    weights, _ = fake_hub(name, monkeypatch)
    offset = 1 if DETECTORS[name][1].background else 0
    extra = {} if trainable is None else {"trainable_backbone_layers": trainable}
    # torchvision loads the cached file itself: the reference
    reference = get_model_builder(name)(weights=weights, **extra, **_kwargs(name))
    ours = build_detector(
        name, num_classes=91 - offset, weights="DEFAULT", **extra, **_kwargs(name)
    )
    assert detector_info(ours).report.ok and detector_info(ours).report.loaded > 0
    assert _trainable(ours) == _trainable(reference)
    assert _norm_types(ours) == _norm_types(reference)
    theirs = reference.state_dict()
    assert ours.state_dict().keys() == theirs.keys()
    assert all(torch.equal(v, theirs[k]) for k, v in ours.state_dict().items())
    if trainable is None and name in (
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        "retinanet_resnet50_fpn",
        "ssdlite320_mobilenet_v3_large",
    ):
        torch.manual_seed(0)
        images = [torch.rand(3, 64, 80)]
        ours.eval()
        reference.eval()
        with torch.no_grad():
            a, b = ours(images)[0], reference(images)[0]
        assert all(torch.equal(a[k], b[k]) for k in ("boxes", "scores", "labels"))


@pytest.mark.parametrize(
    "name",
    [
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        "retinanet_resnet50_fpn",
        "fcos_resnet50_fpn",
        "ssdlite320_mobilenet_v3_large",
    ],
)
def test_new_class_count_replaces_only_the_class_layers(name, fake_hub, monkeypatch):
    weights, state = fake_hub(name, monkeypatch)
    model = build_detector(name, num_classes=3, weights=weights, **_kwargs(name))
    info = detector_info(model)
    reset = set(info.report.head_reset)
    own = model.state_dict()
    expected_reset = {k for k in state if k in own and own[k].shape != state[k].shape}
    assert reset == expected_reset and reset
    heads = DETECTORS[name][1].head
    assert all(any(k.startswith(h + ".") for h in heads) for k in reset)
    # everything else, box regression included, is the source's
    kept = [k for k in own if k in state and k not in reset]
    assert all(torch.equal(own[k], state[k]) for k in kept)
    assert any("regression" in k or "bbox_pred" not in k for k in kept)
    outputs = own[sorted(reset)[0]].shape[0]
    anchors = {
        "fasterrcnn_mobilenet_v3_large_320_fpn": 1,
        "retinanet_resnet50_fpn": 9,
        "fcos_resnet50_fpn": 1,
        "ssdlite320_mobilenet_v3_large": 6,
    }[name]
    classes = 4 if info.label_offset else 3  # background counted for Faster R-CNN / SSD
    assert (
        outputs == anchors * classes or outputs == classes * 4
    )  # cls_score rows or bbox_pred rows


def test_backbone_from_a_classification_checkpoint(tmp_path):
    """A resnet50 trained as a classifier (strop's checkpoint dict) goes into the detector's body."""
    resnet = get_model_builder("resnet50")(num_classes=7)
    with torch.no_grad():
        for p in resnet.parameters():
            p.normal_(0, 0.02)
    path = tmp_path / "resnet50.safetensors"
    save_file({k: v.contiguous() for k, v in resnet.state_dict().items()}, path)
    model = build_detector("retinanet_resnet50_fpn", num_classes=2, weights=path, **SMALL)
    body = model.backbone.body
    assert torch.equal(body.layer3[0].conv1.weight, resnet.layer3[0].conv1.weight)
    assert isinstance(body.bn1, FrozenBatchNorm2d) and torch.equal(
        body.bn1.running_var, resnet.bn1.running_var
    )
    report = detector_info(model).report
    assert report.ok and "classification backbone" in report.source
    # torchvision's default with pretrained weights: layer2..4 train, conv1/layer1 frozen
    assert not body.conv1.weight.requires_grad and not body.layer1[0].conv1.weight.requires_grad
    assert (
        body.layer2[0].conv1.weight.requires_grad
        and model.head.regression_head.bbox_reg.weight.requires_grad
    )
    ckpt = tmp_path / "ckpt.pt"
    torch.save(
        {"epoch": 3, "model": get_model_builder("resnet50")(num_classes=7).state_dict()}, ckpt
    )
    build_detector("fasterrcnn_resnet50_fpn", num_classes=2, weights=ckpt, **SMALL)


def test_full_detector_file_round_trip_and_other_architecture_refused(tmp_path):
    torch.manual_seed(0)
    trained = build_detector("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=3, **SMALL)
    path = tmp_path / "det.pth"
    torch.save(trained.state_dict(), path)
    again = build_detector(
        "fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=3, weights=path, **SMALL
    )
    assert detector_info(again).report.head_reset == ()
    frozen_names = {n for n, m in again.named_modules() if isinstance(m, FrozenBatchNorm2d)}
    for k, v in again.state_dict().items():
        assert torch.equal(v, trained.state_dict()[k]), k
    assert frozen_names  # pretrained => FrozenBatchNorm2d, as torchvision
    other = tmp_path / "ssd.pth"
    torch.save(build_detector("ssdlite320_mobilenet_v3_large", num_classes=3).state_dict(), other)
    with pytest.raises(
        ValueError, match=r"build_detector: '.*ssd.pth' (does not fit|shares no tensor)"
    ):
        build_detector(
            "fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=3, weights=other, **SMALL
        )


def test_offline_hub_miss_names_the_cache_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(
        "torchvision.models._api.WeightsEnum.get_state_dict",
        lambda self, *a, **k: (_ for _ in ()).throw(OSError("no network")),
    )
    with pytest.raises(
        ValueError,
        match=r"are not in the hub cache \('.*empty/hub/checkpoints/.*'\).*no network.*Hint: on an offline machine",
    ):
        build_detector("ssdlite320_mobilenet_v3_large", num_classes=3, weights="DEFAULT")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "yolo", "num_classes": 3}, r"build_detector: name must be one of .*'yolo'"),
        ({"name": "fcos_resnet50_fpn", "num_classes": 0}, r"num_classes must be an int >= 1"),
        (
            {"name": "fasterrcnn_mobilenet_v3_large_320_fpn", "num_classes": 3, "box_loss": "giou"},
            r"box_loss='giou' is not available for fasterrcnn_mobilenet_v3_large_320_fpn; it supports smooth_l1",
        ),
        (
            {"name": "fcos_resnet50_fpn", "num_classes": 3, "box_loss": "l2"},
            r"box_loss must be one of",
        ),
        (
            {
                "name": "fasterrcnn_mobilenet_v3_large_320_fpn",
                "num_classes": 3,
                "trainable_backbone_layers": 2,
            },
            r"trainable_backbone_layers \(or freeze\) needs pretrained weights",
        ),
        (
            {
                "name": "fasterrcnn_mobilenet_v3_large_320_fpn",
                "num_classes": 3,
                "weights": "IMAGENET",
            },
            r"weights must be one of 'DEFAULT', 'COCO_V1'",
        ),
    ],
)
def test_bad_arguments(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=match):
        build_detector(name, **kwargs, **_kwargs(name))


def _retina_loss_inputs(model):
    torch.manual_seed(0)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [
        {
            "boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 20.0, 60.0, 50.0]]),
            "labels": torch.tensor([0, 1]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    return images, targets


@pytest.mark.parametrize("kind", ["giou", "diou", "ciou"])
def test_retinanet_box_loss_equals_torchvisions_own(kind):
    """strop's box_iou_loss in RetinaNet's head gives torchvision's number (its _box_loss)."""
    torch.manual_seed(0)
    ours = build_detector("retinanet_resnet50_fpn", num_classes=2, box_loss=kind, **SMALL)
    assert type(ours.head.regression_head) is not RetinaNetRegressionHead
    reference = build_detector("retinanet_resnet50_fpn", num_classes=2, **SMALL)
    reference.load_state_dict(ours.state_dict())
    reference.head.regression_head._loss_type = kind  # torchvision's own implementation
    images, targets = _retina_loss_inputs(ours)
    a = ours(images, targets)["bbox_regression"]
    b = reference(images, targets)["bbox_regression"]
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-6) and float(a.detach()) > 0
    a.backward()
    assert ours.head.regression_head.bbox_reg.weight.grad.abs().sum() > 0


def test_fcos_giou_equals_torchvision_and_diou_differs():
    torch.manual_seed(0)
    reference = build_detector("fcos_resnet50_fpn", num_classes=2, **SMALL)
    ours = build_detector("fcos_resnet50_fpn", num_classes=2, box_loss="giou", **SMALL)
    ours.load_state_dict(reference.state_dict())
    images, targets = _retina_loss_inputs(ours)
    a, b = ours(images, targets), reference(images, targets)
    assert torch.allclose(a["bbox_regression"], b["bbox_regression"], rtol=1e-4)
    assert torch.equal(a["classification"], b["classification"])
    diou = build_detector("fcos_resnet50_fpn", num_classes=2, box_loss="diou", **SMALL)
    diou.load_state_dict(reference.state_dict())
    assert not torch.allclose(diou(images, targets)["bbox_regression"], b["bbox_regression"])


def test_retinanet_l1_and_smooth_l1_use_torchvisions_path():
    model = build_detector("retinanet_resnet50_fpn", num_classes=2, box_loss="smooth_l1", **SMALL)
    assert type(model.head.regression_head) is RetinaNetRegressionHead
    assert model.head.regression_head._loss_type == "smooth_l1"


def test_param_groups_split_backbone_neck_head():
    model = build_detector("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=3, **SMALL)
    groups = detector_param_groups(model, 0.01, backbone_lr_mult=0.1, weight_decay=1e-4)
    by_name = {}
    for g in groups:
        by_name.setdefault(g["name"], []).append(g)
    assert set(by_name) == {"backbone", "neck", "head"}
    assert all(g["lr"] == pytest.approx(0.001) for g in by_name["backbone"])
    ids = {id(p) for g in groups for p in g["params"]}
    assert ids == {id(p) for p in model.parameters() if p.requires_grad}  # each exactly once
    assert sum(len(g["params"]) for g in groups) == len(ids)
    fpn = {id(p) for p in model.backbone.fpn.parameters()}
    assert fpn == {id(p) for g in by_name["neck"] for p in g["params"]}
    bn = [
        g
        for g in groups
        if any(p is model.backbone.body["1"].block[0][1].weight for p in g["params"])
    ]
    assert bn and bn[0]["weight_decay"] == 0.0  # BatchNorm weights: no decay


def test_min_nms_post_processing():
    torch.manual_seed(0)
    model = build_detector(
        "fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=3, box_score_thresh=0.0, **SMALL
    ).eval()
    images = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        set_nms(model, 0.3, denominator="min")
        ours = model(images)[0]
        set_nms(model, 1.0)  # union with threshold 1.0: torchvision keeps everything ...
        raw = model(images)[0]
        set_nms(model, 0.5)
        union = model(images)[0]
    # ... and strop's NMS on those candidates is what the hook returned
    keep = batched_nms(raw["boxes"], raw["scores"], raw["labels"], 0.3, denominator="min")[:100]
    assert torch.equal(ours["boxes"], raw["boxes"][keep]) and len(ours["boxes"]) > 0
    assert model.roi_heads.nms_thresh == 0.5 and len(union["boxes"]) >= len(ours["boxes"])
