"""Discriminative learning rates and gradual unfreezing.

``param_groups`` turns a model's layer groups into optimizer parameter groups (lower learning
rates for early layers, no weight decay on biases and normalisation weights); ``GradualUnfreezing``
is fastai's ``fine_tune`` as something a training loop calls at each epoch start.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from strop._checks import check_positive, fail
from strop.finetune.freeze import set_frozen
from strop.finetune.zoo import LayerGroup, layer_groups

__all__ = ["GradualUnfreezing", "param_groups"]

# parameters that are embeddings rather than weights: decaying them towards zero hurts (ViT's
# class token and position embedding, Swin's relative position bias table)
_NO_DECAY_NAMES = (
    "class_token",
    "pos_embedding",
    "relative_position_bias_table",
    "cls_token",
    "pos_embed",
)


def _no_decay(name: str, p: torch.Tensor) -> bool:
    # biases and norm weights are the 1-D parameters (BatchNorm, LayerNorm, GroupNorm, conv/linear bias)
    return p.ndim <= 1 or name.rsplit(".", 1)[-1] in _NO_DECAY_NAMES


def _split(
    name: str,
    params: list[tuple[str, nn.Parameter]],
    lr: float,
    weight_decay: float,
    extra: dict[str, Any],
) -> list[dict[str, Any]]:
    if weight_decay == 0:
        parts = [(name, [p for _, p in params], 0.0)]
    else:
        parts = [
            (name, [p for n, p in params if not _no_decay(n, p)], weight_decay),
            (f"{name} (no decay)", [p for n, p in params if _no_decay(n, p)], 0.0),
        ]
    return [
        {**extra, "params": ps, "lr": lr, "weight_decay": wd, "name": nm}
        for nm, ps, wd in parts
        if ps
    ]


def _check_mult(func: str, arg: str, value: float | None, *, at_most_one: bool = False) -> None:
    if value is None:
        return
    check_positive(func, arg, value)
    if at_most_one and value > 1:
        fail(func, f"{arg} must be in (0, 1]; got {value!r}")


def param_groups(
    model: nn.Module,
    lr: float,
    *,
    head_lr_mult: float = 1.0,
    layer_decay: float | None = None,
    weight_decay: float = 0.0,
    trainable_only: bool = True,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups with discriminative learning rates.

    The head group gets ``lr * head_lr_mult``. Without ``layer_decay`` every other parameter gets
    ``lr``; with it, layer group ``i`` of the ``S`` groups before the head (forward order, see
    :func:`strop.finetune.model_spec`) gets ``lr * layer_decay ** (S - i)``, the layer-wise decay
    of BEiT / timm's ``param_groups_layer_decay`` (the last stage ``lr * layer_decay``, the stem
    ``lr * layer_decay ** S``).

    ``weight_decay`` is applied to weights only: biases, normalisation weights (every 1-D
    parameter) and ViT/Swin position embeddings and class tokens go to a ``"(no decay)"`` group
    with ``weight_decay=0`` — the usual default (timm, torchvision references). Every group sets
    ``weight_decay`` explicitly, so the optimizer's own default (AdamW's 0.01) does not apply.

    ``trainable_only=True`` leaves frozen parameters out (``GradualUnfreezing`` adds them when it
    unfreezes them). Each group is ``{"params", "lr", "weight_decay", "name"}``; empty groups are
    dropped. Works with any ``torch.optim`` optimizer: ``AdamW(param_groups(model, 1e-3))``.
    """
    check_positive("param_groups", "lr", lr)
    _check_mult("param_groups", "head_lr_mult", head_lr_mult)
    _check_mult("param_groups", "layer_decay", layer_decay, at_most_one=True)
    check_positive("param_groups", "weight_decay", weight_decay, allow_zero=True)
    groups = layer_groups(model)
    *stages, head = groups

    def keep(g: LayerGroup) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in g.params if p.requires_grad or not trainable_only]

    out: list[dict[str, Any]] = []
    if layer_decay is None:
        body = [np for g in stages for np in keep(g)]
        out += _split("backbone", body, lr, weight_decay, {})
    else:
        for i, g in enumerate(stages):
            out += _split(g.name, keep(g), lr * layer_decay ** (len(stages) - i), weight_decay, {})
    out += _split("head", keep(head), lr * head_lr_mult, weight_decay, {})
    if not out:
        fail(
            "param_groups", "the model has no trainable parameters", hint="unfreeze something first"
        )
    return out


