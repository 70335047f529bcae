"""Training state as one dict of named stateful objects, saved and restored symmetrically.

``dump_state(objects)`` calls ``state_dict()`` on each and adds the RNG states;
``restore_state(objects, checkpoint)`` calls ``load_state_dict()`` on each, in the dict's order
(so an object whose state decides the shape of a later one, such as the unfreezing plan that
adds the optimizer's param groups, comes first), then restores the RNG. A ``None`` object is
saved as ``None`` and skipped on restore, as is an entry the checkpoint does not hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from strop._rng import capture_rng, restore_rng

__all__ = ["UnfreezeProgress", "capture_rng", "dump_state", "restore_state", "upgrade_checkpoint"]


def dump_state(objects: Mapping[str, Any]) -> dict[str, Any]:
    """``{name: obj.state_dict() or None, ..., "rng": capture_rng()}``."""
    out = {name: None if obj is None else obj.state_dict() for name, obj in objects.items()}
    out["rng"] = capture_rng()
    return out


def restore_state(objects: Mapping[str, Any], checkpoint: Mapping[str, Any]) -> None:
    """Inverse of :func:`dump_state`: ``obj.load_state_dict(checkpoint[name])`` in order, then
    the RNG states."""
    for name, obj in objects.items():
        saved = checkpoint.get(name)
        if obj is not None and saved is not None:
            obj.load_state_dict(saved)
    restore_rng(checkpoint["rng"])


def upgrade_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Fill in what a checkpoint written by an older strop (same ``format_version``) lacks.

    Before ``unfreeze`` was recorded it was always ``None``; the plan had started every epoch up
    to the checkpoint's (the current one too, when it was saved mid-epoch).
    """
    if checkpoint.get("unfreeze") is None:
        st = checkpoint["state"]
        checkpoint["unfreeze"] = {
            "epochs_started": st["epoch"] + (1 if st["batch_in_epoch"] else 0)
        }
    return checkpoint


class UnfreezeProgress:
    """A gradual-unfreezing plan bound to its model and optimizer, as a stateful object.

    The plan itself is a function of the epoch; what a checkpoint needs is how many epochs it
    has started, so that restoring replays them and re-creates the param groups it added before
    the optimizer's state is loaded into them.
    """

    def __init__(self, plan: Any, model: Any, optimizer: Any) -> None:
        self.plan, self.model, self.optimizer = plan, model, optimizer
        self.epochs_started = 0

    def on_epoch_start(self, epoch: int) -> None:
        self.plan.on_epoch_start(epoch, self.model, self.optimizer)
        self.epochs_started = epoch + 1

    def state_dict(self) -> dict[str, int]:
        return {"epochs_started": self.epochs_started}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        for epoch in range(int(state["epochs_started"])):
            self.on_epoch_start(epoch)
