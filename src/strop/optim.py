"""Every ``torch.optim`` optimizer by name, with its own options: ``build_optimizer("adamw",
param_groups(model, 1e-3, weight_decay=0.05), lr=1e-3, betas=(0.9, 0.99))``.

Options are the optimizer's own keyword arguments (checked against its signature, with a
did-you-mean); ``implementation`` picks torch's kernel:

- ``"for_loop"`` (``foreach=False``), ``"foreach"`` (multi-tensor), ``"fused"`` (one kernel;
  Adam, AdamW, SGD and Adagrad, on the devices torch lists as fused-capable);
- ``"auto"``: ``fused`` where the optimizer and the parameters' device support it, else
  ``foreach`` where the optimizer has it, else the for-loop. (torch's own default is foreach on
  CUDA and the for-loop on CPU; ``benchmarks/optimizer_impl.py`` times the three, see
  docs/config.md.)

Refused, with the reason: ``lbfgs`` (its ``step`` needs a closure that re-evaluates the loss),
``sparse_adam`` (sparse gradients only), ``muon`` (2-D weights only, while fine-tuning groups hold
convolutions, biases and norms). Weight decay belongs in the param groups —
:func:`strop.finetune.param_groups` keeps it off biases and norm weights.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from strop._checks import check_choice, check_positive, did_you_mean, fail

__all__ = [
    "IMPLEMENTATIONS",
    "OPTIMIZERS",
    "REFUSED",
    "build_optimizer",
    "check_options",
    "optimizer_options",
]

IMPLEMENTATIONS = ("auto", "fused", "foreach", "for_loop")


@dataclass(frozen=True)
class _Entry:
    cls: type[torch.optim.Optimizer]
    defaults: dict[str, Any] = field(default_factory=dict)  # strop's defaults over torch's


#: name -> torch class (and strop's defaults that differ from torch's: SGD momentum 0.9).
OPTIMIZERS: dict[str, _Entry] = {
    "sgd": _Entry(torch.optim.SGD, {"momentum": 0.9}),
    "adam": _Entry(torch.optim.Adam),
    "adamw": _Entry(torch.optim.AdamW),
    "nadam": _Entry(torch.optim.NAdam),
    "radam": _Entry(torch.optim.RAdam),
    "rmsprop": _Entry(torch.optim.RMSprop),
    "adagrad": _Entry(torch.optim.Adagrad),
    "adamax": _Entry(torch.optim.Adamax),
    "adadelta": _Entry(torch.optim.Adadelta),
    "asgd": _Entry(torch.optim.ASGD),
    "adafactor": _Entry(torch.optim.Adafactor),
    "rprop": _Entry(torch.optim.Rprop),
}

#: torch.optim optimizers strop refuses, and why.
REFUSED: dict[str, str] = {
    "lbfgs": "LBFGS.step needs a closure that re-evaluates the loss several times per step; "
    "strop's loop takes one step per batch",
    "sparse_adam": "SparseAdam only takes sparse gradients (nn.Embedding(sparse=True))",
    "muon": "Muon only takes 2-D weight matrices; fine-tuning groups hold convolutions, biases "
    "and norm weights",
}

# set by build_optimizer itself, not an option
_RESERVED = ("params", "lr", "weight_decay", "foreach", "fused")


def _key(name: str) -> str:
    return name.lower().replace("-", "_")


def _entry(func: str, name: str) -> _Entry:
    if not isinstance(name, str):
        fail(func, f"name must be a string; got {type(name).__name__} {name!r}", exc=TypeError)
    key = _key(name)
    if key in ("sparseadam",):
        key = "sparse_adam"
    if key in REFUSED:
        fail(
            func,
            f"optimizer {name!r} is not supported: {REFUSED[key]}",
            hint=f"use one of {', '.join(OPTIMIZERS)}",
        )
    if key not in OPTIMIZERS:
        fail(
            func,
            f"unknown optimizer {name!r}{did_you_mean(key, OPTIMIZERS)} available: "
            f"{', '.join(OPTIMIZERS)}",
        )
    return OPTIMIZERS[key]


def optimizer_options(name: str) -> list[str]:
    """The options ``name`` takes (its torch keyword arguments less params/lr/weight_decay/
    foreach/fused, which strop sets)."""
    cls = _entry("optimizer_options", name).cls
    return [p for p in inspect.signature(cls).parameters if p not in _RESERVED]


def check_options(func: str, name: str, options: dict[str, Any]) -> None:
    """Fail on an option ``name`` does not take (config-time check)."""
    accepted = optimizer_options(name)
    for key in options:
        if key in ("foreach", "fused"):
            fail(
                func,
                f"option {key!r} is chosen by implementation",
                hint="set implementation: auto | fused | foreach | for_loop",
            )
        if key not in accepted:
            fail(
                func,
                f"unknown option {key!r} for optimizer {_key(name)!r}{did_you_mean(key, accepted)}",
                hint=f"options of {_key(name)!r}: {', '.join(accepted)}",
            )


def _fused_devices() -> tuple[str, ...]:
    try:  # torch's own list (cuda, cpu, mps, xpu, ...); private, hence the fallback
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        return tuple(_get_fused_kernels_supported_devices())
    except ImportError:  # pragma: no cover - depends on the torch version
        return ("cuda", "cpu")


def _implementation(func: str, cls: type, impl: str, params: list[torch.Tensor]) -> dict[str, bool]:
    signature = inspect.signature(cls).parameters
    devices = {p.device.type for p in params}
    fused_ok = (
        "fused" in signature
        and len(devices) == 1
        and devices <= set(_fused_devices())
        and all(p.is_floating_point() for p in params)
    )
    if impl == "auto":
        impl = "fused" if fused_ok else ("foreach" if "foreach" in signature else "for_loop")
    if impl == "fused":
        if not fused_ok:
            where = (
                "its parameters' device " + "/".join(sorted(devices))
                if "fused" in signature
                else "it"
            )
            fail(
                func,
                f"implementation='fused' is not available for {cls.__name__} on {where}",
                hint="use implementation='auto'",
            )
        return {"fused": True}
    if impl == "foreach":
        if "foreach" not in signature:
            fail(
                func,
                f"implementation='foreach' is not available for {cls.__name__}",
                hint="use implementation='auto'",
            )
        return {"foreach": True}
    return {"foreach": False} if "foreach" in signature else {}


def build_optimizer(
    name: str,
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    *,
    lr: float,
    weight_decay: float = 0.0,
    implementation: str = "auto",
    **options: Any,
) -> torch.optim.Optimizer:
    """A ``torch.optim`` optimizer by name.

    Args:
        name: ``sgd``, ``adam``, ``adamw``, ``nadam``, ``radam``, ``rmsprop``, ``adagrad``,
            ``adamax``, ``adadelta``, ``asgd``, ``adafactor`` or ``rprop`` (any case, ``-`` or
            ``_``). ``lbfgs``, ``sparse_adam`` and ``muon`` are refused with the reason.
        params: tensors or param groups (e.g. :func:`strop.finetune.param_groups`, whose groups
            set their own ``lr`` and ``weight_decay``, which win over the arguments here).
        lr: the default learning rate.
        weight_decay: the default weight decay (groups that set their own keep it).
        implementation: ``"auto"`` | ``"fused"`` | ``"foreach"`` | ``"for_loop"`` (module docstring).
        **options: the optimizer's own keyword arguments (``momentum``, ``betas``, ``eps``,
            ``nesterov``, ``centered``, ...). SGD's ``momentum`` defaults to 0.9 in strop.
    """
    func = "build_optimizer"
    entry = _entry(func, name)
    check_positive(func, "lr", lr)
    check_positive(func, "weight_decay", weight_decay, allow_zero=True)
    check_choice(func, "implementation", implementation, IMPLEMENTATIONS)
    check_options(func, name, options)
    groups = list(params)
    if not groups:
        fail(func, "params is empty", hint="is every parameter frozen?")
    tensors = [p for g in groups for p in g["params"]] if isinstance(groups[0], dict) else groups
    signature = inspect.signature(entry.cls).parameters
    decays = (
        [g.get("weight_decay", weight_decay) for g in groups]
        if isinstance(groups[0], dict)
        else [weight_decay]
    )
    kwargs: dict[str, Any] = {**entry.defaults, **options, "lr": lr}
    if "weight_decay" in signature:
        kwargs["weight_decay"] = weight_decay
    elif any(d > 0 for d in decays):
        fail(
            func,
            f"optimizer {_key(name)!r} has no weight decay; got weight_decay={max(decays)!r}",
            hint="set weight_decay: 0",
        )
    else:
        groups = (
            [{k: v for k, v in g.items() if k != "weight_decay"} for g in groups]
            if isinstance(groups[0], dict)
            else groups
        )
    kwargs.update(_implementation(func, entry.cls, implementation, tensors))
    try:
        return entry.cls(groups, **kwargs)
    except (ValueError, TypeError, RuntimeError) as exc:
        fail(func, f"torch.optim.{entry.cls.__name__} refused the options {options!r}: {exc}")
