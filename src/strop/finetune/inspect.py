"""What fine-tuning will touch: head, layer groups, parameter counts, frozen parts, input size."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from strop.finetune.freeze import is_backbone_frozen, is_bn_locked
from strop.finetune.zoo import layer_groups, spec_of

__all__ = ["GroupSummary", "ModelSummary", "summarize"]


@dataclass(frozen=True)
class GroupSummary:
    """One layer group: its name, parameter counts and state (``"trainable"``, ``"frozen"`` or
    ``"partly frozen"``); ``bn_eval`` counts the BatchNorm layers kept in eval mode."""

    name: str
    params: int
    trainable: int
    state: str
    bn_eval: int


@dataclass(frozen=True)
class ModelSummary:
    """A model as fine-tuning sees it; ``str()`` renders the table ``strop inspect`` prints."""

    name: str
    task: str
    input_size: int
    head: str
    head_repr: str
    aux_heads: tuple[str, ...]
    num_classes: int
    total_params: int
    trainable_params: int
    backbone_frozen: bool
    groups: tuple[GroupSummary, ...]

    def __str__(self) -> str:
        lines = [
            f"model        {self.name} ({self.task})",
            f"input size   {self.input_size}x{self.input_size} (3 channels)",
            f"head         {self.head}: {self.head_repr}",
        ]
        if self.aux_heads:
            lines.append(
                f"aux heads    {', '.join(self.aux_heads)} (training only; loss weight 0.4)"
            )
        frozen = [g.name for g in self.groups if g.state != "trainable"]
        lines += [
            f"classes      {self.num_classes}",
            f"parameters   {self.total_params:,} total, {self.trainable_params:,} trainable "
            f"({100 * self.trainable_params / max(self.total_params, 1):.2f}%)",
            f"frozen       {', '.join(frozen) if frozen else 'nothing'}"
            + ("  [backbone frozen]" if self.backbone_frozen else ""),
            "",
            f"{'layer group':<28}{'params':>14}{'trainable':>14}  state",
        ]
        for g in self.groups:
            bn = f" ({g.bn_eval} BatchNorm kept in eval)" if g.bn_eval else ""
            lines.append(f"{g.name:<28}{g.params:>14,}{g.trainable:>14,}  {g.state}{bn}")
        return "\n".join(lines)


def summarize(model: nn.Module) -> ModelSummary:
    """Summarise ``model`` for fine-tuning (works on ``meta``-device models too)."""
    spec = spec_of("summarize", model)
    groups = []
    for g in layer_groups(model):
        n, t = g.numel(), g.numel(trainable_only=True)
        state = "trainable" if t == n else "frozen" if t == 0 else "partly frozen"
        bn_eval = sum(1 for m in g.modules for sub in m.modules() if is_bn_locked(sub))
        groups.append(GroupSummary(g.name, n, t, state, bn_eval))
    head = model.get_submodule(spec.head)
    head_repr = repr(head) if len(repr(head)) < 100 else type(head).__name__
    return ModelSummary(
        name=spec.name or type(model).__name__,
        task=spec.task,
        input_size=spec.input_size,
        head=spec.head,
        head_repr=head_repr,
        aux_heads=spec.aux_heads,
        num_classes=spec.num_classes,
        total_params=sum(g.params for g in groups),
        trainable_params=sum(g.trainable for g in groups),
        backbone_frozen=is_backbone_frozen(model),
        groups=tuple(groups),
    )
