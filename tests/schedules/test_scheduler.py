"""StropScheduler: resume, skipped fp16 steps, param groups added later, re-planning, errors."""

import copy
import io
import warnings

import pytest
import torch
from _schedule_helpers import drive, make_optimizer

from strop.precision import MixedPrecision
from strop.schedules import build, preview

EPOCHS, SPE = 6, 4
METRICS = [1.0, 0.8, 0.85, 0.9, 0.7, 0.75]


def _mult(epoch):
    return 0.9


def _decay(epoch):
    return 1 / (1 + epoch)


# every schedule, with and without warmup in front, as the trainer would configure it
SPECS = [
    ("lambda", {"lr_lambda": _decay}),
    ("multiplicative", {"lr_lambda": _mult}),
    ("step", {"step_size": 2}),
    ("multistep", {"milestones": [1, 3]}),
    ("exponential", {"gamma": 0.7}),
    ("cosine", {}),
    ("cosine", {"interval": "step", "eta_min": 0.001}),
    ("plateau", {"patience": 0, "factor": 0.5}),
    ("cyclic", {"base_lr": 0.001, "step_size_up": 3, "mode": "triangular2"}),
    ("onecycle", {}),
    ("cosine_restarts", {"T_0": 2, "T_mult": 2}),
    ("step_decay", {"period": 2}),
    ("warmup_cosine", {"warmup_steps": 5, "restarts": 2, "min_lr_rate": 0.1}),
    ("poly", {"warmup_epochs": 1, "power": 2.0}),
    ("linear", {"warmup_steps": 3}),
    ("inverse_sqrt", {"warmup_steps": 3}),
    ("wsd", {"warmup_steps": 3, "decay_fraction": 0.3}),
    ("constant", {"warmup_steps": 3}),
    ("cosine", {"warmup_steps": 6}),
    ("step", {"step_size": 1, "warmup_epochs": 1, "warmup_type": "exponential"}),
    ("plateau", {"patience": 0, "warmup_steps": 5}),
    ("onecycle", {"warmup_steps": 5}),
    (
        "cyclic",
        {"base_lr": 0.001, "step_size_up": 3, "warmup_steps": 2, "warmup_type": "exponential"},
    ),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(SPECS)]


def _full_run(name, options):
    opt = make_optimizer()
    sched = build(name, opt, epochs=EPOCHS, steps_per_epoch=SPE, **options)
    return drive(sched, opt, epochs=EPOCHS, steps_per_epoch=SPE, metrics=METRICS)


def _roundtrip(state):
    # a checkpoint goes through torch.save / torch.load(weights_only=True): plain data only
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("stop", [(3, 0), (2, 3)], ids=["epoch-boundary", "mid-epoch"])
@pytest.mark.parametrize(("name", "options"), SPECS, ids=IDS)
def test_resume_equals_uninterrupted(name, options, stop):
    expected = _full_run(name, options)

    opt = make_optimizer()
    sched = build(name, opt, epochs=EPOCHS, steps_per_epoch=SPE, **options)
    first = drive(sched, opt, epochs=EPOCHS, steps_per_epoch=SPE, metrics=METRICS, stop=stop)
    state = _roundtrip(sched.state_dict())

    # a fresh process: new optimizer (its LRs as configured) and schedule; only the schedule's
    # state is loaded, which carries the groups' current LRs
    opt2 = make_optimizer()
    sched2 = build(name, opt2, epochs=EPOCHS, steps_per_epoch=SPE, **options)
    sched2.load_state_dict(state)
    assert sched2.get_last_lr() == sched.get_last_lr()
    second = drive(sched2, opt2, epochs=EPOCHS, steps_per_epoch=SPE, metrics=METRICS, start=stop)
    assert first + second == expected


