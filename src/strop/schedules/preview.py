"""The LR sequence of a schedule, without training anything."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from strop._checks import check_positive, fail
from strop.schedules.scheduler import build

__all__ = ["preview"]


def preview(
    spec: str | Mapping[str, Any],
    *,
    epochs: int,
    steps_per_epoch: int = 1,
    base_lr: float = 0.1,
    metrics: Sequence[float] | None = None,
    **options: Any,
) -> list[float]:
    """The LR of every optimizer step of a run, as the trainer would drive the schedule.

    Args:
        spec, **options: as for :func:`strop.schedules.build` (CyclicLR's own ``base_lr`` goes
            in a mapping spec, ``{"name": "cyclic", "base_lr": 0.001}``, as ``base_lr`` here is
            the optimizer's).
        epochs: epochs of the run.
        steps_per_epoch: optimizer steps per epoch (default 1: one value per epoch).
        base_lr: the optimizer's LR (an SGD with momentum 0.9, so momentum-cycling schedules
            such as OneCycle work).
        metrics: one validation metric per epoch for ``"plateau"`` (default: a constant, i.e.
            a metric that never improves, so the reductions show).

    Returns:
        ``epochs * steps_per_epoch`` floats: element ``i`` is the LR used by optimizer step
        ``i`` (first parameter group).
    """
    func = "preview"
    check_positive(func, "epochs", epochs, integer=True)
    check_positive(func, "steps_per_epoch", steps_per_epoch, integer=True)
    check_positive(func, "base_lr", base_lr)
    if metrics is not None and len(metrics) < epochs:
        fail(func, f"metrics needs one value per epoch ({epochs}); got {len(metrics)}")
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=base_lr, momentum=0.9)
    sched = build(spec, optimizer, epochs=epochs, steps_per_epoch=steps_per_epoch, **options)
    lrs: list[float] = []
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            lrs.append(float(optimizer.param_groups[0]["lr"]))
            optimizer.step()  # no gradient: a no-op that keeps torch's step-order check satisfied
            sched.on_optimizer_step()
        sched.on_epoch_end(metrics[epoch] if metrics is not None else 1.0)
    return lrs
