"""strop's own schedules against their reference formulas.

The transformers-style schedules are checked against Hugging Face transformers'
``optimization.py`` lambdas, transcribed below as the reference (transformers is not installed);
transformers applies them through ``LambdaLR``, i.e. ``lr = group_base_lr * lambda(step)``.
"""

import math

import pytest
import torch
from _schedule_helpers import drive, make_optimizer

from strop.schedules import build, preview
from strop.schedules import custom as C


# --- Hugging Face transformers reference lambdas (transformers/optimization.py) -------------
def hf_constant_with_warmup(step, *, num_warmup_steps):
    if step < num_warmup_steps:
        return float(step) / float(max(1.0, num_warmup_steps))
    return 1.0


def hf_linear(step, *, num_warmup_steps, num_training_steps):
    if step < num_warmup_steps:
        return float(step) / float(max(1, num_warmup_steps))
    return max(
        0.0, float(num_training_steps - step) / float(max(1, num_training_steps - num_warmup_steps))
    )


def hf_cosine(step, *, num_warmup_steps, num_training_steps, num_cycles=0.5):
    if step < num_warmup_steps:
        return float(step) / float(max(1, num_warmup_steps))
    progress = float(step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))


def hf_cosine_hard_restarts(step, *, num_warmup_steps, num_training_steps, num_cycles=1):
    if step < num_warmup_steps:
        return float(step) / float(max(1, num_warmup_steps))
    progress = float(step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(num_cycles) * progress) % 1.0))))


def hf_cosine_min_lr(
    step, *, num_warmup_steps, num_training_steps, num_cycles=0.5, min_lr_rate=0.0
):
    if step < num_warmup_steps:
        return float(step) / float(max(1, num_warmup_steps))
    progress = float(step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
    factor = 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
    factor = factor * (1 - min_lr_rate) + min_lr_rate
    return max(0, factor)


def hf_polynomial(step, *, num_warmup_steps, num_training_steps, lr_end, power, lr_init):
    if step < num_warmup_steps:
        return float(step) / float(max(1, num_warmup_steps))
    elif step > num_training_steps:
        return lr_end / lr_init
    else:
        lr_range = lr_init - lr_end
        decay_steps = num_training_steps - num_warmup_steps
        pct_remaining = 1 - (step - num_warmup_steps) / decay_steps
        decay = lr_range * pct_remaining**power + lr_end
        return decay / lr_init


def hf_inverse_sqrt(step, *, num_warmup_steps, timescale=None):
    if timescale is None:
        timescale = num_warmup_steps or 10_000
    if step < num_warmup_steps:
        return float(step) / float(max(1, num_warmup_steps))
    shift = timescale - num_warmup_steps
    return 1.0 / math.sqrt((step + shift) / timescale)


def hf_wsd(
    step,
    *,
    num_warmup_steps,
    num_stable_steps,
    num_decay_steps,
    decay_type="cosine",
    min_lr_ratio=0.0,
    num_cycles=0.5,
):
    if step < num_warmup_steps:
        progress = float(step) / float(max(1, num_warmup_steps))
        factor = progress
        factor = factor * (1.0 - min_lr_ratio) + min_lr_ratio
        return max(0.0, factor)
    if step < num_warmup_steps + num_stable_steps:
        return 1.0
    if step < num_warmup_steps + num_stable_steps + num_decay_steps:
        progress = float(step - num_warmup_steps - num_stable_steps) / float(
            max(1, num_decay_steps)
        )
        if decay_type == "linear":
            factor = 1.0 - progress
        elif decay_type == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
        elif decay_type == "1-sqrt":
            factor = 1.0 - math.sqrt(progress)
        factor = factor * (1.0 - min_lr_ratio) + min_lr_ratio
        return max(0.0, factor)
    return min_lr_ratio


EPOCHS, SPE = 6, 5
T = EPOCHS * SPE
W = 7  # warmup steps, not a multiple of SPE on purpose

HF_CASES = [
    ("constant", {"warmup_steps": W}, lambda s: hf_constant_with_warmup(s, num_warmup_steps=W)),
    ("constant", {}, lambda s: 1.0),
    (
        "linear",
        {"warmup_steps": W},
        lambda s: hf_linear(s, num_warmup_steps=W, num_training_steps=T),
    ),
    (
        "warmup_cosine",
        {"warmup_steps": W},
        lambda s: hf_cosine(s, num_warmup_steps=W, num_training_steps=T),
    ),
    (
        "warmup_cosine",
        {"warmup_epochs": 1},
        lambda s: hf_cosine(s, num_warmup_steps=SPE, num_training_steps=T),
    ),
    (
        "warmup_cosine",
        {"warmup_steps": W, "restarts": 3},
        lambda s: hf_cosine_hard_restarts(
            s, num_warmup_steps=W, num_training_steps=T, num_cycles=3
        ),
    ),
    (
        "warmup_cosine",
        {"warmup_steps": W, "min_lr": 0.01},  # transformers: min_lr / optimizer.defaults["lr"]
        lambda s: hf_cosine_min_lr(
            s, num_warmup_steps=W, num_training_steps=T, min_lr_rate=0.01 / 0.1
        ),
    ),
    (
        "warmup_cosine",
        {"warmup_steps": W, "min_lr_rate": 0.2},
        lambda s: hf_cosine_min_lr(s, num_warmup_steps=W, num_training_steps=T, min_lr_rate=0.2),
    ),
    (
        "poly",
        {"warmup_steps": W, "power": 2.0, "lr_end": 1e-3},
        lambda s: hf_polynomial(
            s, num_warmup_steps=W, num_training_steps=T, lr_end=1e-3, power=2.0, lr_init=0.1
        ),
    ),
    (
        "poly",
        {},
        lambda s: hf_polynomial(
            s, num_warmup_steps=0, num_training_steps=T, lr_end=1e-7, power=1.0, lr_init=0.1
        ),
    ),
    ("inverse_sqrt", {"warmup_steps": W}, lambda s: hf_inverse_sqrt(s, num_warmup_steps=W)),
    (
        "inverse_sqrt",
        {"timescale": 4},
        lambda s: hf_inverse_sqrt(s, num_warmup_steps=0, timescale=4),
    ),
    (
        "wsd",
        {"warmup_steps": W, "decay_steps": 8},
        lambda s: hf_wsd(s, num_warmup_steps=W, num_stable_steps=T - W - 8, num_decay_steps=8),
    ),
    (
        "wsd",
        {"warmup_steps": W, "decay_steps": 8, "decay_type": "1-sqrt", "min_lr_rate": 0.1},
        lambda s: hf_wsd(
            s,
            num_warmup_steps=W,
            num_stable_steps=T - W - 8,
            num_decay_steps=8,
            decay_type="1-sqrt",
            min_lr_ratio=0.1,
        ),
    ),
    (
        "wsd",
        {"decay_type": "linear"},  # decay_fraction 0.1 of 30 steps = 3
        lambda s: hf_wsd(
            s, num_warmup_steps=0, num_stable_steps=27, num_decay_steps=3, decay_type="linear"
        ),
    ),
]


@pytest.mark.parametrize(
    ("name", "options", "reference"), HF_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(HF_CASES)]
)
def test_matches_transformers(name, options, reference):
    opt = make_optimizer(lrs=(0.1, 0.02))  # optimizer.defaults["lr"] = 0.1
    sched = build(name, opt, epochs=EPOCHS, steps_per_epoch=SPE, **options)
    assert sched.interval == "step"
    got = drive(sched, opt, epochs=EPOCHS, steps_per_epoch=SPE)
    for step, lrs in enumerate(got):
        f = reference(step)
        # per-group base LRs are respected: every group gets its own base × the factor
        assert lrs == pytest.approx([0.1 * f, 0.02 * f], rel=1e-12, abs=1e-15), step
    # the preview shows the same sequence (first group)
    assert preview(
        name, epochs=EPOCHS, steps_per_epoch=SPE, base_lr=0.1, **options
    ) == pytest.approx([reference(s) * 0.1 for s in range(T)], rel=1e-12, abs=1e-15)


