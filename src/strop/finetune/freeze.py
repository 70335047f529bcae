"""Freezing: feature extraction (a frozen backbone), freezing up to a stage, and BatchNorm handling.

A frozen BatchNorm layer must also stop updating its running statistics, or a frozen backbone
still drifts while the head trains (``requires_grad=False`` does not stop ``model.train()`` from
putting BN back in training mode). strop keeps frozen BN layers in eval mode by swapping the
layer's class for a subclass whose ``train()`` always sets eval mode — the same layer, same
parameters and buffers, same ``state_dict`` keys; it survives ``model.train()``, ``deepcopy`` and
pickling, and ``isinstance(layer, nn.BatchNorm2d)`` stays true. ``unfreeze`` swaps the class back.
With ``train_bn=True`` (fastai's default) frozen stages keep their BN layers trainable and in
training mode instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from strop._checks import did_you_mean, fail
from strop.finetune.zoo import LayerGroup, layer_groups

__all__ = ["convert_sync_batchnorm", "freeze", "is_backbone_frozen", "set_frozen", "unfreeze"]


class _EvalModeMixin:
    """``train()`` always means eval: running statistics of a frozen layer never move."""

    def train(self, mode: bool = True) -> Any:
        return super().train(False)  # type: ignore[misc]

    def extra_repr(self) -> str:
        return super().extra_repr() + ", frozen=eval"  # type: ignore[misc]


class _EvalBatchNorm1d(_EvalModeMixin, nn.BatchNorm1d):
    pass


class _EvalBatchNorm2d(_EvalModeMixin, nn.BatchNorm2d):
    pass


class _EvalBatchNorm3d(_EvalModeMixin, nn.BatchNorm3d):
    pass


class _EvalSyncBatchNorm(_EvalModeMixin, nn.SyncBatchNorm):
    pass


_LOCKED: dict[type, type] = {
    nn.BatchNorm1d: _EvalBatchNorm1d,
    nn.BatchNorm2d: _EvalBatchNorm2d,
    nn.BatchNorm3d: _EvalBatchNorm3d,
    nn.SyncBatchNorm: _EvalSyncBatchNorm,
}
_UNLOCKED: dict[type, type] = {v: k for k, v in _LOCKED.items()}


def _lock_bn(module: nn.Module) -> None:
    cls = type(module)
    if cls in _UNLOCKED:
        return
    locked = _LOCKED.get(cls)
    if locked is None:
        # another _BatchNorm subclass: made on the fly (a full-model pickle of it needs this
        # module to have locked one of the same class first; state_dicts are unaffected)
        locked = type(f"_Eval{cls.__name__}", (_EvalModeMixin, cls), {"__module__": __name__})
        globals()[locked.__name__] = locked
        _LOCKED[cls], _UNLOCKED[locked] = locked, cls
    module.__class__ = locked
    module.train(False)


def _unlock_bn(module: nn.Module, training: bool) -> None:
    original = _UNLOCKED.get(type(module))
    if original is not None:
        module.__class__ = original
    module.train(training)


def is_bn_locked(module: nn.Module) -> bool:
    """Whether ``module`` is a BatchNorm layer that ``freeze`` keeps in eval mode."""
    return type(module) in _UNLOCKED


def _bn_layers(group: LayerGroup) -> Iterable[_BatchNorm]:
    for m in group.modules:
        for sub in m.modules():
            if isinstance(sub, _BatchNorm):
                yield sub


def _bn_param_ids(group: LayerGroup) -> set[int]:
    return {id(p) for bn in _bn_layers(group) for p in bn.parameters(recurse=False)}


def set_frozen(group: LayerGroup, frozen: bool, *, train_bn: bool, training: bool) -> None:
    bn_ids = _bn_param_ids(group) if frozen and train_bn else set()
    for _, p in group.params:
        p.requires_grad_(not frozen or id(p) in bn_ids)
    for bn in _bn_layers(group):
        if frozen and not train_bn:
            _lock_bn(bn)
        else:
            _unlock_bn(bn, training)


def _stages(func: str, model: nn.Module, what: Any, *, first: bool) -> list[LayerGroup]:
    """The stage groups ``what`` selects: the first ones (freeze) or the last ones (unfreeze)."""
    groups = layer_groups(model)
    stages = groups[:-1]
    names = [g.name for g in stages]
    if what == "backbone":
        return stages
    if isinstance(what, bool) or not isinstance(what, (str, int)):
        fail(
            func,
            f"what must be 'backbone', a layer-group name or a number of stages; got {type(what).__name__} {what!r}",
            exc=TypeError,
        )
    if isinstance(what, int):
        if not 0 <= what <= len(stages):
            fail(func, f"what must be a number of stages between 0 and {len(stages)}; got {what}")
        return stages[:what] if first else stages[len(stages) - what :]
    if what == "head":
        fail(
            func,
            "what='head' names the classifier, which freeze/unfreeze leave trainable",
            hint="freeze the head's parameters by hand if that is really wanted",
        )
    if what not in names:
        fail(
            func,
            f"what must be 'backbone', a number of stages or a layer-group name; got {what!r}{did_you_mean(what, names)}",
            hint=f"groups of {type(model).__name__}: {', '.join(names)}",
        )
    i = names.index(what)
    return stages[: i + 1] if first else stages[i:]


def freeze(model: nn.Module, what: str | int | None, *, train_bn: bool = False) -> None:
    """Freeze part of ``model`` in place (``requires_grad=False``); the head always stays trainable.

    ``what``:
      - ``"backbone"``: every layer group but the head (feature extraction; the
        aux heads of inception/googlenet are heads and stay trainable);
      - a layer-group name such as ``"layer3"``: that group and every group before it
        ("freeze up to layer3"); :func:`strop.finetune.model_spec` lists the names;
      - an int ``n``: the first ``n`` layer groups (0 freezes nothing);
      - ``None``: nothing.

    Frozen BatchNorm layers are kept in eval mode across ``model.train()`` so that their running
    statistics do not drift; ``train_bn=True`` instead keeps them trainable and in training mode
    (fastai's ``train_bn``). Freezing adds to what is already frozen; ``unfreeze(model, "all")``
    resets. Groups that are not selected are left as they are.
    """
    if what is None:
        layer_groups(model)  # still validates the model
        return
    for group in _stages("freeze", model, what, first=True):
        set_frozen(group, True, train_bn=train_bn, training=model.training)


def unfreeze(model: nn.Module, what: str | int | None = "all") -> None:
    """Make part of ``model`` trainable again, in place, and release its BatchNorm layers.

    ``what``:
      - ``"all"`` or ``None``: everything;
      - ``"backbone"``: every layer group but the head (the head is trainable anyway);
      - a layer-group name such as ``"layer3"``: that group and every group after it;
      - an int ``n``: the last ``n`` layer groups (what gradual unfreezing does epoch by epoch).

    Released BatchNorm layers follow the model's current mode (``model.training``).
    """
    if what in ("all", None):
        for p in model.parameters():
            p.requires_grad_(True)
        for m in model.modules():
            if is_bn_locked(m):
                _unlock_bn(m, model.training)
        return
    for group in _stages("unfreeze", model, what, first=False):
        set_frozen(group, False, train_bn=False, training=model.training)


def is_backbone_frozen(model: nn.Module) -> bool:
    """Whether everything before the head is frozen, so that the head's input can be cached.

    True when every parameter outside the head group has ``requires_grad=False``. A model frozen
    with ``train_bn=True`` is therefore *not* reported as frozen: its BatchNorm layers still learn
    and its features still change.
    """
    groups = layer_groups(model)
    params = [p for g in groups[:-1] for _, p in g.params]
    return bool(params) and not any(p.requires_grad for p in params)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """``nn.SyncBatchNorm.convert_sync_batchnorm(model)``, keeping frozen BatchNorm locked.

    The conversion builds plain ``SyncBatchNorm`` layers; those that replace a frozen (locked)
    BatchNorm are locked again, so they stay in eval mode across ``model.train()``.
    """
    locked = {name for name, mod in model.named_modules() if isinstance(mod, _EvalModeMixin)}
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, mod in model.named_modules():
        if name in locked and type(mod) is nn.SyncBatchNorm:
            mod.__class__ = _EvalSyncBatchNorm
            mod.eval()
    return model
