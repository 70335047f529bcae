"""Learning-rate factors as pure functions of an explicit step.

Each function returns the multiplier of a parameter group's base LR at ``step`` (0-based: the
factor used by the ``step``-th optimizer step, or epoch for epoch schedules). The schedules in
:mod:`strop.schedules.custom` apply them; nothing here holds state.

The transformers-style factors reproduce Hugging Face ``transformers.optimization``'s
``get_*_schedule*`` lambdas exactly with their defaults (linear warmup from 0 over
``warmup_steps``); ``warmup_start_factor`` and ``warmup_type="exponential"`` generalise the warmup.
"""

from __future__ import annotations

import math

__all__ = [
    "constant_factor",
    "cosine_factor",
    "inverse_sqrt_factor",
    "linear_factor",
    "poly_factor",
    "step_decay_factor",
    "warmup_factor",
    "wsd_factor",
]


def warmup_factor(
    step: int, warmup_steps: int, *, start_factor: float = 0.0, kind: str = "linear"
) -> float:
    """Warmup multiplier for ``step < warmup_steps`` (1.0 from ``warmup_steps`` on).

    linear: ``s + (1 - s) * step / W`` (``s = 0`` is transformers' ``step / max(1, W)``);
    exponential: ``s ** (1 - step / W)``, a geometric ramp from ``s`` to 1 (needs ``s > 0``).
    """
    if step >= warmup_steps:
        return 1.0
    progress = step / max(1, warmup_steps)
    if kind == "exponential":
        return start_factor ** (1.0 - progress)
    return start_factor + (1.0 - start_factor) * progress


def _progress(step: int, warmup_steps: int, total_steps: int) -> float:
    # fraction of the decay phase done, clamped: past the horizon the LR stays at its floor
    return min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))


def cosine_factor(
    step: int,
    *,
    warmup_steps: int,
    total_steps: int,
    restarts: int = 1,
    min_lr_rate: float = 0.0,
    warmup_start_factor: float = 0.0,
    warmup_type: str = "linear",
) -> float:
    """Warmup, then cosine decay from 1 to ``min_lr_rate`` in ``restarts`` equal cycles.

    ``f = r + (1 - r) * 0.5 * (1 + cos(pi * ((restarts * p) mod 1)))`` with
    ``p = (step - W) / (T - W)`` and ``r = min_lr_rate``; ``f = r`` from ``step >= T`` on.
    ``restarts=1`` is transformers' ``get_cosine_schedule_with_warmup`` (``r = 0``) and
    ``get_cosine_with_min_lr_schedule_with_warmup(min_lr_rate=r)``; ``restarts=k`` is
    ``get_cosine_with_hard_restarts_schedule_with_warmup(num_cycles=k)``.
    """
    if step < warmup_steps:
        return warmup_factor(step, warmup_steps, start_factor=warmup_start_factor, kind=warmup_type)
    p = _progress(step, warmup_steps, total_steps)
    cos = 0.0 if p >= 1.0 else 0.5 * (1.0 + math.cos(math.pi * ((restarts * p) % 1.0)))
    return min_lr_rate + (1.0 - min_lr_rate) * cos


def linear_factor(
    step: int,
    *,
    warmup_steps: int,
    total_steps: int,
    warmup_start_factor: float = 0.0,
    warmup_type: str = "linear",
) -> float:
    """Warmup, then linear decay to 0 at ``total_steps``: ``max(0, (T - step) / (T - W))``
    (transformers' ``get_linear_schedule_with_warmup``)."""
    if step < warmup_steps:
        return warmup_factor(step, warmup_steps, start_factor=warmup_start_factor, kind=warmup_type)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def poly_factor(
    step: int,
    *,
    warmup_steps: int,
    total_steps: int,
    power: float = 1.0,
    end_rate: float = 0.0,
    warmup_start_factor: float = 0.0,
    warmup_type: str = "linear",
) -> float:
    """Warmup, then polynomial decay ``(1 - e) * (1 - p) ** power + e`` to ``e = end_rate``.

    transformers' ``get_polynomial_decay_schedule_with_warmup(lr_end, power)`` is this with
    ``e = lr_end / optimizer.defaults["lr"]`` (``p`` as in :func:`cosine_factor`; ``e`` after ``T``).
    """
    if step < warmup_steps:
        return warmup_factor(step, warmup_steps, start_factor=warmup_start_factor, kind=warmup_type)
    if step > total_steps:
        return end_rate
    remaining = 1.0 - (step - warmup_steps) / (total_steps - warmup_steps)
    return (1.0 - end_rate) * remaining**power + end_rate


def inverse_sqrt_factor(
    step: int,
    *,
    warmup_steps: int,
    timescale: int | None = None,
    warmup_start_factor: float = 0.0,
    warmup_type: str = "linear",
) -> float:
    """Warmup, then ``1 / sqrt((step + timescale - W) / timescale)``; ``timescale`` defaults to
    ``W`` (or 10,000 without warmup), as in transformers' ``get_inverse_sqrt_schedule``."""
    if timescale is None:
        timescale = warmup_steps or 10_000
    if step < warmup_steps:
        return warmup_factor(step, warmup_steps, start_factor=warmup_start_factor, kind=warmup_type)
    return 1.0 / math.sqrt((step + timescale - warmup_steps) / timescale)


def wsd_factor(
    step: int,
    *,
    warmup_steps: int,
    stable_steps: int,
    decay_steps: int,
    decay_type: str = "cosine",
    min_lr_rate: float = 0.0,
    warmup_start_factor: float = 0.0,
    warmup_type: str = "linear",
) -> float:
    """Warmup–stable–decay (transformers' ``get_wsd_schedule``): warmup over ``W`` steps, 1.0 for
    ``stable_steps``, then decay over ``decay_steps`` to ``min_lr_rate`` (``decay_type``
    ``"cosine"``: ``0.5 (1 + cos(pi p))``, ``"linear"``: ``1 - p``, ``"1-sqrt"``: ``1 - sqrt(p)``),
    warmup and decay both mapped to ``[r, 1]`` by ``f (1 - r) + r``."""
    r = min_lr_rate
    if step < warmup_steps:
        f = warmup_factor(step, warmup_steps, start_factor=warmup_start_factor, kind=warmup_type)
        return max(0.0, f * (1.0 - r) + r)
    if step < warmup_steps + stable_steps:
        return 1.0
    if step < warmup_steps + stable_steps + decay_steps:
        p = (step - warmup_steps - stable_steps) / max(1, decay_steps)
        if decay_type == "linear":
            f = 1.0 - p
        elif decay_type == "1-sqrt":
            f = 1.0 - math.sqrt(p)
        else:
            f = 0.5 * (1.0 + math.cos(math.pi * p))
        return max(0.0, f * (1.0 - r) + r)
    return r


def constant_factor(
    step: int,
    *,
    warmup_steps: int = 0,
    warmup_start_factor: float = 0.0,
    warmup_type: str = "linear",
) -> float:
    """1.0 after an optional warmup (transformers' ``get_constant_schedule[_with_warmup]``)."""
    return warmup_factor(step, warmup_steps, start_factor=warmup_start_factor, kind=warmup_type)


def step_decay_factor(epoch: int, *, factor: float = 0.1, period: int = 30) -> float:
    """``factor ** (epoch // period)``: the classic step decay (lr × 0.1 every 30 epochs, as in
    PyTorch's ImageNet example's ``adjust_learning_rate``)."""
    return factor ** (epoch // period)
