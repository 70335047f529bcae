"""What differs between tasks, in one small object each: classification and segmentation here;
detection in :mod:`strop.train.detection_run`.

The training loop and :func:`~strop.train.loop.evaluate` treat a batch as opaque: the task moves
it to the device, runs the model on it and turns the output into a loss, counts what training
logs, and accumulates validation metrics into a tensor of totals (summed across processes in
distributed runs). A new task is a new subclass and one entry in :data:`TASKS`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from strop.finetune.heads import output_loss, split_outputs
from strop.train.metrics import PER_EPOCH, confusion_matrix, overlap_metrics

__all__ = ["TASKS", "Classification", "Segmentation", "Task", "build_task"]


class Task:
    """The task-specific parts of training and validation (subclasses fill them in)."""

    name = ""
    default_monitor = ""
    train_metrics: tuple[str, ...] = ("train_loss",)
    collate_fn: Any = None  # the DataLoader's collate_fn (None: torch's default)

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_classes={self.num_classes})"

    @property
    def out_channels(self) -> int:
        """Width of the model's output layer."""
        return self.num_classes

    def val_metric_names(self) -> list[str]:
        raise NotImplementedError

    def attach(self, run: Any, train_ds: Any) -> None:
        """Called once the run is built (detection keeps a BatchNorm recalibration loader)."""

    def metadata(self, model: nn.Module) -> dict[str, Any]:
        """What checkpoints record about the task besides the classes (detection: the detector)."""
        return {}

    def metric_names(self) -> list[str]:
        """Every per-epoch metric a run of this task logs."""
        return [
            "train_loss",
            "val_loss",
            *self.train_metrics[1:],
            *self.val_metric_names(),
            *PER_EPOCH,
        ]

    def to_device(
        self, batch: Any, device: torch.device, memory_format: torch.memory_format
    ) -> Any:
        """``(inputs, targets)`` on ``device``; 4-d images in ``memory_format``."""
        x, y = batch
        non_blocking = device.type == "cuda"
        if x.dim() == 4:
            x = x.to(device, non_blocking=non_blocking, memory_format=memory_format)
        else:  # cached features (N, D): no memory format applies
            x = x.to(device, non_blocking=non_blocking)
        return x, torch.as_tensor(y).to(device, non_blocking=non_blocking)

    def batch_size(self, batch: Any) -> int:
        return len(batch[1])

    def inputs(self, batch: Any) -> Tensor:
        """The model's input tensor (checked for NaN when a loss is not finite)."""
        return batch[0]

    def forward_loss(
        self, model: nn.Module, loss_fn: Any, batch: Any, aux_weight: float
    ) -> tuple[Tensor, Tensor]:
        """``(loss, main output)`` of a training forward pass (auxiliary heads weighted)."""
        x, y = batch
        return output_loss(loss_fn, model(x), y, aux_weight)

    def val_output(self, model: nn.Module, loss_fn: Any, batch: Any) -> tuple[Tensor, Tensor]:
        """``(loss, main output)`` in eval mode: auxiliary heads are not scored."""
        x, y = batch
        main, _ = split_outputs(model(x))
        return loss_fn(main, y), main

    def train_counts(self, main: Tensor, batch: Any) -> float:
        """What training sums besides the loss (classification: correct predictions)."""
        return 0.0

    def val_totals(self) -> Tensor:
        """Zeros to accumulate validation sums into (float64: exact across processes)."""
        raise NotImplementedError

    def val_update(self, totals: Tensor, loss: Tensor, main: Tensor, batch: Any) -> None:
        raise NotImplementedError

    def val_metrics(self, totals: Tensor) -> dict[str, float]:
        raise NotImplementedError


class Classification(Task):
    """(N, C) logits, (N,) integer labels: accuracy, and top-5 accuracy beyond 5 classes."""

    name = "classification"
    default_monitor = "val_accuracy"
    train_metrics = ("train_loss", "train_accuracy")

    def val_metric_names(self) -> list[str]:
        return ["val_accuracy"] + (["val_top5"] if self.num_classes > 5 else [])

    def train_counts(self, main: Tensor, batch: Any) -> float:
        if main.dim() != 2:
            return 0.0
        y = batch[1]
        if y.is_floating_point():  # Mixup/CutMix soft targets: scored against their argmax
            y = y.argmax(1)
        return float((main.detach().argmax(1) == y).sum())

    def val_totals(self) -> Tensor:
        return torch.zeros(4, dtype=torch.float64)  # loss·count, count, top-1 and top-5 correct

    def val_update(self, totals: Tensor, loss: Tensor, main: Tensor, batch: Any) -> None:
        y = batch[1]
        main = main.float()
        top = main.topk(min(5, main.shape[1]), dim=1).indices
        totals[0] += float(loss) * len(y)
        totals[1] += len(y)
        totals[2] += float((top[:, 0] == y).sum())
        totals[3] += float((top == y[:, None]).any(1).sum())

    def val_metrics(self, totals: Tensor) -> dict[str, float]:
        c = max(float(totals[1]), 1.0)
        out = {"val_loss": float(totals[0]) / c, "val_accuracy": float(totals[2]) / c}
        if self.num_classes > 5:
            out["val_top5"] = float(totals[3]) / c
        return out


class Segmentation(Task):
    """(N, C, H, W) logits (one channel for 2 classes), (N, H, W) masks: Dice, IoU, pixel accuracy."""

    name = "segmentation"
    default_monitor = "val_dice"

    @property
    def out_channels(self) -> int:
        # two classes are one binary logit channel (BCE/Dice in binary mode)
        return 1 if self.num_classes == 2 else self.num_classes

    def val_metric_names(self) -> list[str]:
        return ["val_dice", "val_iou", "val_pixel_accuracy"]

    def val_totals(self) -> Tensor:
        return torch.zeros(
            2 + self.num_classes**2, dtype=torch.float64
        )  # loss·count, count, confusion

    def val_update(self, totals: Tensor, loss: Tensor, main: Tensor, batch: Any) -> None:
        y = batch[1]
        totals[0] += float(loss) * len(y)
        totals[1] += len(y)
        totals[2:] += confusion_matrix(main.float(), y, self.num_classes).flatten()

    def val_metrics(self, totals: Tensor) -> dict[str, float]:
        n = self.num_classes
        out = {"val_loss": float(totals[0]) / max(float(totals[1]), 1.0)}
        out.update(overlap_metrics(totals[2:].view(n, n)))
        return out


from strop.train.detection_run import Detection  # noqa: E402  (it subclasses Task)

TASKS: dict[str, type[Task]] = {
    "classification": Classification,
    "segmentation": Segmentation,
    "detection": Detection,
}


def build_task(name: str, num_classes: int, classes: list[str] | None = None) -> Task:
    """The :class:`Task` called ``name`` for ``num_classes`` classes (background counted;
    detection: object classes, named by ``classes``)."""
    if name not in TASKS:
        raise ValueError(f"task must be one of {', '.join(map(repr, TASKS))}; got {name!r}")
    if name == "detection":
        return Detection(num_classes, classes)
    return TASKS[name](num_classes)
