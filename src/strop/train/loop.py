"""The training loop and validation, as plain functions.

One batch, read top to bottom::

    with autocast: loss, main = task.forward_loss(model, loss_fn, batch, aux_weight)
    amp.backward(loss / group)                         # scaled under fp16 only
    every `accumulation_steps` batches:
        amp.optimizer_step(...)                        # finite check -> unscale -> clip -> step -> update
        zero_grad; schedule.on_optimizer_step()        # after the optimizer step

:func:`train_one_epoch` runs a built :class:`~strop.train.setup.Run` over its loader and moves a
:class:`TrainState` (where training is); :func:`evaluate` needs only a model, a loss and a task.
Neither prints: callbacks do.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from strop.train.distributed import all_reduce_sum
from strop.train.recipe_run import mix as mix_batch
from strop.train.tasks import Task, build_task

__all__ = ["NonFiniteLossError", "TrainState", "current_lr", "evaluate", "train_one_epoch"]


class NonFiniteLossError(RuntimeError):
    """Training met a NaN/inf loss or gradient under ``nonfinite="stop"``; the message says where."""


@dataclass
class TrainState:
    """Where training is. Plain data: it goes into checkpoints as it is."""

    epoch: int = 0  # the epoch being trained (0-based)
    step: int = 0  # optimizer steps attempted so far
    batch_in_epoch: int = 0  # batches of `epoch` already consumed (mid-epoch resume)
    best_metric: float | None = None
    best_epoch: int | None = None
    skipped_steps: int = 0  # fp16 scaler skipped the optimizer step (inf/NaN gradients)
    nonfinite_batches: int = 0  # NaN/inf loss or gradient, skipped under nonfinite="skip"
    should_stop: bool = False  # a callback (early stopping) or a signal asks the loop to stop
    interrupted: str | None = None  # the signal's name when SIGINT/SIGTERM stopped training
    epoch_sums: dict[str, float] = field(default_factory=dict)  # running train sums of `epoch`

    def to_dict(self) -> dict[str, Any]:
        """A plain dict for checkpoints."""
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        """Inverse of :meth:`to_dict` (unknown keys are ignored for forward compatibility)."""
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def state_dict(self) -> dict[str, Any]:
        """Same as :meth:`to_dict` (the stateful-object protocol of ``strop.train.state``)."""
        return {**self.to_dict(), "epoch_sums": dict(self.epoch_sums)}

    def load_state_dict(self, data: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` in place."""
        self.__dict__.update(TrainState.from_dict(data).__dict__)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The largest param-group LR: with discriminative LRs that is the head's, the LR users set."""
    return max(float(g["lr"]) for g in optimizer.param_groups)


def lowest_lr(optimizer: torch.optim.Optimizer) -> float:
    """The smallest param-group LR (the earliest backbone layers with discriminative LRs)."""
    return min(float(g["lr"]) for g in optimizer.param_groups)


def _first_bad_grad(model: nn.Module) -> str | None:
    for name, p in model.named_parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return name
    return None


def _optimizer_step(run: Any, state: TrainState, local_bad: bool = False) -> None:
    """One optimizer step at an accumulation boundary; the schedule follows every attempt.

    ``local_bad``: a micro-batch of this group had a non-finite loss here. Under DDP with
    ``nonfinite: skip`` every rank learns it (one scalar all-reduce) and all skip the step
    together: the all-reduced gradient alone may hide it (a ReLU that is off everywhere turns the
    NaN into 0)."""
    config = run.config
    ctx = getattr(run, "ctx", None)
    if ctx is not None and ctx.enabled and config.nonfinite == "skip":
        flag = all_reduce_sum(torch.tensor([1.0 if local_bad else 0.0], dtype=torch.float64), ctx)
        if float(flag.item()) > 0:
            state.nonfinite_batches += 0 if local_bad else 1  # the bad rank counted its batch
            run.optimizer.zero_grad(set_to_none=True)
            state.step += 1
            if run.schedule is not None:
                run.schedule.on_optimizer_step()
            return
    result = run.amp.optimizer_step(
        run.optimizer, clip_grad_norm=config.clip_grad_norm, check_finite=True
    )
    if not result.finite:
        if config.nonfinite == "stop":
            raise NonFiniteLossError(
                f"non-finite gradient in parameter {_first_bad_grad(run.module)!r} at epoch {state.epoch}, "
                f"batch {state.batch_in_epoch - 1} (step {state.step}); nothing was saved from this step"
            )
        state.nonfinite_batches += 1
    if result.skipped_by_scaler:
        state.skipped_steps += 1
    run.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    if run.schedule is not None:
        run.schedule.on_optimizer_step()


