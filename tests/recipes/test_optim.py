"""Optimizers by name: the right torch class with its own options, implementation choice,
refusals with reasons, and weight decay kept off biases and norms."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import torchvision
from torch import nn

from strop.finetune import param_groups
from strop.optim import OPTIMIZERS, build_optimizer


def _model():
    torch.manual_seed(0)
    # no conv bias before BatchNorm: its gradient is rounding noise that Adam would amplify
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    )


def _step(opt, model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 6, 6, generator=g)
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()


CLASSES = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
    "adamax": torch.optim.Adamax,
    "adadelta": torch.optim.Adadelta,
    "asgd": torch.optim.ASGD,
    "adafactor": torch.optim.Adafactor,
    "rprop": torch.optim.Rprop,
}


def test_the_table_is_every_usable_torch_optimizer():
    assert set(OPTIMIZERS) == set(CLASSES)
    in_torch = {
        n
        for n in dir(torch.optim)
        if isinstance(getattr(torch.optim, n), type)
        and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
        and n != "Optimizer"
    }
    covered = {c.__name__ for c in CLASSES.values()} | {"LBFGS", "SparseAdam", "Muon"}
    assert in_torch <= covered, f"new torch optimizers to add or refuse: {in_torch - covered}"


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_each_name_steps_like_the_torch_class_built_directly(name):
    model = _model()
    ref_model = copy.deepcopy(model)
    opt = build_optimizer(name, model.parameters(), lr=0.01, implementation="for_loop")
    assert type(opt) is CLASSES[name]
    extra = {"momentum": 0.9} if name == "sgd" else {}
    foreach = {"foreach": False} if "foreach" in inspect.signature(CLASSES[name]).parameters else {}
    wd = {"weight_decay": 0.0} if name != "rprop" else {}
    ref = CLASSES[name](ref_model.parameters(), lr=0.01, **extra, **wd, **foreach)
    for seed in range(3):
        _step(opt, model, seed)
        _step(ref, ref_model, seed)
    for a, b in zip(model.parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("name", "options", "key", "value"),
    [
        ("rmsprop", {"alpha": 0.9, "centered": True}, "centered", True),
        ("sgd", {"nesterov": True}, "nesterov", True),
        ("sgd", {}, "momentum", 0.9),  # strop's default
        ("adamw", {"betas": (0.9, 0.95)}, "betas", (0.9, 0.95)),
        ("nadam", {"momentum_decay": 0.002}, "momentum_decay", 0.002),
        ("adafactor", {"beta2_decay": -0.7}, "beta2_decay", -0.7),
    ],
)
def test_own_options_reach_the_optimizer(name, options, key, value):
    opt = build_optimizer(name, _model().parameters(), lr=0.1, **options)
    assert opt.param_groups[0][key] == value


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("adamw", {"fused": True}),
        ("adam", {"fused": True}),
        ("sgd", {"fused": True}),
        ("adagrad", {"fused": True}),
        ("nadam", {"foreach": True}),
        ("adafactor", {"foreach": True}),
    ],
)
def test_auto_picks_fused_where_torch_has_it_on_the_device(name, expected):
    opt = build_optimizer(name, _model().parameters(), lr=0.1)
    for key, value in expected.items():
        assert opt.defaults[key] is value


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_fused_and_foreach_steps_match_the_for_loop(name):
    models = [_model() for _ in range(3)]
    opts = [
        build_optimizer(name, m.parameters(), lr=0.01, weight_decay=0.01, implementation=i)
        for m, i in zip(models, ["for_loop", "foreach", "fused"], strict=True)
    ]
    for seed in range(3):
        for o, m in zip(opts, models, strict=True):
            _step(o, m, seed)
    for other in models[1:]:
        for a, b in zip(models[0].parameters(), other.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_weight_decay_stays_off_biases_and_norms():
    model = torchvision.models.mobilenet_v3_small(num_classes=3)
    # independent of param_groups' 1-D rule: norms by module type, biases by name
    norms = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
    exempt = {id(p) for m in model.modules() if isinstance(m, norms) for p in m.parameters()}
    exempt |= {id(p) for n, p in model.named_parameters() if n.endswith(".bias")}
    opt = build_optimizer("adamw", param_groups(model, 0.1, weight_decay=0.5), lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradients: only decoupled weight decay moves a parameter, by (1 - lr·wd)
    for n, p in model.named_parameters():
        factor = 1.0 if id(p) in exempt else 1 - 0.1 * 0.5
        torch.testing.assert_close(p, before[n] * factor, msg=n)
    assert 0 < len(exempt) < len(before)


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("lbfgs", r"optimizer 'lbfgs' is not supported: LBFGS.step needs a closure"),
        ("SparseAdam", r"optimizer 'SparseAdam' is not supported: SparseAdam only takes sparse"),
        ("muon", r"optimizer 'muon' is not supported: Muon only takes 2-D"),
        ("adamm", r"unknown optimizer 'adamm'; did you mean 'adam'\?"),
    ],
)
def test_refused_and_unknown_names(name, match):
    with pytest.raises(ValueError, match="build_optimizer: " + match):
        build_optimizer(name, _model().parameters(), lr=0.1)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        (
            "sgd",
            {"momentun": 0.9},
            r"unknown option 'momentun' for optimizer 'sgd'; did you mean 'momentum'",
        ),
        ("adam", {"foreach": True}, r"option 'foreach' is chosen by implementation"),
        ("rprop", {"weight_decay": 0.1}, r"optimizer 'rprop' has no weight decay"),
        (
            "nadam",
            {"implementation": "fused"},
            r"implementation='fused' is not available for NAdam",
        ),
        ("adam", {"implementation": "fast"}, r"implementation must be one of"),
        ("adam", {"betas": (0.9, 2.0)}, r"torch.optim.Adam refused the options"),
    ],
)
def test_bad_options(name, kwargs, match):
    with pytest.raises(ValueError, match="build_optimizer: " + match):
        build_optimizer(name, _model().parameters(), lr=0.1, **kwargs)
