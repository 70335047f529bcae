"""EMA weights equal the transcribed formula after N steps, agree with timm's ModelEmaV3 for the
same schedule (buffers included), and round-trip through state_dict exactly."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.utils.model_ema import ModelEmaV3
from torch import nn

from strop.train.ema import ModelEMA, ema_decay


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )


def _train_steps(model, n, hook):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        x = torch.randn(4, 3, 8, 8, generator=g)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        hook(model)


@pytest.mark.parametrize(
    ("k", "expected"), [(1, 0.0), (2, 1 - 2 ** (-2 / 3)), (10, 1 - 10 ** (-2 / 3)), (10**6, 0.999)]
)
def test_decay_table(k, expected):
    assert ema_decay(k, 0.999) == pytest.approx(expected)
    assert ema_decay(k, 0.9, warmup=False) == (0.0 if k == 1 else 0.9)


@pytest.mark.parametrize("warmup", [True, False])
def test_weights_equal_the_transcribed_formula(warmup):
    model = _model()
    ema = ModelEMA(model, decay=0.9, warmup=warmup)
    ref = {k: v.clone().double() for k, v in model.state_dict().items()}
    state = {"k": 0}

    def hook(m):
        ema.update(m)
        state["k"] += 1
        k = state["k"]
        d = 0.0 if k == 1 else (min(0.9, 1 - k ** (-2 / 3)) if warmup else 0.9)
        for name, v in m.state_dict().items():
            if v.is_floating_point():
                ref[name] = d * ref[name] + (1 - d) * v.double()
            else:
                ref[name] = v.clone().double()

    _train_steps(model, 7, hook)
    got = ema.module.state_dict()
    assert ema.updates == 7
    for name, v in ref.items():
        torch.testing.assert_close(got[name].double(), v, rtol=1e-5, atol=1e-6, msg=name)
    # buffers were averaged, not copied: running_mean differs from the model's
    assert not torch.equal(got["1.running_mean"], model.state_dict()["1.running_mean"])


def test_agrees_with_timm_model_ema_v3():
    model = _model()
    ours = ModelEMA(model, decay=0.99, warmup=True)
    theirs = ModelEmaV3(model, decay=0.99, use_warmup=True)
    steps = {"n": 0}

    def hook(m):
        steps["n"] += 1
        ours.update(m)
        theirs.update(m, step=steps["n"])  # timm's train.py passes the update count

    _train_steps(model, 12, hook)
    mine, ref = ours.module.state_dict(), theirs.module.state_dict()
    assert mine.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(mine[name], ref[name], rtol=1e-6, atol=1e-7, msg=name)


def test_state_dict_round_trip_is_exact():
    model = _model()
    ema = ModelEMA(model, decay=0.95)
    _train_steps(model, 3, ema.update)
    saved = copy.deepcopy(ema.state_dict())
    model_saved = copy.deepcopy(model.state_dict())
    _train_steps(model, 4, ema.update)
    expected = copy.deepcopy(ema.module.state_dict())

    model2 = _model()
    model2.load_state_dict(model_saved)
    ema2 = ModelEMA(_model(), decay=0.95)
    ema2.load_state_dict(saved)
    assert ema2.updates == 3 and ema2.current_decay() == ema_decay(4, 0.95)
    _train_steps(model2, 4, ema2.update)
    for name, v in expected.items():
        assert torch.equal(ema2.module.state_dict()[name], v), name


def test_the_average_does_not_train():
    ema = ModelEMA(_model())
    assert not any(p.requires_grad for p in ema.module.parameters())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"decay": 1.0}, r"decay must be in \[0, 1\)"),
        ({"decay": -0.1}, "decay must be >= 0"),
        ({"warmup_power": 0}, "warmup_power must be > 0"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match="ModelEMA: " + match):
        ModelEMA(_model(), **kwargs)
