"""Schedules torch does not ship, as proper ``torch.optim.lr_scheduler.LRScheduler`` subclasses.

Each one multiplies every parameter group's base LR (``group["initial_lr"]``) by a factor from
:mod:`strop.schedules.functional`, so per-group LRs (discriminative fine-tuning) keep their
ratios, ``state_dict()`` works as for torch's classes, and ``last_epoch`` counts whatever the
schedule is stepped on (optimizer steps for the transformers-style ones, epochs for
``StepDecayLR``).
"""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from strop._checks import check_choice, check_positive, fail
from strop.schedules.functional import (
    constant_factor,
    cosine_factor,
    inverse_sqrt_factor,
    linear_factor,
    poly_factor,
    step_decay_factor,
    warmup_factor,
    wsd_factor,
)

__all__ = [
    "WSDLR",
    "ExponentialWarmupLR",
    "InverseSqrtLR",
    "PolyLR",
    "StepDecayLR",
    "WarmupConstantLR",
    "WarmupCosineLR",
    "WarmupLinearLR",
]


class _FactorLR(LRScheduler):
    """``lr = base_lr * factor(last_epoch)`` for every group (closed form, no drift)."""

    def factor(self, step: int) -> float:
        raise NotImplementedError

    def get_lr(self) -> list[float]:  # type: ignore[override]
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


def _check_warmup(func: str, warmup_steps: Any, start_factor: Any, kind: Any) -> None:
    check_positive(func, "warmup_steps", warmup_steps, allow_zero=True, integer=True)
    check_positive(func, "warmup_start_factor", start_factor, allow_zero=True)
    check_choice(func, "warmup_type", kind, ("linear", "exponential"))
    if start_factor > 1:
        fail(func, f"warmup_start_factor must be in [0, 1]; got {start_factor!r}")
    if kind == "exponential" and start_factor == 0 and warmup_steps > 0:
        fail(
            func, "warmup_type='exponential' needs warmup_start_factor > 0; got 0", hint="e.g. 0.01"
        )


class StepDecayLR(_FactorLR):
    """Step decay per epoch: ``lr = base_lr * factor ** (epoch // period)``.

    Args:
        optimizer: the optimizer.
        factor: multiplier applied every ``period`` epochs (default 0.1).
        period: epochs between decays (default 30).
    """

    def __init__(
        self, optimizer: Optimizer, factor: float = 0.1, period: int = 30, last_epoch: int = -1
    ) -> None:
        check_positive("StepDecayLR", "factor", factor)
        check_positive("StepDecayLR", "period", period, integer=True)
        self.decay, self.period = float(factor), int(period)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        return step_decay_factor(step, factor=self.decay, period=self.period)


class _Warmed(_FactorLR):
    def _init_warmup(
        self, func: str, warmup_steps: int, warmup_start_factor: float, warmup_type: str
    ) -> None:
        _check_warmup(func, warmup_steps, warmup_start_factor, warmup_type)
        self.warmup_steps = int(warmup_steps)
        self.warmup_start_factor = float(warmup_start_factor)
        self.warmup_type = warmup_type

    def _warm(self) -> dict[str, Any]:
        return {
            "warmup_steps": self.warmup_steps,
            "warmup_start_factor": self.warmup_start_factor,
            "warmup_type": self.warmup_type,
        }


def _check_total(func: str, total_steps: Any, warmup_steps: int) -> None:
    check_positive(func, "total_steps", total_steps, integer=True)
    if warmup_steps > total_steps:
        fail(func, f"warmup_steps={warmup_steps} exceeds total_steps={total_steps}")


class WarmupCosineLR(_Warmed):
    """Warmup then cosine decay to a floor, with optional hard restarts (see
    :func:`strop.schedules.functional.cosine_factor`).

    Args:
        total_steps: horizon ``T`` in optimizer steps (warmup included).
        warmup_steps: ``W`` (default 0).
        restarts: number of cosine cycles after warmup (default 1: no restart).
        min_lr: absolute floor, converted as transformers does to
            ``min_lr_rate = min_lr / optimizer.defaults["lr"]``; or give ``min_lr_rate``
            (a fraction of each group's base LR, default 0).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        restarts: int = 1,
        min_lr: float | None = None,
        min_lr_rate: float = 0.0,
        warmup_start_factor: float = 0.0,
        warmup_type: str = "linear",
        last_epoch: int = -1,
    ) -> None:
        func = "WarmupCosineLR"
        self._init_warmup(func, warmup_steps, warmup_start_factor, warmup_type)
        _check_total(func, total_steps, self.warmup_steps)
        check_positive(func, "restarts", restarts, integer=True)
        if min_lr is not None:
            check_positive(func, "min_lr", min_lr, allow_zero=True)
            min_lr_rate = min_lr / optimizer.defaults["lr"]
        check_positive(func, "min_lr_rate", min_lr_rate, allow_zero=True)
        self.total_steps, self.restarts, self.min_lr_rate = (
            int(total_steps),
            int(restarts),
            float(min_lr_rate),
        )
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        return cosine_factor(
            step,
            total_steps=self.total_steps,
            restarts=self.restarts,
            min_lr_rate=self.min_lr_rate,
            **self._warm(),
        )


class WarmupLinearLR(_Warmed):
    """Warmup then linear decay to 0 at ``total_steps`` (transformers' linear schedule)."""

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        warmup_start_factor: float = 0.0,
        warmup_type: str = "linear",
        last_epoch: int = -1,
    ) -> None:
        self._init_warmup("WarmupLinearLR", warmup_steps, warmup_start_factor, warmup_type)
        _check_total("WarmupLinearLR", total_steps, self.warmup_steps)
        self.total_steps = int(total_steps)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        return linear_factor(step, total_steps=self.total_steps, **self._warm())