def _train(spec, options, *, inf_at):
    """A tiny fp16 training run; the gradients of the steps in ``inf_at`` are made inf."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    mp = MixedPrecision("fp16", "cpu", init_scale=256.0)
    sched = build(spec, opt, epochs=3, steps_per_epoch=4, **options)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    lrs, stepped = [], []
    for epoch in range(3):
        for step in range(4):
            lrs.append(opt.param_groups[0]["lr"])
            opt.zero_grad()
            with mp.autocast():
                loss = torch.nn.functional.mse_loss(model(x).float(), y)
            mp.backward(loss)
            if epoch * 4 + step in inf_at:
                model.weight.grad.fill_(float("inf"))
            stepped.append(mp.step(opt))
            sched.on_optimizer_step()
        sched.on_epoch_end(loss.detach())
    return lrs, stepped, mp


@pytest.mark.parametrize(
    ("spec", "options"),
    [
        ("onecycle", {}),
        ("cosine", {"warmup_steps": 3}),
        ("warmup_cosine", {"warmup_steps": 2}),
        ("step", {"step_size": 1}),
    ],
)
def test_skipped_fp16_steps_do_not_shift_the_schedule_or_warn(spec, options):
    # the very first step skipped is the case where torch warns "lr_scheduler.step() before
    # optimizer.step()"; pytest runs with warnings as errors, so a warning fails this test
    lrs, stepped, mp = _train(spec, options, inf_at={0, 5})
    assert stepped.count(False) == 2 and mp.skipped_steps == 2
    assert stepped[0] is False and stepped[5] is False
    assert lrs == pytest.approx(
        preview(spec, epochs=3, steps_per_epoch=4, base_lr=0.1, **options), rel=1e-12
    )


# an absolute floor (eta_min) is not proportional to a group's LR; all else is
PROPORTIONAL = [(spec, i) for spec, i in zip(SPECS, IDS, strict=True) if "eta_min" not in spec[1]]


@pytest.mark.parametrize(
    ("name", "options"), [s for s, _ in PROPORTIONAL], ids=[i for _, i in PROPORTIONAL]
)
def test_adopts_a_param_group_added_later(name, options):
    """Gradual unfreezing adds a group mid-run (pytorch/pytorch#104361): it joins the schedule at
    the current position, in proportion to its LR, and group 0 is unaffected."""
    reference = [lrs[0] for lrs in _full_run(name, options)]

    opt = make_optimizer(lrs=(0.1,))
    sched = build(name, opt, epochs=EPOCHS, steps_per_epoch=SPE, **options)
    seen = []
    for epoch in range(EPOCHS):
        if epoch == 2:
            opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.025})
        for _ in range(SPE):
            seen.append([g["lr"] for g in opt.param_groups])
            opt.step()
            sched.on_optimizer_step()
        sched.on_epoch_end(METRICS[epoch])
    assert [lrs[0] for lrs in seen] == pytest.approx(reference, rel=1e-12)
    for lrs in seen[2 * SPE + 1 :]:  # adopted at the first step of epoch 2
        assert lrs[1] == pytest.approx(0.25 * lrs[0], rel=1e-9)
    assert len(sched.state_dict()["lrs"]) == 2


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("cosine", {}),
        ("onecycle", {}),
        ("warmup_cosine", {"warmup_epochs": 1}),
        ("cosine", {"warmup_steps": 6}),
        ("linear", {}),
    ],
)
def test_replan_on_resume_with_more_epochs(name, options):
    """A 6-epoch run resumed after 3 epochs as a 10-epoch run follows the 10-epoch plan."""
    opt = make_optimizer()
    sched = build(name, opt, epochs=EPOCHS, steps_per_epoch=SPE, **options)
    drive(sched, opt, epochs=EPOCHS, steps_per_epoch=SPE, stop=(3, 0))
    state = sched.state_dict()

    opt2 = make_optimizer()
    sched2 = build(name, opt2, epochs=EPOCHS, steps_per_epoch=SPE, **options)
    sched2.load_state_dict(state)
    sched2.replan(epochs=10)
    rest = [lrs[0] for lrs in drive(sched2, opt2, epochs=10, steps_per_epoch=SPE, start=(3, 0))]
    planned = preview(name, epochs=10, steps_per_epoch=SPE, base_lr=0.1, **options)
    assert rest == pytest.approx(planned[3 * SPE :], rel=1e-9)
    assert rest[0] != pytest.approx(
        _full_run(name, options)[3 * SPE][0], rel=1e-3
    )  # the plan did change


def test_replan_changes_steps_per_epoch_mid_epoch():
    opt = make_optimizer()
    sched = build("onecycle", opt, epochs=4, steps_per_epoch=10)
    drive(sched, opt, epochs=4, steps_per_epoch=10, stop=(1, 5))
    sched.replan(steps_per_epoch=20)  # e.g. a larger dataset: position is epoch 1, 5 steps in
    assert sched.scheduler.total_steps == 80 and sched.steps == 25
    planned = preview("onecycle", epochs=4, steps_per_epoch=20)
    assert opt.param_groups[0]["lr"] == pytest.approx(planned[25], rel=1e-12)


def test_replan_keeps_plateau_state():
    opt = make_optimizer()
    sched = build("plateau", opt, epochs=4, steps_per_epoch=2, patience=0)
    drive(sched, opt, epochs=3, steps_per_epoch=2, metrics=[1.0, 1.0, 1.0])
    before = copy.deepcopy(sched.state_dict())
    sched.replan(epochs=8)
    assert sched.state_dict() == before


def test_errors_name_the_problem():
    opt = make_optimizer()
    with pytest.raises(
        ValueError,
        match=r"build: unknown schedule 'cosin'; did you mean 'cosine'\? available: .*OneCycleLR",
    ):
        build("cosin", opt)
    with pytest.raises(
        ValueError,
        match=r"build: schedule 'OneCycleLR' needs option\(s\) total_steps\. Hint: pass total_steps=",
    ):
        build("onecycle", opt)
    with pytest.raises(
        ValueError, match="build: schedule 'CosineAnnealingLR' needs option\\(s\\) T_max"
    ):
        build("cosine", opt)
    with pytest.raises(
        ValueError,
        match="build: unknown option 'Tmax' for schedule 'CosineAnnealingLR'; did you mean 'T_max'",
    ):
        build("cosine", opt, Tmax=5)
    with pytest.raises(ValueError, match="build: schedule 'StepLR' needs option\\(s\\) step_size"):
        build("step", opt)
    with pytest.raises(ValueError, match="build: warmup_epochs=2 needs steps_per_epoch"):
        build("cosine", opt, epochs=5, warmup_epochs=2)
    with pytest.raises(ValueError, match="build: give warmup_steps or warmup_epochs, not both"):
        build("cosine", opt, epochs=5, warmup_epochs=2, warmup_steps=3)
    with pytest.raises(
        ValueError, match="build: schedule 'ReduceLROnPlateau' steps on a validation metric"
    ):
        build("plateau", opt, interval="step")
    with pytest.raises(
        ValueError,
        match="build: schedule 'CosineAnnealingWarmRestarts': Expected positive integer T_0",
    ):
        build("cosine_restarts", opt, T_0=0)  # torch's own check, named
    with pytest.raises(ValueError, match="build: a schedule mapping needs a 'name' key"):
        build({"T_max": 3}, opt)
    with pytest.raises(TypeError, match="build: spec must be a schedule name or a mapping"):
        build(3, opt)
    with pytest.raises(TypeError, match=r"build: optimizer must be a torch\.optim\.Optimizer"):
        build("cosine", [1, 2], epochs=3)
    with pytest.raises(ValueError, match="build: warmup_steps must be >= 0; got -1"):
        build("cosine", opt, epochs=2, steps_per_epoch=10, warmup_steps=-1)


def test_plateau_without_metric_says_so():
    opt = make_optimizer()
    sched = build("plateau", opt)
    with pytest.raises(
        ValueError,
        match=r"on_epoch_end: schedule 'ReduceLROnPlateau' .* needs it; got metric=None. Hint: call sched.on_epoch_end\(metric=val_loss\)",
    ):
        sched.on_epoch_end()
    with pytest.raises(TypeError, match="on_epoch_end: metric must be a number; got str"):
        sched.on_epoch_end("0.5")
    sched.on_epoch_end(torch.tensor(0.5))  # a 0-dim tensor is a number
    assert sched.epochs == 1


def test_load_state_dict_checks():
    opt = make_optimizer()
    state = build("step", opt, step_size=1).state_dict()
    with pytest.raises(
        ValueError,
        match="load_state_dict: the state is of schedule 'StepLR'; this schedule is 'ExponentialLR'",
    ):
        build("exponential", make_optimizer(), gamma=0.5).load_state_dict(state)
    with pytest.raises(
        ValueError, match="load_state_dict: the state has 2 parameter groups; the optimizer has 1"
    ):
        build("step", make_optimizer(lrs=(0.1,)), step_size=1).load_state_dict(state)


# -- short runs: a warmup as long as the run or longer is clipped, not refused --------------


def _linear_ramp(t, warmup, start=0.01):
    """torch LinearLR's multiplier at step ``t`` (hand formula, docs/schedules.md)."""
    return start + (1 - start) * min(t, warmup) / warmup


def test_smoke_run_with_warmup_epoch_warns_once_and_ramps():
    # `strop train cfg --set epochs=1` with schedule {name: cosine, warmup_epochs: 1}
    opt = make_optimizer(lrs=(0.1,))
    with pytest.warns(UserWarning) as caught:
        sched = build({"name": "cosine", "warmup_epochs": 1}, opt, epochs=1, steps_per_epoch=5)
    assert len(caught) == 1
    assert "the warmup fills the run (1 epochs); the schedule after it never runs" in str(
        caught[0].message
    )
    lrs = drive(sched, opt, epochs=1, steps_per_epoch=5)
    assert [lr[0] for lr in lrs] == pytest.approx([0.1 * _linear_ramp(t, 5) for t in range(5)])


def test_warmup_longer_than_run_is_clipped_to_the_run():
    opt = make_optimizer(lrs=(0.1,))
    with pytest.warns(
        UserWarning, match=r"warmup \(30 optimizer steps\) is longer than the run \(20"
    ):
        sched = build("cosine", opt, epochs=2, steps_per_epoch=10, warmup_steps=30, interval="step")
    assert sched.warmup_steps == 20
    lrs = drive(sched, opt, epochs=2, steps_per_epoch=10)
    assert [lr[0] for lr in lrs] == pytest.approx([0.1 * _linear_ramp(t, 20) for t in range(20)])


def test_transformers_style_warmup_is_clipped_like_transformers():
    # transformers: get_cosine_schedule_with_warmup(num_warmup_steps=5, num_training_steps=5)
    # gives lr0 * t / 5 for t < 5
    opt = make_optimizer(lrs=(0.1,))
    with pytest.warns(UserWarning, match="clipped to 5, so the whole run is warmup"):
        sched = build("warmup_cosine", opt, epochs=1, steps_per_epoch=5, warmup_steps=8)
    lrs = drive(sched, opt, epochs=1, steps_per_epoch=5)
    assert [lr[0] for lr in lrs] == pytest.approx([0.1 * t / 5 for t in range(5)])


def test_warmup_shorter_than_run_does_not_warn():
    opt = make_optimizer(lrs=(0.1,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build({"name": "cosine", "warmup_epochs": 1}, opt, epochs=2, steps_per_epoch=5)


# -- step(): torch's single call where it is unambiguous -------------------------------------


def test_step_of_a_step_schedule_is_torchs_onecycle():
    opt, ref_opt = make_optimizer(lrs=(0.1,)), make_optimizer(lrs=(0.1,))
    sched = build("onecycle", opt, epochs=2, steps_per_epoch=5)
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=0.1, total_steps=10)
    for _ in range(10):
        assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"])
        opt.step()
        ref_opt.step()
        sched.step()
        ref.step()
    assert sched.steps == 10
    with pytest.raises(TypeError, match="step: schedule 'OneCycleLR' steps per optimizer step"):
        sched.step(0.5)


def test_step_of_an_epoch_schedule_is_one_epoch():
    opt, ref_opt = make_optimizer(lrs=(0.1,)), make_optimizer(lrs=(0.1,))
    sched = build("cosine", opt, epochs=4)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=4)
    for _ in range(4):
        opt.step()
        ref_opt.step()
        sched.step()
        ref.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"])
    assert sched.epochs == 4


def test_step_of_plateau_takes_the_metric():
    opt, ref_opt = make_optimizer(lrs=(0.1,)), make_optimizer(lrs=(0.1,))
    sched = build("plateau", opt, patience=0, factor=0.5)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(ref_opt, patience=0, factor=0.5)
    for metric in METRICS:
        sched.step(metric)
        ref.step(metric)
        assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"])
    assert opt.param_groups[0]["lr"] < 0.1  # it did cut
    with pytest.raises(ValueError, match="needs it; got metric=None"):
        sched.step()


def test_step_of_an_epoch_schedule_with_warmup_names_the_two_calls():
    opt = make_optimizer(lrs=(0.1,))
    sched = build("cosine", opt, epochs=4, steps_per_epoch=5, warmup_steps=3)
    with pytest.raises(
        RuntimeError,
        match=r"step: schedule 'CosineAnnealingLR' counts epochs but has a warmup of 3 .*"
        r"sched\.on_optimizer_step\(\) after every optimizer step and sched\.on_epoch_end\(metric\)",
    ):
        sched.step()
    assert sched.steps == 0 and sched.epochs == 0  # nothing moved
