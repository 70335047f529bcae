"""Each of torch's ten schedules built by name gives torch's own LR trace, exactly."""

import pytest
import torch
from _schedule_helpers import drive, make_optimizer
from torch.optim import lr_scheduler as tls

from strop.schedules import build, names

EPOCHS, SPE = 8, 3
METRICS = [1.0, 0.9, 0.95, 0.97, 0.96, 0.5, 0.6, 0.7]


def _lambda(epoch):
    return 0.9**epoch


def _mult(epoch):
    return 0.95


# (strop name, strop options, torch class, torch arguments, torch steps per: "step" | "epoch")
CASES = [
    ("lambda", {"lr_lambda": _lambda}, tls.LambdaLR, {"lr_lambda": _lambda}, "epoch"),
    ("LambdaLR", {"lr_lambda": _lambda}, tls.LambdaLR, {"lr_lambda": _lambda}, "epoch"),
    ("multiplicative", {"lr_lambda": _mult}, tls.MultiplicativeLR, {"lr_lambda": _mult}, "epoch"),
    ("step", {"step_size": 2, "gamma": 0.5}, tls.StepLR, {"step_size": 2, "gamma": 0.5}, "epoch"),
    (
        "multistep",
        {"milestones": [2, 5], "gamma": 0.3},
        tls.MultiStepLR,
        {"milestones": [2, 5], "gamma": 0.3},
        "epoch",
    ),
    ("exponential", {"gamma": 0.8}, tls.ExponentialLR, {"gamma": 0.8}, "epoch"),
    (
        "cosine",
        {"T_max": 6, "eta_min": 0.001},
        tls.CosineAnnealingLR,
        {"T_max": 6, "eta_min": 0.001},
        "epoch",
    ),
    ("cosine", {}, tls.CosineAnnealingLR, {"T_max": EPOCHS}, "epoch"),  # T_max from epochs
    (
        "CosineAnnealingLR",
        {"interval": "step"},
        tls.CosineAnnealingLR,
        {"T_max": EPOCHS * SPE},
        "step",
    ),
    (
        "plateau",
        {"patience": 1, "factor": 0.5},
        tls.ReduceLROnPlateau,
        {"patience": 1, "factor": 0.5},
        "epoch",
    ),
    (
        "cyclic",
        {"base_lr": 0.001, "max_lr": [0.1, 0.01], "step_size_up": 4, "mode": "triangular2"},
        tls.CyclicLR,
        {"base_lr": 0.001, "max_lr": [0.1, 0.01], "step_size_up": 4, "mode": "triangular2"},
        "step",
    ),
    (
        "onecycle",
        {"max_lr": [0.1, 0.05]},
        tls.OneCycleLR,
        {"max_lr": [0.1, 0.05], "total_steps": EPOCHS * SPE},
        "step",
    ),
    (
        "OneCycleLR",
        {"total_steps": 30, "pct_start": 0.4, "anneal_strategy": "linear", "three_phase": True},
        tls.OneCycleLR,
        {
            "max_lr": [0.1, 0.02],
            "total_steps": 30,
            "pct_start": 0.4,
            "anneal_strategy": "linear",
            "three_phase": True,
        },
        "step",
    ),
    (
        "cosine_restarts",
        {"T_0": 3, "T_mult": 2},
        tls.CosineAnnealingWarmRestarts,
        {"T_0": 3, "T_mult": 2},
        "epoch",
    ),
]


def _by_hand(cls, kwargs, per):
    opt = make_optimizer()
    sched = cls(opt, **kwargs)
    lrs = []
    for epoch in range(EPOCHS):
        for _ in range(SPE):
            lrs.append([g["lr"] for g in opt.param_groups])
            opt.step()
            if per == "step":
                sched.step()
        if per == "epoch":
            sched.step(METRICS[epoch]) if cls is tls.ReduceLROnPlateau else sched.step()
    return lrs, opt


@pytest.mark.parametrize(
    ("name", "options", "cls", "kwargs", "per"),
    CASES,
    ids=[c[0] + str(i) for i, c in enumerate(CASES)],
)
def test_same_trace_as_torch(name, options, cls, kwargs, per):
    expected, ref_opt = _by_hand(cls, kwargs, per)
    opt = make_optimizer()
    sched = build(name, opt, epochs=EPOCHS, steps_per_epoch=SPE, **options)
    assert isinstance(sched.scheduler, cls)
    assert sched.interval == per
    assert sched.needs_metric == (cls is tls.ReduceLROnPlateau)
    got = drive(sched, opt, epochs=EPOCHS, steps_per_epoch=SPE, metrics=METRICS)
    assert got == expected  # exactly torch's numbers, every group
    assert len({tuple(x) for x in got}) > 1  # the schedule moved
    # momentum cycling (OneCycle, Cyclic) follows torch too
    assert [g["momentum"] for g in opt.param_groups] == [
        g["momentum"] for g in ref_opt.param_groups
    ]


def test_all_ten_torch_classes_are_registered():
    torch_classes = {c[2] for c in CASES}
    assert len(torch_classes) == 10
    assert {cls.__name__ for cls in torch_classes} <= set(names())
    for alias in (
        "step",
        "multistep",
        "exponential",
        "cosine",
        "plateau",
        "cyclic",
        "onecycle",
        "cosine_restarts",
        "lambda",
        "multiplicative",
    ):
        build(alias, make_optimizer(), epochs=4, steps_per_epoch=2, **_minimal(alias))


def _minimal(alias):
    return {
        "step": {"step_size": 1},
        "multistep": {"milestones": [1]},
        "exponential": {"gamma": 0.9},
        "cyclic": {"base_lr": 0.001},
        "cosine_restarts": {"T_0": 2},
        "lambda": {"lr_lambda": _lambda},
        "multiplicative": {"lr_lambda": _mult},
    }.get(alias, {})


def test_spec_mapping_and_kwargs_override():
    opt = make_optimizer()
    sched = build({"name": "StepLR", "step_size": 5, "gamma": 0.5}, opt, gamma=0.1)
    assert sched.scheduler.gamma == 0.1 and sched.scheduler.step_size == 5
    assert sched.name == "StepLR" and sched.get_last_lr() == [0.1, 0.02]


def test_interval_override_gives_a_per_step_cosine():
    # a per-step cosine counts optimizer steps: T_max is the run's total steps
    opt = make_optimizer()
    sched = build("cosine", opt, epochs=2, steps_per_epoch=5, interval="step")
    assert sched.scheduler.T_max == 10
    lrs = drive(sched, opt, epochs=2, steps_per_epoch=5)
    assert lrs[0][0] == pytest.approx(0.1) and lrs[-1][0] == pytest.approx(
        0.1 * 0.5 * (1 + torch.cos(torch.tensor(9 / 10 * torch.pi)).item())
    )