class _BufferSnapshot:
    """The module's buffers (BatchNorm running statistics and counters) before a forward pass,
    kept in tensors allocated once and refreshed with one ``_foreach_copy_`` per batch, so that a
    skipped non-finite batch leaves them exactly as they were."""

    def __init__(self, buffers: list[Tensor]) -> None:
        self.buffers = buffers
        self.saved = [torch.empty_like(b) for b in buffers]

    def take(self) -> None:
        torch._foreach_copy_(self.saved, self.buffers)

    @torch.no_grad()
    def restore(self) -> None:
        torch._foreach_copy_(self.buffers, self.saved)


def _micro_batch(
    run: Any, batch: Any, state: TrainState, group: int, snapshot: _BufferSnapshot | None
) -> tuple[float, int]:
    """Forward, loss and backward of one batch; returns ``(loss value, batch size)``."""
    if snapshot is not None:
        snapshot.take()
    with run.amp.autocast():
        loss, main = run.task.forward_loss(
            run.module, run.loss_fn, batch, run.config.model.aux_weight
        )
    state.batch_in_epoch += 1
    value, n = float(loss.detach()), run.task.batch_size(batch)
    sums = state.epoch_sums
    if not math.isfinite(value) and run.config.nonfinite == "skip" and run.ctx.enabled:
        # the other ranks are in this step's gradient all-reduce: take part in it (with NaN
        # gradients); the step is then skipped on every rank (see _optimizer_step)
        run.amp.backward(loss * float("nan"))
    if math.isfinite(value):
        run.amp.backward(loss / group if group > 1 else loss)
        sums["loss"] += value * n
        sums["count"] += n
        sums["correct"] += run.task.train_counts(main, batch)
    elif run.config.nonfinite == "stop":
        raise NonFiniteLossError(
            f"non-finite loss ({value}) at epoch {state.epoch}, batch {state.batch_in_epoch - 1} "
            f"(step {state.step}); inputs finite: {bool(torch.isfinite(run.task.inputs(batch)).all())}"
        )
    else:
        state.nonfinite_batches += 1
        if snapshot is not None:  # a NaN forward already wrote NaN into BatchNorm's running stats
            snapshot.restore()
    return value, n


def _grad_sync(module: nn.Module, syncs: bool) -> contextlib.AbstractContextManager[Any]:
    """DDP's ``no_sync()`` for a micro-batch that does not end an accumulation group."""
    no_sync = getattr(module, "no_sync", None)
    return contextlib.nullcontext() if syncs or no_sync is None else no_sync()