class GradualUnfreezing:
    """fastai's ``fine_tune`` as a plan the training loop follows: train the head alone for
    ``head_epochs`` epochs, then unfreeze the backbone and train everything with a lower LR.

    With ``every=k`` the backbone is unfrozen one layer group at a time from the top, one more
    every ``k`` epochs (ULMFiT's gradual unfreezing) instead of all at once.

    Call ``plan.on_epoch_start(epoch, model, optimizer)`` at the start of each epoch (0-based).
    It sets the model's frozen state for that epoch (idempotent: the state is a function of
    ``epoch``) and adds newly unfrozen parameters that the optimizer does not hold as new param
    groups, one per unfreezing event, each split into decay / no-decay groups like
    :func:`param_groups`. A new group copies the hyper-parameters of the optimizer group that holds
    the head's weight, with ``lr = head_lr * lr_mult`` (times ``layer_decay ** d`` for the group
    ``d`` stages below the top when ``layer_decay`` is given); ``initial_lr`` likewise when present,
    so that LR schedules can adopt the group. Parameters the optimizer already holds keep their
    groups.

    Resuming at epoch ``e``: build the model and the optimizer as at the start, call
    ``on_epoch_start(e, model, optimizer)`` and only then ``optimizer.load_state_dict(...)`` — the
    groups are added event by event, so the structure matches the saved one.
    """

    def __init__(
        self,
        head_epochs: int = 1,
        *,
        every: int | None = None,
        lr_mult: float = 0.1,
        layer_decay: float | None = None,
        train_bn: bool = False,
    ) -> None:
        check_positive(
            "GradualUnfreezing", "head_epochs", head_epochs, allow_zero=True, integer=True
        )
        if every is not None:
            check_positive("GradualUnfreezing", "every", every, integer=True)
        _check_mult("GradualUnfreezing", "lr_mult", lr_mult)
        _check_mult("GradualUnfreezing", "layer_decay", layer_decay, at_most_one=True)
        self.head_epochs = head_epochs
        self.every = every
        self.lr_mult = lr_mult
        self.layer_decay = layer_decay
        self.train_bn = train_bn

    def __repr__(self) -> str:
        return (
            f"GradualUnfreezing(head_epochs={self.head_epochs}, every={self.every}, "
            f"lr_mult={self.lr_mult}, layer_decay={self.layer_decay}, train_bn={self.train_bn})"
        )

    def _events(self, epoch: int, n_stages: int) -> list[tuple[int, list[int]]]:
        """``(epoch, stage indices)`` of each unfreezing event up to ``epoch``, top stages first."""
        if epoch < self.head_epochs:
            return []
        if self.every is None:
            return [(self.head_epochs, list(range(n_stages - 1, -1, -1)))]
        count = min(n_stages, 1 + (epoch - self.head_epochs) // self.every)
        return [(self.head_epochs + j * self.every, [n_stages - 1 - j]) for j in range(count)]

    def on_epoch_start(
        self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
    ) -> list[str]:
        """Apply the plan for ``epoch``; return the names of the param groups added (may be empty)."""
        check_positive(
            "GradualUnfreezing.on_epoch_start", "epoch", epoch, allow_zero=True, integer=True
        )
        *stages, head = layer_groups(model)
        events = self._events(epoch, len(stages))
        trainable = {i for _, ix in events for i in ix}
        for i, g in enumerate(stages):
            set_frozen(g, i not in trainable, train_bn=self.train_bn, training=model.training)
        if optimizer is None:
            return []
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        ref = self._reference_group(optimizer, head)
        base_lr = ref.get("initial_lr", ref["lr"])
        extra = {
            k: v
            for k, v in ref.items()
            if k not in ("params", "lr", "name", "initial_lr", "weight_decay")
        }
        wd = ref.get("weight_decay", 0.0)
        added: list[str] = []
        for event_epoch, indices in events:
            chunks = [[i] for i in indices] if self.layer_decay is not None else [indices]
            for chunk in chunks:
                params = [
                    (n, p)
                    for i in chunk
                    for n, p in stages[i].params
                    if p.requires_grad and id(p) not in held
                ]
                if not params:
                    continue
                depth = len(stages) - 1 - chunk[0]
                lr = (
                    base_lr
                    * self.lr_mult
                    * (self.layer_decay**depth if self.layer_decay is not None else 1.0)
                )
                label = stages[chunk[0]].name if len(chunk) == 1 else "backbone"
                for group in _split(f"unfreeze@{event_epoch}:{label}", params, lr, wd, extra):
                    if "initial_lr" in ref:
                        group["initial_lr"] = group["lr"]
                    optimizer.add_param_group(group)
                    added.append(group["name"])
                held.update(id(p) for _, p in params)
        return added

    @staticmethod
    def _reference_group(optimizer: torch.optim.Optimizer, head: LayerGroup) -> dict[str, Any]:
        weights = [p for _, p in head.params if p.ndim > 1] or [p for _, p in head.params]
        for group in optimizer.param_groups:
            if any(p is w for p in group["params"] for w in weights[:1]):
                return group
        return optimizer.param_groups[0]
