"""A few duck-typed hooks over :class:`~strop.train.loop.TrainState`, not a framework.

A callback defines any of ``on_fit_start(state)``, ``on_epoch_start(state)``,
``on_batch_end(state, logs)``, ``on_epoch_end(state, logs)``, ``on_fit_end(state)``. It stops
training by setting ``state.should_stop``. The loop never prints: the progress bar is a callback,
and so are the CSV log and early stopping. Output streams are injected so they can be tested.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from strop.train.metrics import is_better
from strop.train.rundir import read_rows

__all__ = ["CSVLogger", "EarlyStopping", "ProgressBar", "TensorBoardLogger", "call"]


def call(callbacks: list[Any], hook: str, *args: Any) -> None:
    """Call ``hook`` on every callback that has it."""
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(*args)


class ProgressBar:
    """A tqdm bar per epoch showing loss, LR and throughput; one summary line per epoch."""

    def __init__(
        self,
        total_epochs: int,
        batches_per_epoch: int,
        *,
        file: TextIO | None = None,
        enabled: bool = True,
        mininterval: float = 0.1,
    ):
        self.total_epochs = total_epochs
        self.mininterval = mininterval
        self.batches = batches_per_epoch
        self.file = file
        self.enabled = enabled
        self._bar: Any = None

    def on_epoch_start(self, state: Any) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=self.batches,
            initial=state.batch_in_epoch,
            desc=f"epoch {state.epoch + 1}/{self.total_epochs}",
            file=self.file or sys.stderr,
            leave=False,
            dynamic_ncols=True,
            mininterval=self.mininterval,
        )

    def on_batch_end(self, state: Any, logs: dict[str, float]) -> None:
        if self._bar is not None:
            self._bar.set_postfix(
                loss=f"{logs['loss']:.4f}",
                lr=f"{logs['lr']:.2e}",
                img_s=f"{logs['images_per_s']:.0f}",
            )
            self._bar.update(1)

    def on_epoch_end(self, state: Any, logs: dict[str, float]) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.enabled:
            shown = "  ".join(f"{k}={v:.4f}" for k, v in logs.items() if isinstance(v, float))
            print(
                f"epoch {state.epoch + 1}/{self.total_epochs}  {shown}",
                file=self.file or sys.stderr,
            )


class CSVLogger:
    """``metrics.csv``: one row per optimizer step (kind=step: lr, loss) and per epoch (kind=epoch).

    The file is appended to, so a resumed run continues the same log; rows past the resume point
    (written after the last checkpoint by a run that crashed) are dropped first. Step rows are
    written in batches (every ``flush_seconds``), and always before a checkpoint: when a
    checkpoint is on disk, so are the rows of the steps it covers.
    """

    def __init__(self, path: str | Path, metric_names: list[str], flush_seconds: float = 2.0):
        self.path = Path(path)
        self.flush_seconds = flush_seconds
        self.fields = ["kind", "epoch", "step", "lr", "lr_min", "loss", *metric_names]

    def on_fit_start(self, state: Any) -> None:
        rows = [row for row in read_rows(self.path) if _row_done(row, state)]
        # rewrite beside and swap: a kill during the rewrite must not lose the log
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)
        self._fh = open(self.path, "a", newline="")  # noqa: SIM115 - closed in on_fit_end
        # rows are buffered in memory and written in batches: at least every `flush_seconds`,
        # before every checkpoint (on_checkpoint), at epoch end and at the end of the fit
        self._buffer = io.StringIO()
        self._writer = csv.DictWriter(self._buffer, fieldnames=self.fields, extrasaction="ignore")
        self._last_step = state.step
        self._flushed_at = time.monotonic()

    def on_batch_end(self, state: Any, logs: dict[str, float]) -> None:
        if state.step != self._last_step:  # one row per optimizer step, not per micro-batch
            self._last_step = state.step
            self._writer.writerow(
                {"kind": "step", "epoch": state.epoch + 1, "step": state.step, **logs}
            )
            if time.monotonic() - self._flushed_at >= self.flush_seconds:
                self.flush()

    def flush(self) -> None:
        """Write the buffered rows in one ``write`` and flush it to the OS (a kill then cuts at
        most the last row, which a resume drops)."""
        text = self._buffer.getvalue()
        try:
            if text:
                self._fh.write(text)
                self._buffer.seek(0)
                self._buffer.truncate()
            self._fh.flush()
        except OSError as exc:
            # a full disk or a read-only folder: one line naming the file; checkpoints are kept
            raise OSError(
                exc.errno,
                f"could not write {self.path}: {exc.strerror or exc}; training stopped, "
                "the checkpoints written so far are kept (continue with --resume)",
            ) from None
        self._flushed_at = time.monotonic()

    def on_checkpoint(self, state: Any) -> None:
        """Before a checkpoint is written: its steps' rows reach the file first."""
        self.flush()

    def on_epoch_end(self, state: Any, logs: dict[str, float]) -> None:
        self._writer.writerow(
            {"kind": "epoch", "epoch": state.epoch + 1, "step": state.step, **logs}
        )
        self.flush()

    def on_fit_end(self, state: Any) -> None:
        try:
            self.flush()
        finally:
            self._fh.close()


def _row_done(row: dict[str, str], state: Any) -> bool:
    """True for a row at or before ``state``; one whose step or epoch is not a number (cut by a
    crash) is dropped rather than failing the resume."""
    try:
        if row["kind"] == "epoch":
            return int(row["epoch"] or "") <= state.epoch
        if row["kind"] == "step":
            return int(row["step"] or "") <= state.step
    except ValueError:
        return False
    return False


class EarlyStopping:
    """Stop when ``metric`` has not improved by ``min_delta`` for ``patience`` epochs."""

    def __init__(self, metric: str, mode: str, patience: int, min_delta: float = 0.0):
        self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
        self.best = -math.inf if mode == "max" else math.inf
        self.bad_epochs = 0

    @property
    def stopped(self) -> bool:
        """True once ``patience`` epochs in a row brought no improvement."""
        return self.bad_epochs >= self.patience

    def on_epoch_end(self, state: Any, logs: dict[str, float]) -> None:
        value = logs.get(self.metric)
        if is_better(value, self.best, self.mode, self.min_delta):
            self.best, self.bad_epochs = float(value), 0  # type: ignore[arg-type]
        else:
            self.bad_epochs += 1
        if self.stopped:
            state.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.best, self.bad_epochs = sd["best"], sd["bad_epochs"]


class TensorBoardLogger:
    """TensorBoard scalars, used only when ``tensorboard`` is installed."""

    def __init__(self, log_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.writer = SummaryWriter(str(log_dir))

    def on_batch_end(self, state: Any, logs: dict[str, float]) -> None:
        self.writer.add_scalar("train/loss_step", logs["loss"], state.step)
        self.writer.add_scalar("train/lr", logs["lr"], state.step)

    def on_epoch_end(self, state: Any, logs: dict[str, float]) -> None:
        for k, v in logs.items():
            self.writer.add_scalar(f"epoch/{k}", v, state.epoch + 1)

    def on_fit_end(self, state: Any) -> None:
        self.writer.close()
