"""Stochastic Weight Averaging (Izmailov et al., 2018) with ``torch.optim.swa_utils``.

From ``start_epoch`` on, the LR follows ``SWALR`` (towards the constant ``lr``) instead of the
run's schedule, and the weights at the end of each epoch are averaged with equal weights
(``AveragedModel``'s default). After the last epoch ``finalize(loader)`` recomputes the averaged
model's BatchNorm statistics with ``update_bn`` (averaged weights need their own statistics).

Call sites in a training loop::

    swa = SWA(model, optimizer, start_epoch=8, lr=0.01)
    for epoch in range(epochs):
        swa.on_epoch_start(epoch)
        for batch in loader:
            ...; optimizer.step()
            if not swa.active(epoch):
                scheduler.step()          # the run's own schedule stops when SWA starts
        swa.on_epoch_end(epoch, model)
    swa.finalize(train_loader, device)    # then evaluate / save swa.module
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

from strop._checks import check_choice, check_positive, fail

__all__ = ["SWA"]


class SWA:
    """Equal-weight average of the end-of-epoch weights from ``start_epoch`` (0-based) on.

    Args:
        model: the trained model (deep-copied into ``self.averaged``).
        optimizer: its optimizer; ``SWALR`` takes over its LR from ``start_epoch``.
        start_epoch: first epoch (0-based) whose end weights are averaged.
        lr: the SWA learning rate (one number, or one per param group) — torch's ``swa_lr``.
        anneal_epochs: epochs to move from the current LR to ``lr`` (0: jump at ``start_epoch``).
        anneal_strategy: ``"cos"`` or ``"linear"``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        start_epoch: int,
        lr: float | Sequence[float],
        anneal_epochs: int = 0,
        anneal_strategy: str = "cos",
    ) -> None:
        func = "SWA"
        check_positive(func, "start_epoch", start_epoch, allow_zero=True, integer=True)
        check_positive(func, "anneal_epochs", anneal_epochs, allow_zero=True, integer=True)
        check_choice(func, "anneal_strategy", anneal_strategy, ("cos", "linear"))
        lrs = [lr] if isinstance(lr, (int, float)) else list(lr)
        for value in lrs:
            check_positive(func, "lr", value)
        if len(lrs) not in (1, len(optimizer.param_groups)):
            fail(
                func,
                f"lr must be one number or one per param group ({len(optimizer.param_groups)}); "
                f"got {len(lrs)}",
            )
        self.start_epoch, self.lr = start_epoch, lr
        self.anneal_epochs, self.anneal_strategy = anneal_epochs, anneal_strategy
        self.optimizer = optimizer
        self.averaged = AveragedModel(model)
        self.averaged.requires_grad_(False)
        self.scheduler: SWALR | None = None

    @property
    def module(self) -> nn.Module:
        """The averaged model."""
        return self.averaged.module

    @property
    def n_averaged(self) -> int:
        return int(self.averaged.n_averaged)

    def active(self, epoch: int) -> bool:
        """Whether ``epoch`` is an SWA epoch (then the run's own scheduler must not step)."""
        return epoch >= self.start_epoch

    def _make_scheduler(self) -> SWALR:
        return SWALR(
            self.optimizer,
            swa_lr=self.lr,
            anneal_epochs=self.anneal_epochs,  # type: ignore[arg-type]
            anneal_strategy=self.anneal_strategy,
        )  # type: ignore[arg-type]

    def on_epoch_start(self, epoch: int) -> None:
        """At the first SWA epoch, hand the LR to ``SWALR``."""
        if self.active(epoch) and self.scheduler is None:
            self.scheduler = self._make_scheduler()

    def on_epoch_end(self, epoch: int, model: nn.Module) -> None:
        """Average ``model``'s weights into the SWA model and step ``SWALR`` (SWA epochs only)."""
        if not self.active(epoch):
            return
        if self.scheduler is None:
            fail(
                "SWA.on_epoch_end",
                f"epoch {epoch} is an SWA epoch but on_epoch_start was not called",
            )
        self.averaged.update_parameters(model)
        self.scheduler.step()

    @torch.no_grad()
    def finalize(self, loader: Iterable[Any], device: torch.device | str | None = None) -> None:
        """Recompute the averaged model's BatchNorm statistics over ``loader`` (``update_bn``)."""
        if self.n_averaged == 0:
            fail(
                "SWA.finalize",
                f"nothing was averaged (start_epoch={self.start_epoch})",
                hint="start_epoch must be smaller than the number of epochs",
            )
        update_bn(loader, self.averaged, device=device)

    def state_dict(self) -> dict[str, Any]:
        return {
            "averaged": self.averaged.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state["averaged"])
        if state["scheduler"] is None:
            self.scheduler = None
            return
        # a new SWALR leaves the LRs as they are (anneal_epochs > 0) or sets swa_lr (0), which is
        # what an SWA-phase checkpoint holds; the optimizer's own state restores them either way
        self.scheduler = self._make_scheduler()
        self.scheduler.load_state_dict(state["scheduler"])
