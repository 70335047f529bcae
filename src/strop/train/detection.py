"""Detection as a training *task*: how a batch moves, how the loss is formed, how metrics add up.

:class:`DetectionTask` is what the trainer needs to know about detection and nothing else::

    task = DetectionTask(model, classes)            # model from strop.finetune.build_detector
    images, targets = task.to_device(batch, device)
    loss, parts = task.loss(model, images, targets) # model in train mode: torchvision's loss dict
    metrics = task.metrics()                        # COCO mAP via torchmetrics + pycocotools
    task.update(metrics, model, images, targets)    # model in eval mode
    task.compute(metrics) -> {"val_map": ..., "val_map_50": ..., "val_ap_circle": ...}

:func:`train_one_epoch` and :func:`evaluate_detection` are the torchvision tutorial's two functions
over it (mixed precision, accumulation and clipping through :class:`strop.precision.MixedPrecision`),
usable on their own; the trainer will drive the same task object.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from strop._checks import fail
from strop.data.detection import detection_collate
from strop.finetune.detection import detector_info

if TYPE_CHECKING:
    from torchmetrics.detection import MeanAveragePrecision

__all__ = ["SUMMARY_METRICS", "DetectionTask", "evaluate_detection", "train_one_epoch", "update_bn"]

Batch = tuple[Sequence[Tensor], Sequence[dict[str, Any]]]
# torchmetrics' keys -> strop's metric names (COCO's summary lines, in its order)
_SUMMARY = {
    "map": "val_map",
    "map_50": "val_map_50",
    "map_75": "val_map_75",
    "map_small": "val_map_small",
    "map_medium": "val_map_medium",
    "map_large": "val_map_large",
    "mar_1": "val_mar_1",
    "mar_10": "val_mar_10",
    "mar_100": "val_mar_100",
    "mar_small": "val_mar_small",
    "mar_medium": "val_mar_medium",
    "mar_large": "val_mar_large",
}
SUMMARY_METRICS = tuple(_SUMMARY.values())  # the COCO summary as strop names, in COCO's order


class DetectionTask:
    """Detection for the trainer. ``classes``: names of the object classes (no background).

    Labels stay 0-based class indices everywhere outside the model: :meth:`to_device` adds the
    family's background offset (1 for Faster R-CNN / SSD) and :meth:`update` takes it off the
    predictions again, so metrics, CSVs and predictions name the same classes as the data.
    """

    name = "detection"
    monitor = "val_map"
    mode = "max"
    collate_fn = staticmethod(detection_collate)

    def __init__(self, model: nn.Module, classes: Sequence[str]) -> None:
        info = detector_info(model)
        if len(classes) != info.num_classes:
            fail(
                "DetectionTask",
                f"classes has {len(classes)} names but the model was built for "
                f"{info.num_classes} classes",
                hint="build the detector with num_classes=len(classes)",
            )
        self.classes = list(classes)
        self.label_offset = info.label_offset
        self.metric_names = (*_SUMMARY.values(), *(f"val_ap_{c}" for c in self.classes))

    # ---------------------------------------------------------------------------- training
    def to_device(
        self, batch: Batch, device: torch.device | str
    ) -> tuple[list[Tensor], list[dict[str, Any]]]:
        """Images and targets on ``device``; targets get the model's label offset."""
        images, targets = batch
        non_blocking = torch.device(device).type == "cuda"
        images = [im.to(device, non_blocking=non_blocking) for im in images]
        moved = []
        for t in targets:
            moved.append(
                {
                    "boxes": t["boxes"].as_subclass(Tensor).to(device, non_blocking=non_blocking),
                    "labels": (t["labels"] + self.label_offset).to(
                        device, non_blocking=non_blocking
                    ),
                    "iscrowd": t.get("iscrowd", torch.zeros_like(t["labels"])).to(
                        device, non_blocking=non_blocking
                    ),
                }
            )
        return images, moved

    @staticmethod
    def batch_size(batch: Batch) -> int:
        return len(batch[0])

    @staticmethod
    def loss(
        model: nn.Module, images: list[Tensor], targets: list[dict[str, Any]]
    ) -> tuple[Tensor, dict[str, float]]:
        """``(sum of torchvision's loss dict, {part: value})`` with the model in train mode.

        The sum is float32 even under autocast (each part is upcast before adding). Parts are the
        torchvision names: ``loss_classifier``, ``loss_box_reg``, ``loss_objectness``,
        ``loss_rpn_box_reg`` (Faster R-CNN), ``classification``, ``bbox_regression``
        (RetinaNet/SSD), ``bbox_ctrness`` (FCOS).
        """
        if not model.training:
            fail(
                "DetectionTask.loss",
                "the model is in eval mode; torchvision detectors return losses only in train mode",
                hint="call model.train() first",
            )
        losses = model(images, targets)
        total = sum(v.float() for v in losses.values())
        return total, {k: float(v.detach()) for k, v in losses.items()}

    # -------------------------------------------------------------------------- validation
    @staticmethod
    def metrics() -> MeanAveragePrecision:
        """COCO box mAP (pycocotools backend), per-class AP included. In a distributed run the
        metric's states gather across processes on ``compute`` (torchmetrics does it). COCO scores
        the 100 best detections per image (``maxDets``), as every COCO number does; detectors that
        return more (SSD: 200-300) are not warned about."""
        from torchmetrics.detection import MeanAveragePrecision

        metric = MeanAveragePrecision(
            box_format="xyxy", iou_type="bbox", class_metrics=True, backend="pycocotools"
        )
        metric.warn_on_many_detections = False
        return metric

    @torch.no_grad()
    def update(
        self,
        metric: MeanAveragePrecision,
        model: nn.Module,
        images: list[Tensor],
        targets: list[dict[str, Any]],
    ) -> list[dict[str, Tensor]]:
        """Predict (model in eval mode) and add the batch to ``metric``; returns the predictions
        with 0-based labels, on the CPU."""
        outputs = model(images)
        preds = [
            {
                "boxes": o["boxes"].float().cpu(),
                "scores": o["scores"].float().cpu(),
                "labels": o["labels"].cpu() - self.label_offset,
            }
            for o in outputs
        ]
        truth = [
            {
                "boxes": t["boxes"].float().cpu(),
                "labels": t["labels"].cpu() - self.label_offset,
                "iscrowd": t["iscrowd"].cpu(),
            }
            for t in targets
        ]
        metric.update(preds, truth)
        return preds

    def compute(self, metric: MeanAveragePrecision) -> dict[str, float]:
        """``val_map`` (COCO AP@[.5:.95]), ``val_map_50``, ``val_map_75``, size buckets, ``val_mar_*``
        and ``val_ap_<class>``. pycocotools reports -1 where a value is undefined (no box of that
        size or class in the validation set); strop reports NaN there."""
        out = metric.compute()
        result = {name: _defined(out[key]) for key, name in _SUMMARY.items()}
        per_class = out["map_per_class"].reshape(-1).tolist()
        ids = out["classes"].reshape(-1).tolist()
        by_id = dict(zip(ids, per_class, strict=True)) if len(per_class) == len(ids) else {}
        for k, c in enumerate(self.classes):
            result[f"val_ap_{c}"] = _defined(torch.tensor(by_id.get(k, -1.0)))
        return result


