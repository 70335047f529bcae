"""``task: detection`` in the trainer: the :class:`Detection` task, its data, model and optimizer.

The trainer's seam (``strop.train.tasks``) calls the task for everything batch-shaped; detection
differs from the dense tasks in four places, all handled here:

- a batch is ``(list of images, list of target dicts)`` (images differ in size): the loaders use
  :func:`strop.data.detection.detection_collate`, ``memory_format`` does not apply;
- the model computes its own losses, in train mode only (torchvision): ``forward_loss`` sums
  torchvision's loss dict and leaves each part on the run's :class:`DetectionLoss` (logged per step
  as ``loss_<part>``); there is **no** ``val_loss``;
- validation is COCO mAP (torchmetrics + pycocotools) through :meth:`Detection.validate`, after
  recomputing BatchNorm statistics over the training images when the detector has plain
  ``BatchNorm2d`` layers (random init, SSDLite, v2 models: their running statistics lag far behind
  a short run; phase 1 measured eval mAP 0.001 -> 0.95 with the recalibration);
- labels stay 0-based class indices outside the model: the family's background offset (1 for
  Faster R-CNN / SSD) is read from the model at each call and added / taken off there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from strop.train.metrics import PER_EPOCH
from strop.train.tasks import Task

__all__ = [
    "DETECTION_AUGMENT",
    "Detection",
    "DetectionLoss",
    "build_detection_parts",
    "check_detection_config",
    "detection_datasets",
    "detector_kwargs",
]

# data.augment value -> strop.data.detection.detection_transforms(augment=)
DETECTION_AUGMENT = {
    False: "none",
    "none": "none",
    True: "flip",
    "standard": "flip",
    "flip": "flip",
    "photometric": "photometric",
    "ssd": "ssd",
}
# model keys that only a detector has (None/defaults elsewhere)
_DETECTOR_KEYS = {
    "trainable_backbone_layers": None,
    "box_loss": None,
    "nms_threshold": None,
    "nms_denominator": "union",
    "min_size": None,
    "max_size": None,
    "score_threshold": None,
    "recalibrate_bn": None,
}
# torchvision's loss-dict keys per family, without the "loss_" prefix (the CSV header needs them
# before the first forward pass)
_PARTS = {
    "fasterrcnn": ("classifier", "box_reg", "objectness", "rpn_box_reg"),
    "retinanet": ("classification", "bbox_regression"),
    "fcos": ("classification", "bbox_regression", "bbox_ctrness"),
    "ssd": ("bbox_regression", "classification"),
}


def _unwrap(model: nn.Module) -> nn.Module:
    """The detector inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _offset(model: nn.Module) -> int:
    from strop.finetune.detection import detector_info

    return detector_info(_unwrap(model)).label_offset


class DetectionLoss:
    """The run's ``loss_fn`` for detection: the detector computes its losses; this object only
    names and holds the last batch's parts (``parts``, logged per step as ``loss_<part>``)."""

    def __init__(self, model_name: str) -> None:
        family = next((k for k in _PARTS if model_name.startswith(k)), "fasterrcnn")
        self.losses = dict.fromkeys(_PARTS[family], 1.0)
        self.parts: dict[str, Tensor] = {}

    def __repr__(self) -> str:
        return f"DetectionLoss(parts={list(self.losses)})"