class PolyLR(_Warmed):
    """Warmup then polynomial decay to ``lr_end`` (transformers'
    ``get_polynomial_decay_schedule_with_warmup``: ``lr_end`` is absolute, default 1e-7, and
    must be below ``optimizer.defaults["lr"]``; ``power`` default 1.0)."""

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        power: float = 1.0,
        lr_end: float = 1e-7,
        warmup_start_factor: float = 0.0,
        warmup_type: str = "linear",
        last_epoch: int = -1,
    ) -> None:
        func = "PolyLR"
        self._init_warmup(func, warmup_steps, warmup_start_factor, warmup_type)
        _check_total(func, total_steps, self.warmup_steps)
        check_positive(func, "power", power)
        lr_init = optimizer.defaults["lr"]
        if not lr_end < lr_init:
            fail(func, f"lr_end must be below the optimizer's lr ({lr_init}); got {lr_end!r}")
        self.total_steps, self.power, self.end_rate = (
            int(total_steps),
            float(power),
            lr_end / lr_init,
        )
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        return poly_factor(
            step,
            total_steps=self.total_steps,
            power=self.power,
            end_rate=self.end_rate,
            **self._warm(),
        )


class InverseSqrtLR(_Warmed):
    """Warmup then ``1/sqrt`` decay (transformers' ``get_inverse_sqrt_schedule``; ``timescale``
    defaults to ``warmup_steps`` or 10,000)."""

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int = 0,
        timescale: int | None = None,
        warmup_start_factor: float = 0.0,
        warmup_type: str = "linear",
        last_epoch: int = -1,
    ) -> None:
        self._init_warmup("InverseSqrtLR", warmup_steps, warmup_start_factor, warmup_type)
        if timescale is not None:
            check_positive("InverseSqrtLR", "timescale", timescale, integer=True)
        self.timescale = timescale
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        return inverse_sqrt_factor(step, timescale=self.timescale, **self._warm())


class WSDLR(_Warmed):
    """Warmup–stable–decay (transformers' ``get_wsd_schedule``).

    Args:
        total_steps: horizon; the stable phase is ``total_steps - warmup_steps - decay_steps``.
        decay_steps: length of the final decay (default ``round(decay_fraction * total_steps)``).
        decay_fraction: default 0.1.
        decay_type: ``"cosine"`` (default), ``"linear"`` or ``"1-sqrt"``.
        min_lr_rate: floor as a fraction of each base LR (default 0).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        decay_steps: int | None = None,
        decay_fraction: float = 0.1,
        decay_type: str = "cosine",
        min_lr_rate: float = 0.0,
        warmup_start_factor: float = 0.0,
        warmup_type: str = "linear",
        last_epoch: int = -1,
    ) -> None:
        func = "WSDLR"
        self._init_warmup(func, warmup_steps, warmup_start_factor, warmup_type)
        _check_total(func, total_steps, self.warmup_steps)
        check_choice(func, "decay_type", decay_type, ("cosine", "linear", "1-sqrt"))
        check_positive(func, "min_lr_rate", min_lr_rate, allow_zero=True)
        if decay_steps is None:
            check_positive(func, "decay_fraction", decay_fraction)
            decay_steps = round(decay_fraction * total_steps)
        check_positive(func, "decay_steps", decay_steps, allow_zero=True, integer=True)
        stable = total_steps - self.warmup_steps - decay_steps
        if stable < 0:
            fail(
                func,
                f"warmup_steps + decay_steps ({self.warmup_steps} + {decay_steps}) exceed total_steps={total_steps}",
            )
        self.total_steps, self.decay_steps, self.stable_steps = (
            int(total_steps),
            int(decay_steps),
            int(stable),
        )
        self.decay_type, self.min_lr_rate = decay_type, float(min_lr_rate)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        return wsd_factor(
            step,
            stable_steps=self.stable_steps,
            decay_steps=self.decay_steps,
            decay_type=self.decay_type,
            min_lr_rate=self.min_lr_rate,
            **self._warm(),
        )


class WarmupConstantLR(_Warmed):
    """A constant LR after an optional warmup (transformers' ``get_constant_schedule[_with_warmup]``)."""

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int = 0,
        warmup_start_factor: float = 0.0,
        warmup_type: str = "linear",
        last_epoch: int = -1,
    ) -> None:
        self._init_warmup("WarmupConstantLR", warmup_steps, warmup_start_factor, warmup_type)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        return constant_factor(step, **self._warm())


class ExponentialWarmupLR(LRScheduler):
    """Geometric warmup: the LR is multiplied by ``start_factor ** (1 - t / total_iters)`` —
    the exponential counterpart of torch's ``LinearLR`` (and, like it, chainable: each step
    multiplies the current LR, so it can sit in front of any schedule).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        start_factor: float = 0.01,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        check_positive("ExponentialWarmupLR", "start_factor", start_factor)
        check_positive("ExponentialWarmupLR", "total_iters", total_iters, integer=True)
        if start_factor > 1:
            fail("ExponentialWarmupLR", f"start_factor must be in (0, 1]; got {start_factor!r}")
        self.start_factor, self.total_iters = float(start_factor), int(total_iters)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        t = self.last_epoch
        if t == 0:
            ratio = self.start_factor
        elif t <= self.total_iters:
            ratio = self.start_factor ** (-1.0 / self.total_iters)
        else:
            ratio = 1.0
        return [group["lr"] * ratio for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[float]:
        f = warmup_factor(
            self.last_epoch, self.total_iters, start_factor=self.start_factor, kind="exponential"
        )
        return [base * f for base in self.base_lrs]
