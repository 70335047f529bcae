"""The LR range test (Smith 2015, "Cyclical Learning Rates for Training Neural Networks", §3.3;
as in fastai's ``lr_find`` and torch-lr-finder): train a few steps with the LR growing from
``start_lr`` to ``end_lr``, record the smoothed loss, suggest an LR, and put everything back.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from strop._checks import check_choice, check_positive, fail
from strop._rng import capture_rng, restore_rng
from strop.finetune.heads import output_loss
from strop.precision import MixedPrecision, Precision, resolve

__all__ = ["LRFindResult", "lr_find", "suggest_steepest", "suggest_valley"]


@dataclass
class LRFindResult:
    """What :func:`lr_find` measured.

    Attributes:
        lrs: the LR of each optimizer step (group 0).
        losses: the smoothed losses (bias-corrected exponential moving average).
        raw_losses: the loss of each step (mean over its accumulated micro-batches).
        suggestion: the "steepest" suggestion (None when too few points were recorded).
        suggestions: ``{"steepest": ..., "valley": ..., "minimum": ...}`` (see :func:`lr_find`).
        diverged: True when the test stopped early because the loss diverged.
    """

    lrs: list[float]
    losses: list[float]
    raw_losses: list[float]
    suggestion: float | None
    suggestions: dict[str, float] = field(default_factory=dict)
    diverged: bool = False

    def plot(self, path: str | Path | None = None) -> Any:
        """Draw loss vs LR with the suggestion marked (see :func:`strop.plots.plot_lr_find`)."""
        from strop.plots import plot_lr_find

        return plot_lr_find(self, path)


def _trim(n: int) -> tuple[int, int]:
    # fastai drops the first tenth (noisy start) and the last 5 points (divergence) before it
    # suggests; with few points keep everything
    if n < 20:
        return 0, n
    return n // 10, n - 5


def suggest_steepest(lrs: list[float], losses: list[float]) -> float | None:
    """The LR where the smoothed loss falls fastest against ``log(lr)`` (minimum of the
    central-difference slope), among the points before the loss minimum."""
    lo, hi = _trim(len(losses))
    xs = [math.log(lr) for lr in lrs[lo:hi]]
    ys = losses[lo:hi]
    end = min(range(len(ys)), key=ys.__getitem__) + 1 if ys else 0
    xs, ys = xs[: max(end, 3)], ys[: max(end, 3)]
    if len(ys) < 3:
        return None
    slopes = torch.gradient(
        torch.tensor(ys, dtype=torch.float64), spacing=(torch.tensor(xs, dtype=torch.float64),)
    )[0]
    return lrs[lo + int(torch.argmin(slopes))]


def suggest_valley(lrs: list[float], losses: list[float]) -> float | None:
    """fastai's "valley" rule: the longest run of decreasing loss (longest decreasing
    subsequence), and the LR two thirds of the way down it."""
    lo, hi = _trim(len(losses))
    ys = losses[lo:hi]
    n = len(ys)
    if n < 3:
        return None
    length = [1] * n  # length of the longest decreasing subsequence ending at i
    best_end = 0
    for i in range(1, n):
        for j in range(i):
            if ys[i] < ys[j] and length[j] + 1 > length[i]:
                length[i] = length[j] + 1
        if length[i] > length[best_end]:
            best_end = i
    best_start = best_end - length[best_end]
    third = (best_end - best_start) / 3
    return lrs[lo + best_start + int(third) + int(third / 2)]


def _state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return {
        "model": copy.deepcopy(model.state_dict()),
        "grads": [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()],
        "training": {name: m.training for name, m in model.named_modules()},
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "rng": capture_rng(),
    }


def _restore(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    model.load_state_dict(saved["model"])
    for p, g in zip(model.parameters(), saved["grads"], strict=True):
        p.grad = g
    for name, m in model.named_modules():
        m.training = saved["training"][name]
    optimizer.load_state_dict(saved["optimizer"])
    restore_rng(saved["rng"])


def _batches(loader: Iterable[Any]) -> Iterator[Any]:
    # cycle through the loader as often as the test needs
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            fail("lr_find", "loader yielded no batches")


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    return x


def _check_arguments(
    model: Any,
    optimizer: Any,
    start_lr: float,
    end_lr: float,
    num_iter: int,
    mode: str,
    smooth: float,
    diverge: float,
    accumulation_steps: int,
) -> None:
    func = "lr_find"
    if not isinstance(model, nn.Module):
        fail(func, f"model must be an nn.Module; got {type(model).__name__}", exc=TypeError)
    if not isinstance(optimizer, torch.optim.Optimizer):
        fail(
            func,
            f"optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}",
            exc=TypeError,
        )
    check_positive(func, "start_lr", start_lr)
    check_positive(func, "end_lr", end_lr)
    if end_lr <= start_lr:
        fail(func, f"end_lr must exceed start_lr={start_lr}; got {end_lr}")
    check_positive(func, "num_iter", num_iter, integer=True)
    if num_iter < 2:
        fail(func, f"num_iter must be at least 2; got {num_iter}")
    check_choice(func, "mode", mode, ("exp", "linear"))
    check_positive(func, "smooth", smooth)
    if smooth > 1:
        fail(func, f"smooth must be in (0, 1]; got {smooth}")
    check_positive(func, "diverge", diverge)
    check_positive(func, "accumulation_steps", accumulation_steps, integer=True)


def _lr_at(i: int, num_iter: int, start_lr: float, end_lr: float, mode: str) -> float:
    t = i / (num_iter - 1)
    if mode == "exp":
        return start_lr * (end_lr / start_lr) ** t
    return start_lr + (end_lr - start_lr) * t


def _suggestions(lrs: list[float], smoothed: list[float]) -> dict[str, float]:
    out: dict[str, float] = {}
    steep = suggest_steepest(lrs, smoothed)
    if steep is not None:
        out["steepest"] = steep
    valley = suggest_valley(lrs, smoothed)
    if valley is not None:
        out["valley"] = valley
    if smoothed:
        out["minimum"] = lrs[min(range(len(smoothed)), key=smoothed.__getitem__)] / 10
    return out


def _run(
    model: nn.Module,
    batches: Iterator[Any],
    forward_loss: Callable[[nn.Module, Any], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    mp: MixedPrecision,
    schedule: list[float],
    *,
    smooth: float,
    diverge: float,
    accumulation_steps: int,
) -> tuple[list[float], list[float], list[float], bool]:
    """Train one step at each LR of ``schedule``; ``(lrs, raw, smoothed, diverged)``."""
    ratios = [
        float(g["lr"]) / float(optimizer.param_groups[0]["lr"] or 1.0)
        for g in optimizer.param_groups
    ]
    lrs: list[float] = []
    raw: list[float] = []
    smoothed: list[float] = []
    avg, best = 0.0, math.inf
    for i, lr in enumerate(schedule):
        for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
            group["lr"] = lr * ratio
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(accumulation_steps):
            with mp.autocast():
                loss = forward_loss(model, next(batches))
            mp.backward(loss / accumulation_steps)
            total += float(loss.detach()) / accumulation_steps
        mp.optimizer_step(optimizer)
        lrs.append(lr)
        raw.append(total)
        if not math.isfinite(total):
            return lrs, raw, smoothed, True
        avg = (1 - smooth) * avg + smooth * total
        value = avg / (1 - (1 - smooth) ** (i + 1))
        smoothed.append(value)
        best = min(best, value)
        if value > diverge * best:
            return lrs, raw, smoothed, True
    return lrs, raw, smoothed, False


def lr_find(
    model: nn.Module,
    loader: Iterable[Any],
    loss_fn: Callable[..., torch.Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    mode: str = "exp",
    smooth: float = 0.05,
    diverge: float = 5.0,
    precision: str | Precision = "fp32",
    accumulation_steps: int = 1,
    device: str | torch.device | None = None,
    aux_weight: float = 0.4,
    forward_loss: Callable[[nn.Module, Any], torch.Tensor] | None = None,
) -> LRFindResult:
    """Run the LR range test and restore ``model`` and ``optimizer`` exactly.

    Step ``i`` (0-based, of ``num_iter``) trains with ``lr_i = start_lr * (end_lr /
    start_lr) ** (i / (num_iter - 1))`` (``mode="exp"``) or ``start_lr + (end_lr - start_lr) *
    i / (num_iter - 1)`` (``"linear"``); every group's LR is ``lr_i × (its LR ÷ group 0's
    LR)``, so discriminative ratios are kept and ``lrs`` refer to group 0. Each step
    accumulates ``accumulation_steps`` batches from ``loader`` (cycled as needed), each loss
    divided by ``accumulation_steps``, under ``precision`` (autocast and the fp16 GradScaler
    through :meth:`strop.precision.MixedPrecision.optimizer_step`, as training does).

    The loss of a batch ``(inputs, targets)`` (moved to ``device``) is
    :func:`strop.finetune.heads.output_loss`: the main output's loss plus ``aux_weight`` × each
    auxiliary head's (inception_v3, googlenet, segmentation models' ``{"out", "aux"}``). Any
    other batch: pass ``forward_loss(model, batch) -> loss``, which then also moves the batch.

    Smoothing: ``avg = (1 - smooth) * avg + smooth * loss``, reported bias-corrected as
    ``avg / (1 - (1 - smooth) ** (i + 1))``. The test stops when the smoothed loss exceeds
    ``diverge ×`` its best value, or a loss is not finite.

    Suggestions (computed, as fastai does, without the first tenth and last 5 points when
    there are at least 20): ``"steepest"`` (the fastest fall of the smoothed loss against
    ``log lr`` before its minimum; the primary ``suggestion``), ``"valley"`` (fastai's rule),
    ``"minimum"`` (a tenth of the LR at the lowest loss).

    Afterwards the model's parameters, buffers (BatchNorm statistics), gradients and train/eval
    modes, the optimizer's state and LRs, and the RNG states are exactly as before.
    """
    _check_arguments(
        model, optimizer, start_lr, end_lr, num_iter, mode, smooth, diverge, accumulation_steps
    )
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    mp = MixedPrecision(
        precision if isinstance(precision, Precision) else resolve(precision, device)
    )
    if forward_loss is None:

        def forward_loss(model: nn.Module, batch: Any) -> torch.Tensor:
            inputs, targets = _to(batch, device)
            return output_loss(loss_fn, model(inputs), targets, aux_weight)[0]

    saved = _state(model, optimizer)
    try:
        model.train()
        lrs, raw, smoothed, diverged = _run(
            model,
            _batches(loader),
            forward_loss,
            optimizer,
            mp,
            [_lr_at(i, num_iter, start_lr, end_lr, mode) for i in range(num_iter)],
            smooth=smooth,
            diverge=diverge,
            accumulation_steps=accumulation_steps,
        )
    finally:
        _restore(model, optimizer, saved)

    lrs = lrs[: len(smoothed)]
    suggestions = _suggestions(lrs, smoothed)
    return LRFindResult(
        lrs=lrs,
        losses=smoothed,
        raw_losses=raw[: len(smoothed)],
        suggestion=suggestions.get("steepest"),
        suggestions=suggestions,
        diverged=diverged,
    )
