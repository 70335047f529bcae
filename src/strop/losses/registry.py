"""``strop.losses.build(spec)``: a loss module from a name, an option mapping or a weighted mix.

Spec forms (what configs and the CLI write)::

    "dice"                                   # one loss, default options
    "dice+bce"                               # sum of losses, weight 1 each
    {"name": "focal", "gamma": 2}            # one loss with options
    {"dice": 1.0, "focal": 0.5}              # weighted sum
    {"dice": {"weight": 1.0, "smooth": 0}, "bce": 1.0}   # weighted sum with per-loss options

A sum is a :class:`CombinedLoss`, whose ``parts`` holds the detached, unweighted value of each
part from the last call (for logging). ``build(spec, **defaults)`` fills options such as
``mode="multiclass"`` or ``ignore_index=255`` into every part that accepts them (explicit options
win), so a trainer can pass its task once.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from strop._checks import did_you_mean, fail
from strop._registry import Registry
from strop.losses import modules

__all__ = ["LOSSES", "CombinedLoss", "build"]

LOSSES: Registry[Callable[..., nn.Module]] = Registry("loss")
LOSSES.register("bce", "bce_loss", "bce_with_logits", "binary_cross_entropy")(
    modules.BCEWithLogitsLoss
)
LOSSES.register("box_iou", "box_iou_loss", "iou_loss")(modules.BoxIoULoss)
LOSSES.register("cross_entropy", "ce", "cross_entropy_loss")(modules.CrossEntropyLoss)
LOSSES.register("dice", "dice_loss")(modules.DiceLoss)
LOSSES.register("dice_bce", "dice_bce_loss", "bce_dice")(modules.DiceBCELoss)
LOSSES.register("focal", "focal_loss")(modules.FocalLoss)
LOSSES.register("jaccard", "jaccard_loss", "soft_iou")(modules.JaccardLoss)
LOSSES.register("lovasz", "lovasz_loss", "lovasz_softmax", "lovasz_hinge")(modules.LovaszLoss)
LOSSES.register("mse", "mse_loss", "l2")(modules.MSELoss)
LOSSES.register("tversky", "tversky_loss", "focal_tversky")(modules.TverskyLoss)


class CombinedLoss(nn.Module):
    """Weighted sum ``Σ w_i · loss_i(input, target)``; ``parts`` = last unweighted values."""

    def __init__(self, losses: Mapping[str, nn.Module], weights: Mapping[str, float]) -> None:
        super().__init__()
        self.losses = nn.ModuleDict(dict(losses))
        self.weights = dict(weights)
        self.parts: dict[str, Tensor] = {}

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        parts = {name: loss(input, target) for name, loss in self.losses.items()}
        self.parts = {name: value.detach() for name, value in parts.items()}
        total: Tensor | None = None
        for name, value in parts.items():
            term = value * self.weights[name] if self.weights[name] != 1 else value
            total = term if total is None else total + term
        assert total is not None
        return total

    def extra_repr(self) -> str:
        return "weights=" + ", ".join(f"{k}={v:g}" for k, v in self.weights.items())


def _make(name: str, options: Mapping[str, Any], defaults: Mapping[str, Any]) -> nn.Module:
    canonical = LOSSES.canonical(name)
    factory = LOSSES.get(canonical)
    accepted = [
        p for p in inspect.signature(factory).parameters if p not in ("self", "args", "kwargs")
    ]
    for key in options:
        if key not in accepted:
            fail(
                "build",
                f"unknown option {key!r} for loss {canonical!r}{did_you_mean(key, accepted)}",
                hint=f"options of {canonical!r}: {', '.join(accepted) or '(none)'}",
            )
    merged = {k: v for k, v in defaults.items() if k in accepted}
    merged.update(options)
    return factory(**merged)


def _weight(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(
            "build",
            f"weight of {name!r} must be a number; got {type(value).__name__} {value!r}",
            exc=TypeError,
        )
    if value < 0:
        fail("build", f"weight of {name!r} must be >= 0; got {value!r}")
    return float(value)


def _combine(
    items: list[tuple[str, Mapping[str, Any], float]], defaults: Mapping[str, Any]
) -> nn.Module:
    losses: dict[str, nn.Module] = {}
    weights: dict[str, float] = {}
    for name, options, weight in items:
        canonical = LOSSES.canonical(name.strip())
        if canonical in losses:
            fail("build", f"loss {canonical!r} appears twice", hint="give it once, with its weight")
        losses[canonical] = _make(canonical, options, defaults)
        weights[canonical] = weight
    return CombinedLoss(losses, weights)


def build(spec: str | Mapping[str, Any] | nn.Module, **defaults: Any) -> nn.Module:
    """A loss module from ``spec`` (see the module docstring for the forms).

    Args:
        spec: a registered name (aliases and any case/``-``/``_`` spelling work), names joined by
            ``"+"``, ``{"name": ..., **options}``, or a mapping ``{name: weight | {"weight": w,
            **options}}``. An ``nn.Module`` is returned unchanged.
        **defaults: options given to every part that accepts them (explicit options win).

    Returns:
        ``nn.Module`` called as ``loss(input, target) -> Tensor``; a sum of several losses is a
        :class:`CombinedLoss` with ``.parts``.

    Raises:
        ValueError: unknown loss name (with a did-you-mean), unknown option, a loss given twice,
            negative weight, bad option values. TypeError: a spec or weight of the wrong type.
    """
    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, str):
        names = spec.split("+")
        if len(names) == 1:
            return _make(spec.strip(), {}, defaults)
        if any(not n.strip() for n in names):
            fail("build", f"empty loss name in {spec!r}", hint="write e.g. 'dice+bce'")
        return _combine([(n, {}, 1.0) for n in names], defaults)
    if isinstance(spec, Mapping):
        if not spec:
            fail(
                "build",
                "spec mapping is empty",
                hint="e.g. {'name': 'dice'} or {'dice': 1.0, 'bce': 1.0}",
            )
        if "name" in spec:
            options = {k: v for k, v in spec.items() if k != "name"}
            name = spec["name"]
            if not isinstance(name, str):
                fail(
                    "build",
                    f"'name' must be a string; got {type(name).__name__} {name!r}",
                    exc=TypeError,
                )
            if "+" in name:
                if options:
                    fail(
                        "build",
                        f"options {sorted(options)} are ambiguous for the combined loss {name!r}",
                        hint="use a weighted mapping {'dice': {...}, 'bce': {...}}",
                    )
                return build(name, **defaults)
            return _make(name, options, defaults)
        items: list[tuple[str, Mapping[str, Any], float]] = []
        for name, value in spec.items():
            if not isinstance(name, str):
                fail(
                    "build",
                    f"loss names must be strings; got {type(name).__name__} {name!r}",
                    exc=TypeError,
                )
            if value is None:
                items.append((name, {}, 1.0))
            elif isinstance(value, Mapping):
                options = dict(value)
                weight = _weight(name, options.pop("weight", 1.0))
                items.append((name, options, weight))
            else:
                items.append((name, {}, _weight(name, value)))
        return _combine(items, defaults)
    fail(
        "build",
        f"spec must be a loss name, a mapping or an nn.Module; got {type(spec).__name__} {spec!r}",
        exc=TypeError,
    )
