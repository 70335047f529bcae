"""BatchNorm kept in eval, param_groups learning rates, gradual unfreezing, errors, public API."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import strop.finetune as ft
from strop.finetune import (
    GradualUnfreezing,
    build_model,
    freeze,
    is_backbone_frozen,
    layer_groups,
    model_spec,
    param_groups,
    replace_head,
    split_outputs,
    unfreeze,
)
from strop.finetune.zoo import architecture_of, build_architecture


def _bns(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_frozen_batchnorm_stays_in_eval_and_keeps_its_statistics():
    model = build_model("resnet18", num_classes=3, freeze="layer2")
    model.train()
    frozen, free = _bns(model.layer1), _bns(model.layer3)
    assert all(not m.training for m in frozen) and all(m.training for m in free)
    before = model.layer1[0].bn1.running_mean.clone()
    free_before = model.layer3[0].bn1.running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(model.layer1[0].bn1.running_mean, before)
    assert not torch.equal(model.layer3[0].bn1.running_mean, free_before)
    # survives deepcopy, a full-model pickle and state_dict round trips
    twin = copy.deepcopy(model)
    twin.train()
    assert not twin.layer1[0].bn1.training and isinstance(twin.layer1[0].bn1, torch.nn.BatchNorm2d)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    loaded.train()
    assert not loaded.layer1[0].bn1.training
    fresh = build_model("resnet18", num_classes=3)
    assert fresh.state_dict().keys() == model.state_dict().keys()
    fresh.load_state_dict(model.state_dict())
    unfreeze(model, "all")
    model.train()
    assert (
        all(m.training for m in _bns(model)) and type(model.layer1[0].bn1) is torch.nn.BatchNorm2d
    )


def test_train_bn_keeps_batchnorm_learning():
    model = build_model("resnet18", num_classes=3, freeze="backbone", train_bn=True).train()
    assert all(m.training and m.weight.requires_grad for m in _bns(model))
    assert not model.layer1[0].conv1.weight.requires_grad and not is_backbone_frozen(model)


def test_param_groups_learning_rates_and_weight_decay():
    model = build_architecture("resnet18", num_classes=3, device="meta")
    groups = param_groups(model, 0.1, head_lr_mult=10.0, weight_decay=0.05)
    by_name = {g["name"]: g for g in groups}
    assert by_name["head"]["lr"] == pytest.approx(1.0) and by_name["backbone"]["lr"] == 0.1
    assert by_name["head (no decay)"]["params"] == [model.fc.bias]
    assert (
        by_name["head (no decay)"]["weight_decay"] == 0.0
        and by_name["head"]["weight_decay"] == 0.05
    )
    assert all(p.ndim > 1 for p in by_name["backbone"]["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    # layer-wise decay: group i of S gets lr * d ** (S - i); resnet18 has S = 6 stages
    decayed = {g["name"]: g["lr"] for g in param_groups(model, 1.0, layer_decay=0.5)}
    stages = [g.name for g in layer_groups(model)[:-1]]
    assert stages == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
    for i, name in enumerate(stages):
        assert decayed[name] == pytest.approx(0.5 ** (6 - i))
    assert decayed["head"] == 1.0
    freeze(model, "backbone")
    assert [g["name"] for g in param_groups(model, 0.1)] == ["head"]
    assert len(param_groups(model, 0.1, trainable_only=False)) == 2
    with pytest.raises(ValueError, match=r"param_groups: layer_decay must be in \(0, 1\]; got 2"):
        param_groups(model, 0.1, layer_decay=2)
    with pytest.raises(ValueError, match="param_groups: lr must be > 0; got 0"):
        param_groups(model, 0)


def test_param_groups_feed_a_torch_optimizer():
    model = build_model("mobilenet_v3_small", num_classes=3)
    opt = torch.optim.AdamW(param_groups(model, 1e-3, head_lr_mult=5, weight_decay=0.01))
    model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))).sum().backward()
    before = {p: p.detach().clone() for g in opt.param_groups for p in g["params"]}
    opt.step()
    assert {g["name"] for g in opt.param_groups} >= {"head", "backbone", "backbone (no decay)"}
    # AdamW's first step by hand: p <- p (1 - lr wd) - lr g / (|g| + eps), with each group's lr/wd
    for g in opt.param_groups:
        lr, wd = g["lr"], g["weight_decay"]
        assert lr == pytest.approx(5e-3 if g["name"].startswith("head") else 1e-3), g["name"]
        assert wd == (0.0 if "no decay" in g["name"] else 0.01), g["name"]
        for p in g["params"]:
            if p.grad is None:
                continue
            expected = before[p] * (1 - lr * wd) - lr * p.grad / (p.grad.abs() + 1e-8)
            torch.testing.assert_close(p.detach(), expected, rtol=1e-4, atol=1e-7)


def test_gradual_unfreezing_all_at_once_adds_one_group():
    model = build_model("resnet18", num_classes=3, freeze="backbone")
    opt = torch.optim.SGD(param_groups(model, 0.1, head_lr_mult=1.0), lr=0.1, momentum=0.9)
    plan = GradualUnfreezing(head_epochs=2, lr_mult=0.1)
    head_only = model.fc.weight.numel() + model.fc.bias.numel()
    for epoch in (0, 1):
        assert plan.on_epoch_start(epoch, model, opt) == []
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == head_only
    added = plan.on_epoch_start(2, model, opt)
    assert added == ["unfreeze@2:backbone"]
    assert all(p.requires_grad for p in model.parameters()) and not is_backbone_frozen(model)
    new = opt.param_groups[-1]
    assert new["lr"] == pytest.approx(0.01) and new["momentum"] == 0.9
    held = [p for g in opt.param_groups for p in g["params"]]
    assert len(held) == len(set(map(id, held))) == len(list(model.parameters()))
    assert plan.on_epoch_start(3, model, opt) == []  # idempotent


def test_gradual_unfreezing_stage_by_stage_and_resume():
    def fresh():
        model = build_model("resnet18", num_classes=3, freeze="backbone")
        opt = torch.optim.AdamW(param_groups(model, 1e-3, weight_decay=0.01))
        return model, opt

    plan = GradualUnfreezing(head_epochs=1, every=1, layer_decay=0.5, lr_mult=1.0)
    model, opt = fresh()
    for epoch in range(4):
        plan.on_epoch_start(epoch, model, opt)
    # epochs 1, 2, 3 unfroze layer4, layer3, layer2 (top first)
    assert [g["name"] for g in opt.param_groups[2:]] == [
        "unfreeze@1:layer4",
        "unfreeze@1:layer4 (no decay)",
        "unfreeze@2:layer3",
        "unfreeze@2:layer3 (no decay)",
        "unfreeze@3:layer2",
        "unfreeze@3:layer2 (no decay)",
    ]
    assert opt.param_groups[4]["lr"] == pytest.approx(
        1e-3 * 0.5
    )  # layer3 is one stage below the top
    assert (
        not model.layer1[0].conv1.weight.requires_grad
        and model.layer2[0].conv1.weight.requires_grad
    )
    # resume at epoch 3: same group structure, so the saved optimizer state loads
    model2, opt2 = fresh()
    plan.on_epoch_start(3, model2, opt2)
    opt2.load_state_dict(opt.state_dict())
    assert [g["name"] for g in opt2.param_groups] == [g["name"] for g in opt.param_groups]


def test_split_outputs_and_replace_head():
    t = torch.zeros(2, 3)
    assert split_outputs(t) == (t, [])
    main, aux = split_outputs({"out": t, "aux": t + 1})
    assert main is t and torch.equal(aux[0], t + 1)
    assert split_outputs((t, None, t))[1] == [t]
    with pytest.raises(TypeError, match="split_outputs: output must be a Tensor"):
        split_outputs("logits")
    with pytest.raises(ValueError, match="split_outputs: a dict output must have an 'out' key"):
        split_outputs({"logits": t})
    squeeze = build_architecture("squeezenet1_0", num_classes=1000, device="meta")
    replace_head(squeeze, 7)
    assert squeeze.classifier[1].out_channels == 7 and squeeze.num_classes == 7
    with pytest.raises(ValueError, match="replace_head: num_classes must be > 0; got 0"):
        replace_head(squeeze, 0)


def test_bad_input_errors():
    with pytest.raises(
        ValueError, match=r"build_model: unknown model 'resnet19'; did you mean 'resnet18'"
    ):
        build_model("resnet19", num_classes=3)
    with pytest.raises(ValueError, match="build_model: num_classes must be > 0; got 0"):
        build_model("resnet18", num_classes=0)
    with pytest.raises(
        TypeError, match=r"build_model: num_classes must be an integer; got float 2\.5"
    ):
        build_model("resnet18", num_classes=2.5)
    model = build_architecture("resnet18", num_classes=3, device="meta")
    with pytest.raises(
        ValueError, match=r"freeze: what must be .*got 'layer9'; did you mean 'layer4'"
    ):
        freeze(model, "layer9")
    with pytest.raises(
        ValueError, match="freeze: what must be a number of stages between 0 and 6; got 7"
    ):
        freeze(model, 7)
    with pytest.raises(TypeError, match=r"freeze: what must be 'backbone'.*got float"):
        freeze(model, 1.5)
    with pytest.raises(TypeError, match="model_spec: model must be a torchvision classification"):
        model_spec(torch.nn.Linear(2, 2))


def test_model_spec_by_name():
    assert model_spec("inception_v3").input_size == 299
    assert model_spec("vgg16").head == "classifier.6"
    assert model_spec("efficientnet_b3").input_size == 300
    spec = model_spec("deeplabv3_resnet50")
    assert spec.task == "segmentation" and spec.output_layers == (
        "classifier.4",
        "aux_classifier.4",
    )


def test_a_built_model_remembers_its_architecture_name_without_an_attribute():
    from torchvision.models import efficientnet_b3

    model = build_architecture("efficientnet_b3", num_classes=5, device="meta")
    assert architecture_of(model) == "efficientnet_b3"
    # the variant's own input size (torchvision's crop_size for its weights), not EfficientNet's 224
    assert model_spec(model).input_size == 300
    assert not any(name.startswith("_strop") for name in vars(model))
    elsewhere = efficientnet_b3(num_classes=5)
    assert architecture_of(elsewhere) is None and model_spec(elsewhere).input_size == 224


def test_public_api_is_pinned():
    assert ft.__all__ == sorted(ft.__all__)
    assert ft.__all__ == [
        "GradualUnfreezing",
        "LayerGroup",
        "LoadReport",
        "ModelSpec",
        "ModelSummary",
        "UnsafeWeightsError",
        "available_models",
        "build_model",
        "freeze",
        "head_module",
        "is_backbone_frozen",
        "layer_groups",
        "load_weights",
        "model_spec",
        "param_groups",
        "read_state_dict",
        "replace_head",
        "split_outputs",
        "summarize",
        "unfreeze",
    ]
    assert all(getattr(ft, name).__doc__ for name in ft.__all__)