def _defined(value: Tensor) -> float:
    v = float(value)
    return math.nan if v < 0 else v


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    task: DetectionTask,
    *,
    device: torch.device | str = "cpu",
    amp: Any = None,
    scheduler: Any = None,
    accumulation_steps: int = 1,
    clip_grad_norm: float | None = None,
) -> dict[str, float]:
    """One epoch, the tutorial's ``train_one_epoch`` shape: forward in train mode, sum the loss
    dict, (scaled) backward, every ``accumulation_steps`` batches unscale -> clip -> step ->
    zero_grad, then ``scheduler.on_optimizer_step()``. ``amp``: a ``strop.precision.MixedPrecision``
    (``None``: fp32). A non-finite loss stops with the batch named (the tutorial's ``sys.exit``).

    Returns ``train_loss`` (mean over images), each ``train_<part>``, ``steps`` and ``images_per_s``.
    """
    if amp is None:
        from strop.precision import MixedPrecision, resolve

        amp = MixedPrecision(resolve("fp32", torch.device(device).type))
    model.train()
    sums: dict[str, float] = {}
    count, steps = 0, 0
    optimizer.zero_grad(set_to_none=True)
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    tic = time.perf_counter()
    for batches, batch in enumerate(loader, 1):
        images, targets = task.to_device(batch, device)
        with amp.autocast():
            loss, parts = task.loss(model, images, targets)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"train_one_epoch: loss is {value} at batch {batches - 1} ({parts}); stopping"
            )
        group = accumulation_steps
        if total is not None:
            group = min(
                accumulation_steps,
                total - ((batches - 1) // accumulation_steps) * accumulation_steps,
            )
        amp.backward(loss / group)
        n = len(images)
        count += n
        sums["loss"] = sums.get("loss", 0.0) + value * n
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v * n
        if batches % accumulation_steps == 0 or batches == total:
            amp.step(optimizer, clip_grad_norm=clip_grad_norm, parameters=model.parameters())
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            if scheduler is not None:
                scheduler.on_optimizer_step()
    elapsed = time.perf_counter() - tic
    out = {f"train_{k}": v / max(count, 1) for k, v in sums.items()}
    out.update(steps=float(steps), images_per_s=count / max(elapsed, 1e-9))
    return out


@torch.no_grad()
def evaluate_detection(
    model: nn.Module,
    loader: Iterable[Batch],
    task: DetectionTask,
    *,
    device: torch.device | str = "cpu",
    amp: Any = None,
) -> dict[str, float]:
    """COCO metrics of ``model`` over ``loader`` (eval mode; the mode is restored after)."""
    was_training = model.training
    model.eval()
    metric = task.metrics()
    for batch in loader:
        images, targets = task.to_device(batch, device)
        if amp is not None:
            with amp.autocast():
                task.update(metric, model, images, targets)
        else:
            task.update(metric, model, images, targets)
    model.train(was_training)
    return task.compute(metric)


@torch.no_grad()
def update_bn(
    model: nn.Module,
    loader: Iterable[Batch],
    task: DetectionTask,
    *,
    device: torch.device | str = "cpu",
    num_batches: int | None = None,
) -> int:
    """Recompute BatchNorm running statistics as a plain average over ``loader`` (train-mode
    forwards, no gradient, nothing else changes); returns the number of BN layers updated.

    ``torch.optim.swa_utils.update_bn`` does this for classifiers, but a torchvision detector in
    train mode needs targets, so it cannot be used. Needed after training a detector *with
    BatchNorm2d* (random init, SSDLite, the v2 models) for few steps: BN momentum is 0.01-0.03 in
    the MobileNetV3 builders, so after a few hundred steps the running statistics still describe
    the initial weights and eval-mode predictions are garbage (measured: mAP 0.001 -> 0.95 on the
    tiny training set of tests/detection/test_detection_train.py). Pretrained backbones use
    FrozenBatchNorm2d and need none of this.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    momenta = [bn.momentum for bn in bns]
    was_training = model.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    for i, batch in enumerate(loader):
        if num_batches is not None and i >= num_batches:
            break
        images, targets = task.to_device(batch, device)
        model(images, targets)
    for bn, momentum in zip(bns, momenta, strict=True):
        bn.momentum = momentum
    model.train(was_training)
    return len(bns)
