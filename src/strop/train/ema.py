"""An exponential moving average of a model's weights and buffers: ``ema.update(model)`` after
each optimizer step, ``ema.module`` to evaluate.

Built on ``torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(d),
use_buffers=True)``: BatchNorm running statistics are averaged with the weights, so the averaged
model needs no ``update_bn`` pass. Integer buffers (``num_batches_tracked``) are copied from the
model, as timm does, rather than averaged and truncated.

Warmup follows timm's ``ModelEmaV3(use_warmup=True)``: update ``k`` (1-based) copies the model
when ``k = 1`` and otherwise uses::

    d_k = min(decay, 1 - (1 + (k - 1) / warmup_gamma) ** -warmup_power)     (warmup=True)
    d_k = decay                                                             (warmup=False)
    ema <- d_k · ema + (1 - d_k) · model

which is timm's ``get_decay(step=k)`` with ``update_after_step=0``, the ``step`` timm's
``train.py`` passes (the number of optimizer updates so far, counted after the update). The
warmup matters for short fine-tuning runs: with ``decay=0.999`` and no warmup, the average of a
300-step run still holds 74% of the starting weights (0.999 ** 300).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from strop._checks import check_positive, fail

__all__ = ["ModelEMA", "ema_decay"]


def ema_decay(
    update: int,
    decay: float,
    *,
    warmup: bool = True,
    warmup_gamma: float = 1.0,
    warmup_power: float = 2 / 3,
) -> float:
    """The decay ``d_k`` of update ``k = update`` (1-based; ``d_1 = 0``: the first update copies)."""
    if update <= 1:
        return 0.0
    if not warmup:
        return decay
    return min(decay, 1 - (1 + (update - 1) / warmup_gamma) ** -warmup_power)


class ModelEMA:
    """EMA of ``model``'s parameters and floating-point buffers.

    Args:
        model: the model being trained (deep-copied; the copy is ``self.module``, in eval mode
            use). Build the EMA after the model is on its device and before any wrapper
            (DDP, ``torch.compile``) — or pass the unwrapped module.
        decay: the target decay (0.999 for short runs; timm's 0.9998 is for ImageNet-length runs).
        warmup: ramp the decay up as in timm's ``ModelEmaV3(use_warmup=True)`` (module docstring).
        warmup_gamma, warmup_power: timm's ``warmup_gamma`` (1.0) and ``warmup_power`` (2/3).

    ``state_dict()`` holds the averaged weights and the update count; ``load_state_dict`` into
    an EMA built from the same architecture restores it exactly.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        decay: float = 0.999,
        warmup: bool = True,
        warmup_gamma: float = 1.0,
        warmup_power: float = 2 / 3,
    ) -> None:
        func = "ModelEMA"
        if not isinstance(model, nn.Module):
            fail(func, f"model must be an nn.Module; got {type(model).__name__}", exc=TypeError)
        check_positive(func, "decay", decay, allow_zero=True)
        if decay >= 1:
            fail(func, f"decay must be in [0, 1); got {decay!r}", hint="0.999 averages ~1000 steps")
        check_positive(func, "warmup_gamma", warmup_gamma)
        check_positive(func, "warmup_power", warmup_power)
        self.decay, self.warmup = float(decay), bool(warmup)
        self.warmup_gamma, self.warmup_power = float(warmup_gamma), float(warmup_power)
        self.updates = 0
        self.averaged = AveragedModel(model, multi_avg_fn=self._average, use_buffers=True)
        self.averaged.eval()
        self.averaged.requires_grad_(False)
        self._decay_now = 0.0

    @property
    def module(self) -> nn.Module:
        """The averaged model (evaluate, save or export this one)."""
        return self.averaged.module

    def current_decay(self) -> float:
        """The decay the next ``update`` will use."""
        return ema_decay(
            self.updates + 1,
            self.decay,
            warmup=self.warmup,
            warmup_gamma=self.warmup_gamma,
            warmup_power=self.warmup_power,
        )

    def _average(self, ema: list[Tensor], current: list[Tensor], _n: Any) -> None:
        # AveragedModel groups tensors by device and dtype, so a list is all float or all int
        if ema[0].is_floating_point() or ema[0].is_complex():
            get_ema_multi_avg_fn(self._decay_now)(ema, current, _n)
        else:
            torch._foreach_copy_(ema, current)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights into the average (call after each optimizer step)."""
        self._decay_now = self.current_decay()
        self.averaged.update_parameters(model)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "averaged": self.averaged.state_dict(),
            "updates": self.updates,
            "decay": self.decay,
            "warmup": self.warmup,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state["averaged"])
        self.updates = int(state["updates"])

    def __repr__(self) -> str:
        return (
            f"ModelEMA(decay={self.decay}, warmup={self.warmup}, "
            f"warmup_power={self.warmup_power:.4g}, updates={self.updates})"
        )
