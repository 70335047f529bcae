"""``build(spec, optimizer)``: a named LR schedule that knows when it steps.

The trainer calls two methods and never decides the interval itself::

    sched = build({"name": "cosine", "warmup_epochs": 1}, optimizer, epochs=10, steps_per_epoch=100)
    for epoch in range(10):
        for batch in loader:
            ...
            mp.step(optimizer)          # may be skipped by the fp16 GradScaler
            sched.on_optimizer_step()   # after every *attempted* step
        sched.on_epoch_end(metric=val_loss)

Torch's ten classes are wrapped, not rewritten; warmup goes in front of any schedule (torch's
``LinearLR`` or :class:`~strop.schedules.custom.ExponentialWarmupLR`, joined with
``SequentialLR`` where both run on optimizer steps). See docs/schedules.md for every rule.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim import lr_scheduler as tls

from strop._checks import check_choice, check_positive, did_you_mean, fail
from strop._registry import Registry
from strop.schedules import custom

__all__ = ["StropScheduler", "build", "names"]

STATE_VERSION = 1


@dataclass(frozen=True)
class _Entry:
    cls: type
    interval: str  # the default: "step" or "epoch"
    family: str  # "torch" | "custom" | "transformers" (warmup inside the formula)
    horizon: str | None = None  # option filled from epochs × steps_per_epoch when missing
    defaults: Callable[[Optimizer], dict[str, Any]] | None = None
    hidden: tuple[str, ...] = ()  # constructor arguments build() supplies itself
    aliases: tuple[str, ...] = field(default=())


def _group_lrs(optimizer: Optimizer) -> list[float]:
    return [float(g["lr"]) for g in optimizer.param_groups]


_ENTRIES: dict[str, _Entry] = {
    "LambdaLR": _Entry(tls.LambdaLR, "epoch", "torch", aliases=("lambda",)),
    "MultiplicativeLR": _Entry(tls.MultiplicativeLR, "epoch", "torch", aliases=("multiplicative",)),
    "StepLR": _Entry(tls.StepLR, "epoch", "torch", aliases=("step",)),
    "MultiStepLR": _Entry(tls.MultiStepLR, "epoch", "torch", aliases=("multistep", "multi_step")),
    "ExponentialLR": _Entry(tls.ExponentialLR, "epoch", "torch", aliases=("exponential", "exp")),
    "CosineAnnealingLR": _Entry(
        tls.CosineAnnealingLR, "epoch", "torch", horizon="T_max", aliases=("cosine",)
    ),
    "ReduceLROnPlateau": _Entry(tls.ReduceLROnPlateau, "epoch", "torch", aliases=("plateau",)),
    "CyclicLR": _Entry(
        tls.CyclicLR,
        "step",
        "torch",
        defaults=lambda opt: {"max_lr": _group_lrs(opt)},
        aliases=("cyclic",),
    ),
    "OneCycleLR": _Entry(
        tls.OneCycleLR,
        "step",
        "torch",
        horizon="total_steps",
        defaults=lambda opt: {"max_lr": _group_lrs(opt)},
        hidden=("epochs", "steps_per_epoch"),
        aliases=("onecycle", "one_cycle"),
    ),
    "CosineAnnealingWarmRestarts": _Entry(
        tls.CosineAnnealingWarmRestarts,
        "epoch",
        "torch",
        aliases=("cosine_restarts", "cosine_warm_restarts"),
    ),
    "step_decay": _Entry(custom.StepDecayLR, "epoch", "custom"),
    "warmup_cosine": _Entry(custom.WarmupCosineLR, "step", "transformers", horizon="total_steps"),
    "poly": _Entry(
        custom.PolyLR, "step", "transformers", horizon="total_steps", aliases=("polynomial",)
    ),
    "linear": _Entry(custom.WarmupLinearLR, "step", "transformers", horizon="total_steps"),
    "inverse_sqrt": _Entry(custom.InverseSqrtLR, "step", "transformers"),
    "wsd": _Entry(custom.WSDLR, "step", "transformers", horizon="total_steps"),
    "constant": _Entry(custom.WarmupConstantLR, "step", "transformers"),
}

SCHEDULES: Registry[_Entry] = Registry("schedule")
for _name, _entry in _ENTRIES.items():
    SCHEDULES.register(_name, *_entry.aliases)(_entry)

# options build() consumes itself, for every schedule
_STROP_OPTIONS = ("interval", "warmup_epochs", "warmup_start_factor", "warmup_steps", "warmup_type")
_WARMUP_KEYS = ("warmup_steps", "warmup_start_factor", "warmup_type")


def names() -> list[str]:
    """The registered schedule names (aliases such as ``"cosine"`` also work)."""
    return SCHEDULES.names()


def _options_of(entry: _Entry) -> dict[str, inspect.Parameter]:
    params = inspect.signature(entry.cls.__init__).parameters
    skip = {"self", "optimizer", "last_epoch", "verbose", *entry.hidden}
    if entry.family == "transformers":
        skip.update(_WARMUP_KEYS)  # given through build()'s own warmup options
    return {k: p for k, p in params.items() if k not in skip}


@contextmanager
def _no_order_warning() -> Iterator[None]:
    # The schedule advances on every *attempted* step, also one the fp16 GradScaler skipped: the
    # LR is a function of the loop's step count. torch then thinks the scheduler ran before the
    # optimizer; that warning is exactly the situation we intend, so it is silenced here only.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before"
        )
        yield


class StropScheduler:
    """A torch LR scheduler plus the rule for when it steps.

    Built by :func:`build`; the trainer calls :meth:`on_optimizer_step` after every attempted
    optimizer step and :meth:`on_epoch_end` after validation (:meth:`step` is torch's single
    call, for the schedules where it is unambiguous). Attributes: ``name`` (canonical),
    ``interval`` (``"step"`` or ``"epoch"``: what the main schedule counts; warmup always counts
    optimizer steps), ``needs_metric`` (plateau), ``scheduler`` (the torch scheduler),
    ``warmup`` (a warmup scheduler stepped per optimizer step in front of an epoch schedule,
    else None), ``steps`` and ``epochs`` (calls so far).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        scheduler: Any,
        *,
        name: str,
        interval: str,
        warmup: Any = None,
        warmup_steps: int = 0,
        plan: dict[str, Any],
        configured_lrs: list[float],
    ) -> None:
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.name = name
        self.interval = interval
        self.needs_metric = isinstance(scheduler, tls.ReduceLROnPlateau)
        self.warmup = warmup
        self.warmup_steps = warmup_steps
        self.steps = 0
        self.epochs = 0
        self._steps_at_epoch_start = 0
        self._main_started = warmup is None
        self._plan = plan
        self._configured_lrs = list(configured_lrs)

    def __repr__(self) -> str:
        warm = f", warmup_steps={self.warmup_steps}" if self.warmup_steps else ""
        return f"StropScheduler({self.name!r}, interval={self.interval!r}{warm}, steps={self.steps}, epochs={self.epochs})"

    # -- the two calls the trainer makes ---------------------------------------------------
    def on_optimizer_step(self) -> None:
        """Advance after an optimizer step (also one the fp16 GradScaler skipped)."""
        self._adopt_new_groups()
        self.steps += 1
        with _no_order_warning():
            if self.warmup is not None and self.steps <= self.warmup_steps:
                self.warmup.step()
            elif self.interval == "step":
                self.scheduler.step()

    def on_epoch_end(self, metric: float | torch.Tensor | None = None) -> None:
        """Advance after an epoch (after validation). ``metric`` feeds ReduceLROnPlateau (which
        raises without it); other schedules ignore it."""
        self._adopt_new_groups()
        if self.needs_metric:
            if metric is None:
                fail(
                    "on_epoch_end",
                    f"schedule {self.name!r} reduces the LR when a metric stops improving and needs it; got metric=None",
                    hint="call sched.on_epoch_end(metric=val_loss)",
                )
            if not isinstance(metric, (int, float, torch.Tensor)) or isinstance(metric, bool):
                fail(
                    "on_epoch_end",
                    f"metric must be a number; got {type(metric).__name__} {metric!r}",
                    exc=TypeError,
                )
        self.epochs += 1
        self._steps_at_epoch_start = self.steps
        if self.interval != "epoch":
            return
        if self._main_started:
            with _no_order_warning():
                if self.needs_metric:
                    value = metric.detach() if isinstance(metric, torch.Tensor) else metric
                    self.scheduler.step(float(value))  # type: ignore[arg-type]
                else:
                    self.scheduler.step()
        elif self.steps >= self.warmup_steps:
            # warmup ended during this epoch: the next epoch is the schedule's epoch 0
            self._main_started = True

    def step(self, metric: float | torch.Tensor | None = None) -> None:
        """torch's one call, where it is unambiguous: what torch users call ``scheduler.step()``.

        - ``interval="step"`` (OneCycle, the transformers-style schedules, any schedule with
          ``interval="step"``): call it after every optimizer step; same as
          :meth:`on_optimizer_step`.
        - ``interval="epoch"`` without warmup (``StepLR``, ``cosine``, ``plateau``, ...): call it
          once per epoch, after validation; same as :meth:`on_epoch_end` (``metric`` feeds
          ``ReduceLROnPlateau``, as in ``scheduler.step(val_loss)``).
        - an epoch schedule with a warmup in front runs on two clocks (the warmup per optimizer
          step, the schedule per epoch), which one call cannot serve: it raises ``RuntimeError``
          naming the two calls to make instead.
        """
        if self.interval == "step":
            if metric is not None:
                fail(
                    "step",
                    f"schedule {self.name!r} steps per optimizer step and takes no metric; got {metric!r}",
                    exc=TypeError,
                )
            self.on_optimizer_step()
        elif self.warmup is None:
            self.on_epoch_end(metric)
        else:
            fail(
                "step",
                f"schedule {self.name!r} counts epochs but has a warmup of {self.warmup_steps} "
                "optimizer steps in front, so one step() cannot say which clock moved",
                hint="call sched.on_optimizer_step() after every optimizer step and "
                "sched.on_epoch_end(metric) after every epoch",
                exc=RuntimeError,
            )

    def get_last_lr(self) -> list[float]:
        """The current LR of every parameter group."""
        return _group_lrs(self.optimizer)

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain data: counters, the torch schedulers' states and the groups' LRs."""
        return {
            "version": STATE_VERSION,
            "name": self.name,
            "steps": self.steps,
            "epochs": self.epochs,
            "steps_at_epoch_start": self._steps_at_epoch_start,
            "main_started": self._main_started,
            "scheduler": self.scheduler.state_dict(),
            "warmup": None if self.warmup is None else self.warmup.state_dict(),
            "lrs": _group_lrs(self.optimizer),
            "initial_lrs": [g.get("initial_lr") for g in self.optimizer.param_groups],
            "configured_lrs": list(self._configured_lrs),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` exactly, the groups' LRs included (so the optimizer's own
        state need not be loaded first). The saved plan (e.g. OneCycle's ``total_steps``) is
        restored too; call :meth:`replan` afterwards to change the horizon."""
        func = "load_state_dict"
        if state.get("name") != self.name:
            fail(
                func,
                f"the state is of schedule {state.get('name')!r}; this schedule is {self.name!r}",
            )
        if len(state["lrs"]) != len(self.optimizer.param_groups):
            fail(
                func,
                f"the state has {len(state['lrs'])} parameter groups; the optimizer has {len(self.optimizer.param_groups)}",
                hint="add the param groups of gradual unfreezing before loading the schedule",
            )
        if (state["warmup"] is None) != (self.warmup is None):
            fail(
                func, "the state and this schedule disagree on warmup; build with the same options"
            )
        self.steps = int(state["steps"])
        self.epochs = int(state["epochs"])
        self._steps_at_epoch_start = int(state["steps_at_epoch_start"])
        self._main_started = bool(state["main_started"])
        self._configured_lrs = list(state["configured_lrs"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.warmup is not None:
            self.warmup.load_state_dict(state["warmup"])
        for group, lr, initial in zip(
            self.optimizer.param_groups, state["lrs"], state["initial_lrs"], strict=True
        ):
            group["lr"] = lr
            if initial is not None:
                group["initial_lr"] = initial

    # -- re-planning -----------------------------------------------------------------------
    def replan(self, *, epochs: int | None = None, steps_per_epoch: int | None = None) -> None:
        """Change the horizon (total epochs and/or steps per epoch) of a running schedule.

        The schedule becomes the one :func:`build` would have made for the new horizon, at the
        same position (epochs done, and steps into the current epoch): its LR is the new plan's
        LR at that point, which may differ from the old one (a cosine stretched from 30 to 60
        epochs is higher at epoch 20 than it was). Horizon-free schedules (plateau, step, ...)
        keep their state. Typical use on resume::

            sched = build(spec, opt, epochs=old_epochs, steps_per_epoch=spe)
            sched.load_state_dict(ckpt["scheduler"])
            sched.replan(epochs=new_epochs)
        """
        plan = dict(self._plan)
        new_epochs = plan["epochs"] if epochs is None else epochs
        new_spe = plan["steps_per_epoch"] if steps_per_epoch is None else steps_per_epoch
        if self.needs_metric:
            # a plateau schedule has no horizon and its metric history cannot be replayed
            self._plan.update(epochs=new_epochs, steps_per_epoch=new_spe)
            return
        into_epoch = self.steps - self._steps_at_epoch_start
        per_epoch = new_spe or (self._steps_at_epoch_start // self.epochs if self.epochs else 0)
        # put the groups back as they were before any schedule touched them, then rebuild
        for group, lr in zip(self.optimizer.param_groups, self._configured_lrs, strict=True):
            group["lr"] = lr
            group.pop("initial_lr", None)
        fresh = build(
            plan["spec"],
            self.optimizer,
            epochs=new_epochs,
            steps_per_epoch=new_spe,
            **plan["options"],
        )
        for _ in range(self.epochs):
            for _ in range(per_epoch):
                fresh.on_optimizer_step()
            fresh.on_epoch_end()
        for _ in range(into_epoch):
            fresh.on_optimizer_step()
        self.__dict__.update(fresh.__dict__)

    # -- param groups added after build (gradual unfreezing) --------------------------------
    def _adopt_new_groups(self) -> None:
        groups = self.optimizer.param_groups
        n_old = len(self._configured_lrs)
        if len(groups) == n_old:
            return
        if len(groups) < n_old:
            fail(
                "StropScheduler", f"the optimizer lost parameter groups ({n_old} -> {len(groups)})"
            )
        ref = next((i for i, lr in enumerate(self._configured_lrs) if lr > 0), 0)
        ref_group, ref_base = groups[ref], self._configured_lrs[ref]
        for index in range(n_old, len(groups)):
            group = groups[index]
            base = float(group["lr"])
            ratio = base / ref_base if ref_base > 0 else 1.0
            # the new group joins at the schedule's current position, in proportion to its LR
            for key in ("initial_lr", "max_lr", "min_lr"):
                if key in ref_group:
                    group[key] = ref_group[key] * ratio
            for key in ("max_momentum", "base_momentum"):
                if key in ref_group:
                    group[key] = ref_group[key]
            group["lr"] = float(ref_group["lr"]) * ratio
            for sched in (self.scheduler, self.warmup):
                if sched is not None:
                    _extend(sched, n_old, ref, ratio, group["lr"])
            self._configured_lrs.append(base)
            n_old += 1


def _extend(sched: Any, n_old: int, ref: int, ratio: float, lr: float) -> None:
    """Append a group's entry to every per-group list a torch scheduler keeps."""
    for child in getattr(sched, "_schedulers", ()):
        _extend(child, n_old, ref, ratio, lr)
    for key, scale in (("base_lrs", True), ("max_lrs", True), ("min_lrs", True),
                       ("lr_lambdas", False), ("base_momentums", False), ("max_momentums", False)):  # fmt: skip
        values = getattr(sched, key, None)
        if isinstance(values, list) and len(values) == n_old:
            values.append(values[ref] * ratio if scale else values[ref])
    last = getattr(sched, "_last_lr", None)
    if isinstance(last, list) and len(last) == n_old:
        last.append(lr)


# -- build -----------------------------------------------------------------------------------
def _parse_spec(spec: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping):
        if "name" not in spec:
            fail("build", f"a schedule mapping needs a 'name' key; got keys {sorted(spec)}")
        options = dict(spec)
        return options.pop("name"), options
    fail(
        "build",
        f"spec must be a schedule name or a mapping with 'name'; got {type(spec).__name__} {spec!r}",
        exc=TypeError,
    )


def _warmup_steps(
    func: str, options: dict[str, Any], steps_per_epoch: int | None, interval: str, family: str
) -> int:
    """Warmup length in the units the warmup is counted in (see docs/schedules.md)."""
    steps = options.pop("warmup_steps", None)
    epochs = options.pop("warmup_epochs", None)
    if steps is not None and epochs is not None:
        fail(func, f"give warmup_steps or warmup_epochs, not both; got {steps!r} and {epochs!r}")
    if steps is not None:
        check_positive(func, "warmup_steps", steps, allow_zero=True, integer=True)
        if family == "transformers" and interval == "epoch":
            fail(
                func,
                "warmup_steps with interval='epoch' counts epochs, which is confusing",
                hint="use warmup_epochs",
            )
        return int(steps)
    if epochs is None:
        return 0
    check_positive(func, "warmup_epochs", epochs, allow_zero=True)
    if family == "transformers" and interval == "epoch":
        if epochs != int(epochs):
            fail(
                func, f"warmup_epochs must be a whole number with interval='epoch'; got {epochs!r}"
            )
        return int(epochs)
    if steps_per_epoch is None:
        fail(
            func,
            f"warmup_epochs={epochs!r} needs steps_per_epoch",
            hint="pass steps_per_epoch=... or use warmup_steps",
        )
    return round(epochs * steps_per_epoch)


@dataclass
class _Warmup:
    steps: int  # optimizer steps (epochs for a transformers-style schedule with interval='epoch')
    kind: str  # "linear" | "exponential"
    start: float  # LR multiplier at the first step


def _check_build_args(optimizer: Any, epochs: int | None, steps_per_epoch: int | None) -> None:
    if not isinstance(optimizer, Optimizer):
        fail(
            "build",
            f"optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}",
            exc=TypeError,
        )
    for arg, value in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch)):
        if value is not None:
            check_positive("build", arg, value, integer=True)


def _lookup(spec: Any) -> tuple[str, _Entry, dict[str, Any]]:
    """``(canonical name, registry entry, the spec's options)``."""
    name, spec_options = _parse_spec(spec)
    try:
        canonical = SCHEDULES.canonical(name)
    except ValueError as exc:
        fail("build", str(exc))
    return canonical, SCHEDULES.get(canonical), spec_options


def _pop_interval(entry: _Entry, where: str, options: dict[str, Any]) -> str:
    interval = options.pop("interval", entry.interval)
    check_choice("build", "interval", interval, ("step", "epoch"))
    if entry.cls is tls.ReduceLROnPlateau and interval != "epoch":
        fail(
            "build",
            f"{where} steps on a validation metric, i.e. per epoch; got interval={interval!r}",
        )
    return interval


def _pop_warmup(
    entry: _Entry, options: dict[str, Any], steps_per_epoch: int | None, interval: str
) -> _Warmup:
    steps = _warmup_steps("build", options, steps_per_epoch, interval, entry.family)
    kind = options.pop("warmup_type", "linear")
    check_choice("build", "warmup_type", kind, ("linear", "exponential"))
    start = options.pop("warmup_start_factor", None)
    if start is None:
        start = 0.0 if entry.family == "transformers" and kind == "linear" else 0.01
    return _Warmup(steps, kind, start)


def _check_options(
    entry: _Entry, where: str, options: dict[str, Any]
) -> dict[str, inspect.Parameter]:
    """Refuse an option the schedule does not take; return the ones it takes."""
    allowed = _options_of(entry)
    for key in options:
        if key not in allowed:
            known = [*allowed, *_STROP_OPTIONS]
            fail(
                "build",
                f"unknown option {key!r} for {where}{did_you_mean(key, known)} options: {', '.join(known)}",
            )
    return allowed


def _clip_warmup(
    where: str,
    warmup: _Warmup,
    interval: str,
    family: str,
    epochs: int | None,
    steps_per_epoch: int | None,
) -> bool:
    """Clip a warmup longer than the run to the run (in place), with one warning; ``True`` if so.

    A smoke run (``epochs=1``) of a config with ``warmup_epochs=1`` is what users try first;
    transformers' and timm's schedules accept it (the run is then warmup only), so strop does too.
    """
    if epochs is None or warmup.steps == 0:
        return False
    if family == "transformers" and interval == "epoch":
        run, unit = epochs, "epochs"
    elif steps_per_epoch is None:
        return False
    else:
        run, unit = epochs * steps_per_epoch, "optimizer steps"
    if warmup.steps <= run:
        return False
    warnings.warn(
        f"build: {where}: the warmup ({warmup.steps} {unit}) is longer than the run "
        f"({run} {unit}); clipped to {run}, so the whole run is warmup",
        stacklevel=3,
    )
    warmup.steps = run
    return True


def _fill_horizon(
    entry: _Entry,
    where: str,
    options: dict[str, Any],
    warmup: _Warmup,
    interval: str,
    epochs: int | None,
    steps_per_epoch: int | None,
    *,
    clipped: bool,
) -> None:
    """Set the schedule's horizon (``T_max``, ``total_steps``) from the run, minus a warmup in
    front of it, unless given; a transformers-style schedule gets the warmup as options."""
    if interval == "step":
        known = epochs is not None and steps_per_epoch is not None
        horizon = epochs * steps_per_epoch if known else None  # type: ignore[operator]
        in_front: int | None = warmup.steps
    else:
        horizon = epochs
        in_front = 0
        if warmup.steps and entry.family != "transformers":
            in_front = math.ceil(warmup.steps / steps_per_epoch) if steps_per_epoch else None
    if entry.family == "transformers":
        in_front = 0  # their warmup is part of the formula, inside the horizon
        options.update(
            warmup_steps=warmup.steps, warmup_start_factor=warmup.start, warmup_type=warmup.kind
        )
    if entry.horizon is None or entry.horizon in options or horizon is None or in_front is None:
        return
    left = horizon - in_front
    if left < 1 and not clipped:
        unit = "optimizer steps" if interval == "step" else "epochs"
        warnings.warn(
            f"build: {where}: the warmup fills the run ({horizon} {unit}); "
            f"the schedule after it never runs",
            stacklevel=3,
        )
    # a run that is all warmup never reaches the schedule; torch still needs a horizon >= 1
    options[entry.horizon] = max(1, left)


def _check_missing(
    entry: _Entry,
    where: str,
    options: dict[str, Any],
    allowed: dict[str, inspect.Parameter],
    interval: str,
) -> None:
    missing = [
        k
        for k, p in allowed.items()
        if k not in options
        and (p.default is inspect.Parameter.empty or (k == entry.horizon and p.default is None))
    ]
    if not missing:
        return
    hint = None
    if entry.horizon in missing:
        unit = "steps" if interval == "step" else "epochs"
        hint = f"pass {entry.horizon}=<{unit}> or build(..., epochs=..., steps_per_epoch=...) so strop can compute it"
    fail("build", f"{where} needs option(s) {', '.join(missing)}", hint=hint)


def _construct(
    entry: _Entry,
    where: str,
    optimizer: Optimizer,
    options: dict[str, Any],
    warmup: _Warmup,
    interval: str,
) -> tuple[Any, Any]:
    """``(scheduler, warmup scheduler stepped separately or None)``, torch's errors named."""
    try:
        scheduler = entry.cls(optimizer, **options)
        if not warmup.steps or entry.family == "transformers":
            return scheduler, None
        if warmup.kind == "linear":
            check_positive("build", "warmup_start_factor", warmup.start)
            ramp = tls.LinearLR(
                optimizer, start_factor=warmup.start, end_factor=1.0, total_iters=warmup.steps
            )
        else:
            ramp = custom.ExponentialWarmupLR(
                optimizer, start_factor=warmup.start, total_iters=warmup.steps
            )
        if interval == "step":
            # same clock for both: torch's SequentialLR hands over at the milestone
            return tls.SequentialLR(optimizer, [ramp, scheduler], milestones=[warmup.steps]), None
        return scheduler, ramp
    except (ValueError, TypeError, KeyError) as exc:
        if str(exc).startswith("build:"):
            raise
        fail("build", f"{where}: {exc}")


def build(
    spec: str | Mapping[str, Any],
    optimizer: Optimizer,
    *,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    **options: Any,
) -> StropScheduler:
    """Build a named LR schedule for ``optimizer``.

    Args:
        spec: a name (``"cosine"``, ``"OneCycleLR"``, ``"warmup_cosine"``, ...; see
            :func:`names`) or a mapping ``{"name": ..., **options}``.
        optimizer: any ``torch.optim.Optimizer``; each group's LR is its base LR.
        epochs: total epochs of the run (fills ``T_max`` / ``total_steps`` when not given).
        steps_per_epoch: optimizer steps per epoch (after gradient accumulation).
        **options: the schedule's own arguments (torch's, for torch's classes) plus strop's:
            ``warmup_steps`` or ``warmup_epochs`` (default 0), ``warmup_start_factor`` (LR
            multiplier at the first step; default 0 for the transformers-style schedules, 0.01
            in front of the others), ``warmup_type`` (``"linear"`` or ``"exponential"``) and
            ``interval`` (``"step"`` or ``"epoch"``: override what the schedule counts).
            Options given here override those in a mapping ``spec``. A warmup longer than the
            run (``epochs`` x ``steps_per_epoch``) is clipped to the run with a warning.

    Returns:
        A :class:`StropScheduler`; the optimizer's LRs are set to the first step's.

    Raises:
        ValueError: unknown schedule (listing the known ones, with a did-you-mean), unknown or
            missing option (naming it), or an argument torch rejects (with the schedule's name).
        TypeError: ``spec`` is neither a string nor a mapping.
    """
    _check_build_args(optimizer, epochs, steps_per_epoch)
    canonical, entry, spec_options = _lookup(spec)
    options = {**spec_options, **options}
    plan = {"spec": canonical, "options": dict(options)}
    plan.update(epochs=epochs, steps_per_epoch=steps_per_epoch)
    configured_lrs = _group_lrs(optimizer)
    where = f"schedule {canonical!r}"

    interval = _pop_interval(entry, where, options)
    warmup = _pop_warmup(entry, options, steps_per_epoch, interval)
    allowed = _check_options(entry, where, options)
    if entry.defaults is not None:
        for key, value in entry.defaults(optimizer).items():
            options.setdefault(key, value)
    clipped = _clip_warmup(where, warmup, interval, entry.family, epochs, steps_per_epoch)
    _fill_horizon(entry, where, options, warmup, interval, epochs, steps_per_epoch, clipped=clipped)
    _check_missing(entry, where, options, allowed, interval)
    scheduler, ramp = _construct(entry, where, optimizer, options, warmup, interval)
    return StropScheduler(
        optimizer,
        scheduler,
        name=canonical,
        interval=interval,
        warmup=ramp,
        warmup_steps=warmup.steps if entry.family != "transformers" else 0,
        plan=plan,
        configured_lrs=configured_lrs,
    )