def train_one_epoch(
    run: Any,
    state: TrainState,
    callbacks: Sequence[Any] = (),
    *,
    on_step: Callable[[TrainState], None] | None = None,
) -> dict[str, float]:
    """Train ``run.module`` over ``run.loader`` once; returns ``{"train_loss": ..., ...}``.

    ``state.batch_in_epoch`` batches are assumed already consumed (the loader's sampler skips
    them). ``on_step`` is called after each optimizer step (step checkpoints, signals). Stops
    early when ``state.should_stop``, never mid-accumulation (the state must be saveable).
    """
    run.module.train()
    state.epoch_sums = state.epoch_sums or {"loss": 0.0, "correct": 0.0, "count": 0.0}
    accum, total = run.config.accumulation_steps, run.batches_per_epoch
    parts_of = getattr(run.loss_fn, "parts", None) is not None
    buffers = list(run.module.buffers()) if run.config.nonfinite == "skip" else []
    snapshot = _BufferSnapshot(buffers) if buffers else None
    run.optimizer.zero_grad(set_to_none=True)
    tic = time.perf_counter()
    group_bad = False  # a non-finite loss in the current accumulation group (on this rank)
    for batch in run.loader:
        batch = run.task.to_device(batch, run.device, run.memory_format)
        batch = mix_batch(run, batch)  # Mixup/CutMix: soft targets (recipe_run)
        # the epoch's last accumulation group may be short: average over the batches it has
        group = min(accum, total - (state.batch_in_epoch // accum) * accum)
        # DDP all-reduces the gradients once per optimizer step, not once per micro-batch
        syncs = (state.batch_in_epoch + 1) % accum == 0 or state.batch_in_epoch + 1 == total
        with _grad_sync(run.module, syncs):
            value, n = _micro_batch(run, batch, state, group, snapshot)
        group_bad = group_bad or not math.isfinite(value)
        at_boundary = state.batch_in_epoch % accum == 0 or state.batch_in_epoch == total
        # the LRs this step uses, before the schedule moves them
        lr, lr_min = current_lr(run.optimizer), lowest_lr(run.optimizer)
        if at_boundary:
            _optimizer_step(run, state, group_bad)
            group_bad = False
        now = time.perf_counter()
        logs = {"loss": value, "lr": lr, "lr_min": lr_min, "images_per_s": n / max(now - tic, 1e-9)}
        if parts_of:  # strop's CombinedLoss: each part logged beside the sum
            logs.update({f"loss_{k}": float(v) for k, v in run.loss_fn.parts.items()})
        tic = now
        for cb in callbacks:
            hook = getattr(cb, "on_batch_end", None)
            if hook is not None:
                hook(state, logs)
        if at_boundary and on_step is not None:
            on_step(state)
        if state.should_stop and at_boundary:
            break
    return _train_logs(run.task, state.epoch_sums)


def _train_logs(task: Task, sums: dict[str, float]) -> dict[str, float]:
    out = {"train_loss": sums.get("loss", 0.0) / max(sums.get("count", 0.0), 1)}
    if "train_accuracy" in task.train_metrics and sums.get("count"):
        out["train_accuracy"] = sums["correct"] / sums["count"]
    return out


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loss_fn: Callable[..., Tensor],
    loader: Iterable[Any],
    *,
    task: Task | str,
    num_classes: int | None = None,
    precision: Any = "fp32",
    device: torch.device | str | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, float]:
    """Validation metrics of ``model`` over ``loader``, in eval mode (its mode is restored).

    ``task`` is a :class:`~strop.train.tasks.Task` or its name with ``num_classes``.
    Classification: ``val_loss``, ``val_accuracy`` and ``val_top5`` (more than 5 classes).
    Segmentation: ``val_loss``, ``val_dice`` and ``val_iou`` (mean over foreground classes present
    in prediction or target, from one confusion matrix), ``val_pixel_accuracy``. ``precision``
    (a name, ``Precision`` or ``MixedPrecision``) sets the autocast; ``reduce`` sums the totals
    across processes (distributed runs).
    """
    from strop.precision import MixedPrecision

    if isinstance(task, str):
        if num_classes is None:
            raise ValueError(f"evaluate: num_classes is required with task={task!r}; got None")
        task = build_task(task, num_classes)
    amp = (
        precision
        if isinstance(precision, MixedPrecision)
        else MixedPrecision(precision, device or "cpu")
    )
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    validate = getattr(task, "validate", None)
    if validate is not None:  # detection: COCO mAP from torchmetrics, synced by torchmetrics
        return validate(model, loader, amp=amp, device=device)
    was_training = model.training
    model.eval()
    totals = task.val_totals()
    try:
        for batch in loader:
            batch = task.to_device(batch, device, memory_format)
            with amp.autocast():
                loss, main = task.val_output(model, loss_fn, batch)
            task.val_update(totals, loss, main, batch)
    finally:
        model.train(was_training)
    if reduce is not None:
        totals = reduce(totals)
    return task.val_metrics(totals)