class Detection(Task):
    """Boxes: the detector's own losses for training, COCO mAP for validation (``val_map``).

    ``num_classes`` counts object classes (no background); ``classes`` names them (per-class AP
    columns ``val_ap_<name>``; ``0..K-1`` without names).
    """

    name = "detection"
    default_monitor = "val_map"
    train_metrics = ("train_loss",)

    def __init__(self, num_classes: int, classes: Sequence[str] | None = None) -> None:
        super().__init__(num_classes)
        self.classes = (
            [str(c) for c in classes]
            if classes is not None
            else [str(k) for k in range(num_classes)]
        )
        self.calibration: Any = None  # a loader of training images for BatchNorm recalibration

    @staticmethod
    def collate_fn(batch: Sequence[tuple[Tensor, dict]]) -> tuple[list[Tensor], list[dict]]:
        from strop.data.detection import detection_collate

        return detection_collate(batch)

    def val_metric_names(self) -> list[str]:
        from strop.train.detection import SUMMARY_METRICS

        return [*SUMMARY_METRICS, *(f"val_ap_{c}" for c in self.classes)]

    def metric_names(self) -> list[str]:
        # no val_loss: torchvision detectors compute losses only in train mode
        return ["train_loss", *self.val_metric_names(), *PER_EPOCH]

    def to_device(self, batch: Any, device: torch.device, memory_format: Any = None) -> Any:
        """Images and targets (0-based labels) on ``device``; ``memory_format`` does not apply."""
        images, targets = batch
        nb = torch.device(device).type == "cuda"
        images = [im.to(device, non_blocking=nb) for im in images]
        moved = [
            {
                "boxes": t["boxes"].as_subclass(Tensor).to(device, non_blocking=nb),
                "labels": t["labels"].to(device, non_blocking=nb),
                "iscrowd": t.get("iscrowd", torch.zeros_like(t["labels"])).to(
                    device, non_blocking=nb
                ),
            }
            for t in targets
        ]
        return images, moved

    def batch_size(self, batch: Any) -> int:
        return len(batch[0])

    def inputs(self, batch: Any) -> Tensor:
        return torch.cat([im.reshape(-1) for im in batch[0]])

    def forward_loss(
        self, model: nn.Module, loss_fn: Any, batch: Any, aux_weight: float
    ) -> tuple[Tensor, Any]:
        """``(sum of torchvision's loss dict in float32, None)``; the parts go to ``loss_fn.parts``."""
        images, targets = batch
        k = _offset(model)
        losses = model(images, [dict(t, labels=t["labels"] + k) for t in targets])
        if isinstance(loss_fn, DetectionLoss):
            loss_fn.parts = {name.removeprefix("loss_"): v.detach() for name, v in losses.items()}
        return sum(v.float() for v in losses.values()), None

    def val_output(self, model: nn.Module, loss_fn: Any, batch: Any) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(
            "detection validates through Detection.validate (COCO mAP, no val_loss)"
        )

    def validate(
        self, model: nn.Module, loader: Any, *, amp: Any, device: torch.device
    ) -> dict[str, float]:
        """COCO metrics over ``loader`` (model in eval mode), after BatchNorm recalibration when
        :attr:`calibration` is set. torchmetrics gathers its states across processes itself."""
        from strop.train.detection import DetectionTask, update_bn

        core = _unwrap(model)
        task = DetectionTask(core, self.classes)
        if self.calibration is not None:
            # own RNG stream: the recalibration's forwards (proposal sampling) must not move the
            # training run's random state (resume stays exact)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                update_bn(core, self.calibration, task, device=device)
        was_training = core.training
        core.eval()
        metric = task.metrics()
        try:
            for images, targets in loader:
                images, targets = task.to_device((images, targets), device)
                with amp.autocast():
                    task.update(metric, core, images, targets)
        finally:
            core.train(was_training)
        return task.compute(metric)

    def attach(self, run: Any, train_ds: Any) -> None:
        """Keep a loader of the training images (no augmentation) for BatchNorm recalibration
        when the detector has plain BatchNorm layers (``model.recalibrate_bn``, default: auto)."""
        from torch.utils.data import DataLoader

        from strop.data.detection import DetectionDataset, detection_transforms

        wanted = run.config.model.recalibrate_bn
        if wanted is None:
            wanted = any(type(m) is nn.BatchNorm2d for m in run.model.modules())
        if not wanted:
            return
        ds = DetectionDataset(train_ds.records, train_ds.classes, detection_transforms(False))
        self.calibration = DataLoader(
            ds,
            batch_size=max(1, run.config.data.batch_size // run.ctx.world_size),
            shuffle=False,
            collate_fn=self.collate_fn,
        )

    def metadata(self, model: nn.Module) -> dict[str, Any]:
        """What a checkpoint needs to rebuild the detector: its name, class count and offset."""
        from strop.finetune.detection import detector_info

        info = detector_info(_unwrap(model))
        return {"detector": info.name, "label_offset": info.label_offset}


def check_detection_config(config: Any) -> None:
    """Refuse keys that do not apply to ``config.task`` (detection or not), naming them."""
    m = config.model
    if config.task != "detection":
        given = [k for k, default in _DETECTOR_KEYS.items() if getattr(m, k) != default]
        if given:
            raise ValueError(
                f"model.{given[0]} applies to task: detection only; got task: {config.task}"
            )
        if config.loss == "none":
            raise ValueError(f"loss 'none' is for task: detection; got task: {config.task}")
        if config.data.augment in ("photometric", "ssd"):
            raise ValueError(
                f"data.augment {config.data.augment!r} is for task: detection; got task: {config.task}"
            )
        return
    # imported for detection configs only: a classification run never loads the detectors
    from strop.finetune.detection import BOX_LOSSES, DETECTORS

    problems = []
    if m.name not in DETECTORS:
        problems.append(f"model.name must be one of {', '.join(sorted(DETECTORS))}; got {m.name!r}")
    if config.loss != "none":
        problems.append(
            f"loss: detection models compute their own losses; drop the key (got {config.loss!r})"
        )
    if m.freeze not in (None, "backbone"):
        problems.append(f"model.freeze for detection is null or 'backbone'; got {m.freeze!r}")
    if config.data.augment not in DETECTION_AUGMENT:
        problems.append(
            f"data.augment for detection is one of none, flip, photometric, ssd; got {config.data.augment!r}"
        )
    if m.box_loss is not None and m.box_loss not in BOX_LOSSES:
        problems.append(
            f"model.box_loss must be one of {', '.join(BOX_LOSSES)}; got {m.box_loss!r}"
        )
    for key, value in (
        ("gradual_unfreeze", config.gradual_unfreeze),
        ("optimizer.layer_decay", config.optimizer.layer_decay),
    ):
        if value is not None:
            problems.append(f"{key} is not supported for detection; got {value!r}")
    if config.memory_format == "channels_last":
        problems.append(
            "memory_format: channels_last does not apply to detection (lists of images)"
        )
    if problems:
        raise ValueError("; ".join(problems))


def detection_datasets(config: Any) -> tuple[Any, Any, list[str], int]:
    """``(train_ds, val_ds, classes, num_classes)`` of a detection config (COCO / YOLO / VOC)."""
    from strop.data.detection import DetectionDataset, detection_folder, detection_transforms
    from strop.data.roots import resolve_root

    d = config.data
    root = resolve_root(d.root)
    train, val, classes = detection_folder(
        root, format=d.format, val_fraction=d.val_fraction, seed=config.seed
    )
    augment = DETECTION_AUGMENT[d.augment]
    train_ds = DetectionDataset(train, classes, detection_transforms(True, augment=augment))
    train_ds.deterministic = augment == "none"  # type: ignore[attr-defined]
    val_ds = DetectionDataset(val, classes, detection_transforms(False))
    return train_ds, val_ds, classes, len(classes)


def detector_kwargs(config: Any) -> dict[str, Any]:
    """torchvision builder options from the config: the detector resizes to ``data.image_size``
    (``model.min_size`` / ``max_size`` override it); ``model.score_threshold``."""
    m = config.model
    kwargs: dict[str, Any] = {
        "min_size": m.min_size or config.data.image_size,
        "max_size": m.max_size or m.min_size or config.data.image_size,
    }
    if m.name.startswith("ssd"):
        # SSD's builders fix their own transform sizes (and refuse min_size / max_size);
        # build_detector_from sets them on the built transform instead
        kwargs = {}
    if m.score_threshold is not None:
        key = "box_score_thresh" if m.name.startswith("fasterrcnn") else "score_thresh"
        kwargs[key] = m.score_threshold
    return kwargs


def build_detector_from(config: Any, num_classes: int, weights: Any) -> nn.Module:
    """The detector ``config.model`` describes, with ``weights`` (the config's, or a checkpoint's)."""
    from strop.finetune.detection import build_detector

    m = config.model
    model = build_detector(
        m.name,
        num_classes=num_classes,
        weights=weights,
        freeze=m.freeze,
        trainable_backbone_layers=m.trainable_backbone_layers,
        box_loss=m.box_loss,
        nms_threshold=m.nms_threshold,
        nms_denominator=m.nms_denominator,
        strict=m.strict,
        sha256=m.sha256 if weights is m.weights else None,
        trust_pickle=m.trust_pickle,
        **detector_kwargs(config),
    )
    transform = getattr(model, "transform", None)
    if getattr(transform, "fixed_size", None) is not None:  # SSD: fixed 300/320 input by default
        size = config.model.min_size or config.data.image_size
        transform.min_size, transform.max_size, transform.fixed_size = (size,), size, (size, size)
    return model


def build_detection_parts(
    config: Any, num_classes: int
) -> tuple[nn.Module, DetectionLoss, torch.optim.Optimizer]:
    """``(detector, DetectionLoss, optimizer)``: the config's optimizer over ``detector_param_groups``
    (backbone and neck at ``optimizer.lr``, heads at ``lr × head_lr_mult``; no decay on norms and
    biases)."""
    from strop.finetune.detection import detector_param_groups

    model = build_detector_from(config, num_classes, config.model.weights)
    o = config.optimizer
    lr = o.lr * (
        config.data.batch_size * config.accumulation_steps / 256 if config.scale_lr else 1.0
    )
    groups = detector_param_groups(
        model,
        lr * o.head_lr_mult,
        backbone_lr_mult=1 / o.head_lr_mult,
        neck_lr_mult=1 / o.head_lr_mult,
        weight_decay=o.weight_decay,
    )
    from strop import optim

    optimizer = optim.build_optimizer(
        o.name,
        groups,
        lr=lr,
        weight_decay=o.weight_decay,
        implementation=o.implementation,
        **o.options(),
    )
    return model, DetectionLoss(config.model.name), optimizer
