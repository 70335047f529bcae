"""Mixup and CutMix per batch: ``x, soft_y = mix(x, y)``.

torchvision's ``transforms.v2.MixUp`` / ``CutMix`` do the mixing (a batch is mixed with itself
rolled by one: ``x' = λ·x + (1-λ)·x.roll(1, 0)``, ``y' = λ·onehot(y) + (1-λ)·onehot(y).roll(1, 0)``;
CutMix pastes a box of the rolled batch and sets ``λ`` to the kept area). This module adds what a
training loop needs around them, as timm's ``Mixup`` does:

- a probability ``prob`` that a batch is mixed at all, and a choice between MixUp and CutMix
  (``switch_prob``) when both alphas are > 0;
- targets that are *always* soft (an unmixed batch gets its one-hot rows), so the loss sees one
  kind of target; every row sums to 1;
- a private random stream (``seed``) with ``state_dict()`` / ``load_state_dict()``, so the
  mixing of a resumed run continues exactly and does not depend on what else draws from torch's
  global generator (dropout, augmentation).

The loss must accept class probabilities (``cross_entropy`` does; see
:func:`strop.train.config_recipes.check_soft_target_loss`). Train accuracy on mixed batches is
measured against ``soft_y.argmax(1)`` (:func:`soft_target_accuracy`): the class with the larger
share, a proxy — the raw labels of a mixed image are two.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchvision.transforms import v2

from strop._checks import check_positive, fail

__all__ = ["BatchMix", "soft_target_accuracy"]


def _check_prob(func: str, arg: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        fail(func, f"{arg} must be a probability in [0, 1]; got {value!r}")


class BatchMix:
    """Mixup / CutMix of a batch with probability ``prob``.

    Args:
        num_classes: number of classes ``C`` (targets become ``(N, C)`` float rows).
        mixup_alpha: Beta(α, α) parameter of MixUp; 0 disables MixUp. timm's default 0.8.
        cutmix_alpha: Beta(α, α) parameter of CutMix; 0 disables CutMix. timm's default 1.0.
        prob: probability that a batch is mixed (timm's ``mixup_prob``, default 1.0).
        switch_prob: with both alphas > 0, the probability of CutMix instead of MixUp (0.5).
        seed: seed of the private random stream (give each distributed rank its own).

    Call ``mix(x, y)`` with ``x (Tensor[N, C_in, H, W])`` and integer ``y (Tensor[N])``; returns
    ``(x_mixed, soft_y (Tensor[N, num_classes]))`` in ``x``'s float dtype. Classification only.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        seed: int = 0,
    ) -> None:
        func = "BatchMix"
        check_positive(func, "num_classes", num_classes, integer=True)
        check_positive(func, "mixup_alpha", mixup_alpha, allow_zero=True)
        check_positive(func, "cutmix_alpha", cutmix_alpha, allow_zero=True)
        if mixup_alpha == 0 and cutmix_alpha == 0:
            fail(
                func,
                "mixup_alpha and cutmix_alpha are both 0, so nothing would be mixed",
                hint="set mixup_alpha (e.g. 0.8) and/or cutmix_alpha (e.g. 1.0)",
            )
        _check_prob(func, "prob", prob)
        _check_prob(func, "switch_prob", switch_prob)
        if isinstance(seed, bool) or not isinstance(seed, int):
            fail(func, f"seed must be an int; got {type(seed).__name__} {seed!r}", exc=TypeError)
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.switch_prob = float(prob), float(switch_prob)
        self.mixup = (
            v2.MixUp(alpha=mixup_alpha, num_classes=num_classes) if mixup_alpha > 0 else None
        )
        self.cutmix = (
            v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes) if cutmix_alpha > 0 else None
        )
        self._rng_state = torch.Generator().manual_seed(seed).get_state()

    def __repr__(self) -> str:
        return (
            f"BatchMix(num_classes={self.num_classes}, mixup_alpha={self.mixup_alpha}, "
            f"cutmix_alpha={self.cutmix_alpha}, prob={self.prob}, switch_prob={self.switch_prob})"
        )

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        func = "BatchMix"
        if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
            fail(func, f"x must be a float tensor (N, C, H, W); got {_describe(x)}", exc=TypeError)
        if not isinstance(y, Tensor) or y.is_floating_point() or y.dtype == torch.bool:
            fail(
                func,
                f"y must be an integer tensor of class ids; got {_describe(y)}",
                hint="mix before any one-hot or smoothing",
                exc=TypeError,
            )
        if y.shape != x.shape[:1]:
            fail(func, f"y must have shape (N,)=({x.shape[0]},); got {tuple(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            fail(
                func,
                f"y must hold class ids in [0, {self.num_classes}); got values in "
                f"[{int(y.min())}, {int(y.max())}]",
            )
        # v2.MixUp/CutMix draw from torch's global CPU generator: run them on our own stream
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self._rng_state)
            apply = bool(torch.rand(()) < self.prob)
            use_cutmix = self.mixup is None or (
                self.cutmix is not None and bool(torch.rand(()) < self.switch_prob)
            )
            if apply:
                op = self.cutmix if use_cutmix else self.mixup
                x, soft = op(x, y)
            else:
                soft = torch.nn.functional.one_hot(y.long(), self.num_classes).to(x.dtype)
            self._rng_state = torch.get_rng_state()
        return x, soft

    def state_dict(self) -> dict[str, Any]:
        """The private random stream (the options are config, not state)."""
        return {"rng_state": self._rng_state.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng_state = state["rng_state"].clone()


def soft_target_accuracy(logits: Tensor, target: Tensor) -> Tensor:
    """Fraction of rows whose ``logits.argmax(1)`` equals ``target.argmax(1)`` (soft targets) or
    ``target`` (class ids). With Mixup/CutMix this scores against the dominant class of each
    mixed image — a proxy for train accuracy, reported as such; validation uses the raw labels."""
    labels = (
        target.argmax(1) if target.is_floating_point() and target.dim() == logits.dim() else target
    )
    if logits.shape[0] == 0:
        return logits.new_zeros(())
    return (logits.argmax(1) == labels).float().mean()


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}"
