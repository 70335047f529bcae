"""The training loop: the tutorial's loop, with mixed precision, accumulation and clipping.

Read top to bottom, one batch is::

    with autocast: output = model(x); loss = loss_fn(output, y) (+ 0.4 × aux losses)
    scaled backward                                    # fp16 only; a no-op scaler otherwise
    every `accumulation_steps` batches:
        unscale -> clip -> optimizer.step -> scaler.update -> zero_grad
        scheduler.on_optimizer_step()                  # after optimizer.step, as the tutorial says

:func:`train_one_epoch` and :func:`evaluate` are plain functions over an :class:`Engine` (what
trains) and a :class:`TrainState` (where training is); they never print — callbacks do.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from strop.finetune import split_outputs

__all__ = ["Engine", "NonFiniteLossError", "TrainState", "evaluate", "train_one_epoch"]


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


@dataclass
class Engine:
    """Everything one training step needs, built once by the trainer."""

    model: nn.Module
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    optimizer: torch.optim.Optimizer
    amp: Any  # strop.precision.MixedPrecision
    scheduler: Any | None = None  # strop.schedules.StropScheduler
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    memory_format: torch.memory_format = torch.contiguous_format
    accumulation_steps: int = 1
    clip_grad_norm: float | None = None
    aux_weight: float = 0.4
    nonfinite: str = "skip"  # "skip" the batch and count it, or "stop" with a diagnostic
    task: str = "classification"
    num_classes: int = 2
    last_parts: dict[str, float] = field(default_factory=dict)  # a combined loss's parts, last batch

    def to_device(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Move a batch; images get the engine's memory format (channels_last where faster)."""
        non_blocking = self.device.type == "cuda"
        if x.dim() == 4:
            x = x.to(self.device, non_blocking=non_blocking, memory_format=self.memory_format)
        else:  # cached features (N, D): no memory format applies
            x = x.to(self.device, non_blocking=non_blocking)
        return x, y.to(self.device, non_blocking=non_blocking)

    def compute_loss(self, output: Any, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(loss, main_output)``: main loss plus ``aux_weight`` × each auxiliary head's loss."""
        main, aux = split_outputs(output)
        loss = self.loss_fn(main, y)
        parts = getattr(self.loss_fn, "parts", None)  # strop's CombinedLoss: logged beside the sum
        self.last_parts = {k: float(v) for k, v in parts.items()} if parts else {}
        for a in aux:  # torchvision's recipe for inception/googlenet and segmentation aux heads
            loss = loss + self.aux_weight * self.loss_fn(a, y)
        return loss, main


def _first_bad_grad(model: nn.Module) -> str | None:
    for name, p in model.named_parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return name
    return None


def _optimizer_step(engine: Engine, state: TrainState) -> None:
    """One optimizer step at an accumulation boundary; the scheduler follows every attempt."""
    clip = engine.clip_grad_norm
    if engine.amp.precision.name != "fp16":
        # fp16 has the scaler's own inf check; fp32/bf16 would silently write NaN into the weights
        params = [p for p in engine.model.parameters() if p.grad is not None]
        # one pass over the gradients serves both the finite check and clipping (it is
        # memory-bound: ~2.5-3 ms per step for resnet18's 11.7M gradients on 2 cores)
        norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else None
        if norm is not None and not torch.isfinite(norm):
            bad = _first_bad_grad(engine.model)
            if engine.nonfinite == "stop":
                raise NonFiniteLossError(
                    f"non-finite gradient in parameter {bad!r} at epoch {state.epoch}, "
                    f"batch {state.batch_in_epoch - 1} (step {state.step}); nothing was saved from this step"
                )
            state.nonfinite_batches += 1
            engine.optimizer.zero_grad(set_to_none=True)
        elif norm is not None and clip is not None:
            torch.nn.utils.clip_grads_with_norm_(params, clip, norm)
            engine.amp.grad_norm = norm
            clip = None  # clipped with the norm already computed; amp.step must not compute it again
    stepped = engine.amp.step(engine.optimizer, clip_grad_norm=clip, parameters=engine.model.parameters())
    if not stepped:
        state.skipped_steps += 1
    engine.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    if engine.scheduler is not None:
        engine.scheduler.on_optimizer_step()


def train_one_epoch(
    engine: Engine,
    loader: Iterable[tuple[Tensor, Tensor]],
    state: TrainState,
    callbacks: Sequence[Any] = (),
    *,
    num_batches: int | None = None,
    on_step: Callable[[TrainState], None] | None = None,
) -> dict[str, float]:
    """Train ``engine.model`` over ``loader`` once; returns ``{"train_loss": ..., ...}``.

    ``state.batch_in_epoch`` batches are assumed already consumed (the loader must already skip
    them: see the trainer's sampler). ``on_step`` is called after each optimizer step (the trainer
    uses it for step checkpoints and to honour signals). Stops early when ``state.should_stop``.
    """
    model = engine.model
    model.train()
    sums = state.epoch_sums or {"loss": 0.0, "correct": 0.0, "count": 0.0}
    state.epoch_sums = sums
    accum = engine.accumulation_steps
    total = num_batches if num_batches is not None else len(loader)  # type: ignore[arg-type]
    engine.optimizer.zero_grad(set_to_none=True)
    tic = time.perf_counter()
    # a NaN forward has already written NaN into BatchNorm's running stats: "skip" undoes that too
    buffers = list(model.buffers()) if engine.nonfinite == "skip" else []
    for x, y in loader:
        x, y = engine.to_device(x, y)
        saved = [b.clone() for b in buffers]
        with engine.amp.autocast():
            output = model(x)
            loss, main = engine.compute_loss(output, y)
        # the epoch's last accumulation group may be short: average over the batches it has
        group_start = (state.batch_in_epoch // accum) * accum
        group = min(accum, total - group_start)
        state.batch_in_epoch += 1
        value = float(loss.detach())
        if math.isfinite(value):
            engine.amp.backward(loss / group)
            sums["loss"] += value * len(y)
            sums["count"] += len(y)
            if engine.task == "classification" and main.dim() == 2:
                sums["correct"] += float((main.detach().argmax(1) == y).sum())
        elif engine.nonfinite == "stop":
            raise NonFiniteLossError(
                f"non-finite loss ({value}) at epoch {state.epoch}, batch {state.batch_in_epoch - 1} "
                f"(step {state.step}); inputs finite: {bool(torch.isfinite(x).all())}"
            )
        else:
            state.nonfinite_batches += 1
            with torch.no_grad():
                for buf, old in zip(buffers, saved, strict=True):
                    buf.copy_(old)
        at_boundary = state.batch_in_epoch % accum == 0 or state.batch_in_epoch == total
        lr = _lr(engine.optimizer)  # the LR this step uses, before the scheduler moves it
        if at_boundary:
            _optimizer_step(engine, state)
        now = time.perf_counter()
        logs = {"loss": value, "lr": lr, "images_per_s": len(y) / max(now - tic, 1e-9)}
        logs.update({f"loss_{k}": v for k, v in engine.last_parts.items()})
        tic = now
        for cb in callbacks:
            hook = getattr(cb, "on_batch_end", None)
            if hook is not None:
                hook(state, logs)
        if at_boundary and on_step is not None:
            on_step(state)
        if state.should_stop and at_boundary:  # never mid-accumulation: the state must be saveable
            break
    out = {"train_loss": sums["loss"] / max(sums["count"], 1)}
    if engine.task == "classification" and sums["count"]:
        out["train_accuracy"] = sums["correct"] / sums["count"]
    return out


def _lr(optimizer: torch.optim.Optimizer) -> float:
    # the largest group LR is the head's with discriminative LRs: the LR users set and expect to see
    return max(float(g["lr"]) for g in optimizer.param_groups)


@torch.no_grad()
def evaluate(
    engine: Engine,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, float]:
    """Validation metrics over ``loader`` with the model in eval mode.

    Classification: ``val_loss``, ``val_accuracy`` and ``val_top5`` (when more than 5 classes).
    Segmentation: ``val_loss``, ``val_dice`` and ``val_iou`` (mean over foreground classes present
    in prediction or target, from one confusion matrix), ``val_pixel_accuracy``. ``reduce`` sums a
    tensor of totals across processes (distributed runs).
    """
    model = engine.model
    was_training = model.training
    model.eval()
    seg = engine.task == "segmentation"
    n = engine.num_classes
    totals = torch.zeros(3, dtype=torch.float64)  # loss·count, correct (top1), correct (top5)
    count = torch.zeros(1, dtype=torch.float64)
    confusion = torch.zeros(n, n, dtype=torch.float64) if seg else None
    for x, y in loader:
        x, y = engine.to_device(x, y)
        with engine.amp.autocast():
            main, _ = split_outputs(model(x))  # aux heads (fcn/deeplab keep them in eval) are not scored
            loss = engine.loss_fn(main, y)
        main = main.float()
        count += len(y)
        totals[0] += float(loss) * len(y)
        if seg:
            confusion += _confusion(main, y, n)
        else:
            top = main.topk(min(5, main.shape[1]), dim=1).indices
            totals[1] += float((top[:, 0] == y).sum())
            totals[2] += float((top == y[:, None]).any(1).sum())
    if reduce is not None:
        packed = reduce(torch.cat([totals, count] + ([confusion.flatten()] if seg else [])))
        totals, count = packed[:3], packed[3:4]
        if seg:
            confusion = packed[4:].view(n, n)
    model.train(was_training)
    c = max(float(count), 1.0)
    out = {"val_loss": float(totals[0]) / c}
    if seg:
        out.update(_overlap_metrics(confusion))
    else:
        out["val_accuracy"] = float(totals[1]) / c
        if n > 5:
            out["val_top5"] = float(totals[2]) / c
    return out


def _confusion(logits: Tensor, target: Tensor, n: int) -> Tensor:
    """``n×n`` confusion counts (rows: target, cols: prediction); ignore_index pixels dropped."""
    # binary: one logit channel, class 1 where it is > 0
    pred = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
    target = target.long().reshape(pred.shape)
    valid = (target >= 0) & (target < n)
    idx = target[valid] * n + pred[valid]
    return torch.bincount(idx, minlength=n * n).view(n, n).double().cpu()


def _overlap_metrics(confusion: Tensor) -> dict[str, float]:
    tp = confusion.diag()
    fp = confusion.sum(0) - tp
    fn = confusion.sum(1) - tp
    present = (tp + fp + fn) > 0
    present[0] = False  # class 0 is background: Dice/IoU are reported on the foreground
    if not present.any():
        dice = iou = 1.0  # no foreground anywhere, none predicted: a perfect (empty) match
    else:
        dice = float((2 * tp / (2 * tp + fp + fn).clamp_min(1))[present].mean())
        iou = float((tp / (tp + fp + fn).clamp_min(1))[present].mean())
    pixel = float(tp.sum() / confusion.sum().clamp_min(1))
    return {"val_dice": dice, "val_iou": iou, "val_pixel_accuracy": pixel}