def adjust_learning_rate(optimizer, epoch, lr):
    """The tutorial's rule, verbatim apart from ``args.lr``."""
    lr = lr * (0.1 ** (epoch // 30))
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr


def test_step_decay_is_the_tutorials_adjust_learning_rate():
    got = preview("step_decay", epochs=95, base_lr=0.05)
    opt = make_optimizer(lrs=(0.05,))
    expected = []
    for epoch in range(95):
        adjust_learning_rate(opt, epoch, 0.05)
        expected.append(opt.param_groups[0]["lr"])
    assert got == pytest.approx(expected, rel=1e-12)
    assert build("step_decay", make_optimizer()).interval == "epoch"
    assert preview("step_decay", epochs=5, factor=0.5, period=2) == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025]
    )


@pytest.mark.parametrize("warmup_type", ["linear", "exponential"])
@pytest.mark.parametrize(
    ("name", "options", "after"),
    [
        # the schedule's own clock starts when warmup ends (SequentialLR semantics)
        ("exponential", {"gamma": 0.8}, lambda e: 0.8**e),
        ("step", {"step_size": 2, "gamma": 0.5}, lambda e: 0.5 ** (e // 2)),
        (
            "cosine",
            {},
            lambda e: 0.5 * (1 + math.cos(math.pi * e / (EPOCHS - 2))),
        ),  # T_max = epochs - warmup
    ],
)
def test_warmup_in_front_of_an_epoch_schedule(name, options, after, warmup_type):
    s = 0.01
    opt = make_optimizer()
    sched = build(
        name,
        opt,
        epochs=EPOCHS,
        steps_per_epoch=SPE,
        warmup_steps=W,
        warmup_type=warmup_type,
        **options,
    )
    got = [lrs[0] for lrs in drive(sched, opt, epochs=EPOCHS, steps_per_epoch=SPE)]
    for step, lr in enumerate(got):
        if step < W:
            f = s + (1 - s) * step / W if warmup_type == "linear" else s ** (1 - step / W)
        else:
            # warmup ends inside epoch 1 (step 7 of 5-step epochs): epoch 2 is the schedule's epoch 0
            f = after(max(0, step // SPE - 2))
        assert lr == pytest.approx(0.1 * f, rel=1e-9), step


@pytest.mark.parametrize("warmup_type", ["linear", "exponential"])
def test_warmup_in_front_of_a_step_schedule_uses_sequential_lr(warmup_type):
    opt = make_optimizer()
    sched = build(
        "onecycle",
        opt,
        epochs=EPOCHS,
        steps_per_epoch=SPE,
        warmup_steps=W,
        warmup_type=warmup_type,
        warmup_start_factor=0.1,
    )
    assert isinstance(sched.scheduler, torch.optim.lr_scheduler.SequentialLR)
    got = [lrs[0] for lrs in drive(sched, opt, epochs=EPOCHS, steps_per_epoch=SPE)]
    # after the warmup, OneCycle runs over the remaining steps from its own start
    ref_opt = make_optimizer()
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=[0.1, 0.02], total_steps=T - W)
    initial = ref_opt.param_groups[0]["lr"]
    tail = []
    for _ in range(T - W):
        tail.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    assert got[W:] == pytest.approx(tail, rel=1e-12)
    assert got[0] == pytest.approx(0.1 * initial, rel=1e-12)  # both warmups start at the factor
    assert got[W - 1] < initial


def test_warmup_in_front_of_plateau():
    opt = make_optimizer()
    sched = build(
        "plateau",
        opt,
        epochs=EPOCHS,
        steps_per_epoch=SPE,
        warmup_epochs=2,
        patience=0,
        factor=0.5,
        warmup_start_factor=0.1,
    )
    assert sched.needs_metric and sched.warmup_steps == 2 * SPE
    metrics = [5.0, 4.0, 3.0, 3.0, 3.0, 3.0]  # plateaus from epoch 3 on
    got = [lrs[0] for lrs in drive(sched, opt, epochs=EPOCHS, steps_per_epoch=SPE, metrics=metrics)]
    expected_warm = [0.1 * (0.1 + 0.9 * s / (2 * SPE)) for s in range(2 * SPE)]
    assert got[: 2 * SPE] == pytest.approx(expected_warm, rel=1e-12)
    # metrics of epochs 0–1 arrive during warmup and are ignored; the plateau sees 3.0 after
    # epoch 2 (its best), then 3.0 (no gain, patience 0: halve), 3.0 (halve again)
    per_epoch = [got[e * SPE] for e in range(2, EPOCHS)]
    assert per_epoch == pytest.approx([0.1, 0.1, 0.05, 0.025], rel=1e-12)


def test_custom_classes_are_lr_schedulers_with_state():
    opt = make_optimizer()
    sched = C.WarmupCosineLR(opt, total_steps=10, warmup_steps=2)
    assert isinstance(sched, torch.optim.lr_scheduler.LRScheduler)
    for _ in range(4):
        opt.step()
        sched.step()
    state = sched.state_dict()
    assert state["last_epoch"] == 4 and state["total_steps"] == 10
    other_opt = make_optimizer()
    other = C.WarmupCosineLR(other_opt, total_steps=10, warmup_steps=2)
    other.load_state_dict(state)
    for o, s in ((opt, sched), (other_opt, other)):
        o.step()
        s.step()
    assert [g["lr"] for g in other_opt.param_groups] == [g["lr"] for g in opt.param_groups]


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (
            C.WarmupCosineLR,
            {"total_steps": 5, "warmup_steps": 6},
            "WarmupCosineLR: warmup_steps=6 exceeds total_steps=5",
        ),
        (
            C.PolyLR,
            {"total_steps": 5, "lr_end": 0.5},
            r"PolyLR: lr_end must be below the optimizer's lr \(0.1\)",
        ),
        (
            C.WSDLR,
            {"total_steps": 10, "warmup_steps": 5, "decay_steps": 6},
            "WSDLR: warmup_steps \\+ decay_steps",
        ),
        (C.WSDLR, {"total_steps": 10, "decay_type": "cos"}, "WSDLR: decay_type must be one of"),
        (
            C.WarmupConstantLR,
            {"warmup_steps": 3, "warmup_type": "exponential"},
            "needs warmup_start_factor > 0",
        ),
        (C.StepDecayLR, {"period": 0}, "StepDecayLR: period must be > 0"),
    ],
)
def test_custom_errors(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(make_optimizer(), **kwargs)
