"""The tutorial's fourteen models: new head, forward at the right input size, freezing counts."""

from __future__ import annotations

import pytest
import torch
from _finetune_cases import NUM_CLASSES, OUTPUT_LAYERS, TUTORIAL

from strop.finetune import (
    build_model,
    freeze,
    head_module,
    is_backbone_frozen,
    model_spec,
    split_outputs,
    unfreeze,
)
from strop.finetune.zoo import build_architecture

INPUT = {"inception_v3": 299}


def _numel(model: torch.nn.Module, paths) -> int:
    return sum(p.numel() for path in paths for p in model.get_submodule(path).parameters())


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", TUTORIAL)
def test_forward_with_new_head(tutorial_models, name):
    model = tutorial_models[name].eval()
    size = INPUT.get(name, 224)
    assert model_spec(model).input_size == size
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert out.shape == (1, NUM_CLASSES)
    for path in OUTPUT_LAYERS[name]:
        layer = model.get_submodule(path)
        assert (
            layer.out_features if hasattr(layer, "out_features") else layer.out_channels
        ) == NUM_CLASSES


@pytest.mark.parametrize("name", TUTORIAL)
def test_freeze_backbone_leaves_exactly_the_heads_trainable(name):
    model = build_architecture(name, num_classes=NUM_CLASSES, device="meta")
    total = sum(p.numel() for p in model.parameters())
    assert _trainable(model) == total
    freeze(model, "backbone")
    assert _trainable(model) == _numel(model, OUTPUT_LAYERS[name])
    assert is_backbone_frozen(model)
    unfreeze(model, "all")
    assert _trainable(model) == total and not is_backbone_frozen(model)
    freeze(model, None)
    assert _trainable(model) == total


@pytest.mark.parametrize("name", TUTORIAL)
def test_freeze_backbone_with_train_bn_keeps_batchnorm_trainable(name):
    model = build_architecture(name, num_classes=NUM_CLASSES, device="meta")
    heads = {id(p) for path in OUTPUT_LAYERS[name] for p in model.get_submodule(path).parameters()}
    bn = sum(
        p.numel()
        for m in model.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        for p in m.parameters()
        if id(p) not in heads
    )
    freeze(model, "backbone", train_bn=True)
    assert _trainable(model) == _numel(model, OUTPUT_LAYERS[name]) + bn
    assert is_backbone_frozen(model) == (bn == 0)  # alexnet/vgg16 have no BatchNorm


# "freeze up to NAME" and "freeze N groups": expected frozen modules written out by hand
FREEZE_CASES = [
    ("resnet18", "layer3", ["conv1", "bn1", "layer1", "layer2", "layer3"]),
    ("resnet18", 2, ["conv1", "bn1"]),
    ("resnext50_32x4d", "layer2", ["conv1", "bn1", "layer1", "layer2"]),
    ("wide_resnet50_2", 4, ["conv1", "bn1", "layer1", "layer2"]),
    ("vgg16", "features.28", ["features"]),
    ("alexnet", "classifier.4", ["features", "classifier.1", "classifier.4"]),
    ("squeezenet1_0", "features.12", ["features"]),
    (
        "densenet161",
        "features.denseblock2",
        [
            "features.conv0",
            "features.norm0",
            "features.denseblock1",
            "features.transition1",
            "features.denseblock2",
        ],
    ),
    (
        "inception_v3",
        "Mixed_5d",
        [
            "Conv2d_1a_3x3",
            "Conv2d_2a_3x3",
            "Conv2d_2b_3x3",
            "Conv2d_3b_1x1",
            "Conv2d_4a_3x3",
            "Mixed_5b",
            "Mixed_5c",
            "Mixed_5d",
        ],
    ),
    ("googlenet", "inception3b", ["conv1", "conv2", "conv3", "inception3a", "inception3b"]),
    ("shufflenet_v2_x1_0", "stage3", ["conv1", "stage2", "stage3"]),
    ("mobilenet_v2", 18, [f"features.{i}" for i in range(18)]),
    ("mobilenet_v3_large", "features.16", ["features"]),
    ("mobilenet_v3_small", "classifier.0", ["features", "classifier.0"]),
    ("mnasnet1_0", "layers.7", [f"layers.{i}" for i in range(8)]),
]


@pytest.mark.parametrize(("name", "what", "frozen"), FREEZE_CASES)
def test_freeze_up_to_a_group(name, what, frozen):
    model = build_architecture(name, num_classes=NUM_CLASSES, device="meta")
    total = sum(p.numel() for p in model.parameters())
    freeze(model, what)
    assert _trainable(model) == total - _numel(model, frozen)
    # frozen "up to" the last group before the head is the whole backbone (alexnet's classifier.4)
    assert is_backbone_frozen(model) == (_trainable(model) == _numel(model, OUTPUT_LAYERS[name]))
    for path in OUTPUT_LAYERS[name]:
        assert all(p.requires_grad for p in model.get_submodule(path).parameters())


def test_unfreeze_from_a_group_and_last_n():
    model = build_architecture("resnet18", num_classes=3, device="meta")
    freeze(model, "backbone")
    unfreeze(model, "layer4")
    assert _trainable(model) == _numel(model, ["layer4", "fc"])
    unfreeze(model, 2)
    assert _trainable(model) == _numel(model, ["layer3", "layer4", "fc"])


@pytest.mark.parametrize("name", ["inception_v3", "googlenet"])
def test_aux_heads_in_training_and_disabled(tutorial_models, name):
    model = tutorial_models[name]
    size = INPUT.get(name, 224)
    freeze(model, "backbone")  # frozen BN stays in eval, so a batch of one works in train mode
    model.train()
    try:
        with torch.no_grad():
            main, aux = split_outputs(model(torch.randn(1, 3, size, size)))
    finally:
        model.eval()
        unfreeze(model, "all")
    assert main.shape == (1, NUM_CLASSES)
    assert len(aux) == len(OUTPUT_LAYERS[name]) - 1 and all(
        a.shape == (1, NUM_CLASSES) for a in aux
    )
    # without aux heads (shapes only: the meta device runs the forward without computing it)
    bare = build_architecture(name, num_classes=NUM_CLASSES, aux_logits=False, device="meta")
    assert model_spec(bare).aux_heads == ()
    main, aux = split_outputs(bare.train()(torch.empty(2, 3, size, size, device="meta")))
    assert main.shape == (2, NUM_CLASSES) and aux == []


def test_head_module_is_the_output_layer(tutorial_models):
    assert head_module(tutorial_models["resnet18"]) is tutorial_models["resnet18"].fc
    assert head_module(tutorial_models["vgg16"]) is tutorial_models["vgg16"].classifier[6]
    assert (
        head_module(tutorial_models["squeezenet1_0"])
        is tutorial_models["squeezenet1_0"].classifier[1]
    )


@pytest.mark.parametrize(
    ("name", "aux"), [("lraspp_mobilenet_v3_large", False), ("fcn_resnet50", True)]
)
def test_segmentation_models_get_a_new_head(name, aux):
    model = build_model(name, num_classes=3).eval()
    spec = model_spec(model)
    assert spec.task == "segmentation" and spec.head == "classifier"
    with torch.no_grad():
        main, extra = split_outputs(model(torch.randn(1, 3, 64, 64)))
    assert main.shape == (1, 3, 64, 64)
    assert len(extra) == int(aux) and all(a.shape == (1, 3, 64, 64) for a in extra)
    freeze(model, "backbone")
    assert _trainable(model) == _numel(model, ["classifier", *(["aux_classifier"] if aux else [])])
