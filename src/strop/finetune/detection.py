"""Fine-tuning torchvision's detectors: builders by name, new class count, weights, freezing,
discriminative LR groups, the box-regression loss and the NMS of post-processing.

    model = build_detector("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=3, weights="DEFAULT")
    optimizer = torch.optim.SGD(detector_param_groups(model, 0.01, backbone_lr_mult=0.1), momentum=0.9)

``num_classes`` is the number of *object* classes; strop adds the background class where the
family has one (Faster R-CNN and SSD score background as class 0, so the model gets
``num_classes + 1`` outputs and takes labels ``1..K``; RetinaNet and FCOS score each class with a
sigmoid, no background, labels ``0..K-1``). ``detector_info(model).label_offset`` says which.

The new class count replaces only the layers whose shape depends on it, as torchvision's tutorial
does: Faster R-CNN's ``FastRCNNPredictor`` (its box regression is per class, so it is new too);
RetinaNet's and FCOS's ``cls_logits`` conv (their classification trunk and the class-agnostic
regression heads keep their weights); SSD's per-level class convs (SSDLite keeps the depthwise
part of each block). Everything else loads from the weights.

Backbone normalisation and trainable layers follow torchvision exactly: with any pretrained
weights, the ResNet-50 (v1) and MobileNetV3 backbones use ``FrozenBatchNorm2d`` and only the last
``trainable_backbone_layers`` stages train (torchvision's defaults: 3; SSD300 4; SSDLite 6 = all);
without weights, everything trains with ``BatchNorm2d``, as torchvision builds it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models import WeightsEnum, get_model_builder, get_model_weights
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetRegressionHead
from torchvision.ops.misc import FrozenBatchNorm2d

from strop._checks import check_choice, fail
from strop.finetune.weights import LoadReport, hub_cache_path, read_state_dict
from strop.losses import batched_nms, box_iou_loss, value_checks

__all__ = [
    "BOX_LOSSES",
    "DETECTORS",
    "DetectorInfo",
    "build_detector",
    "detector_info",
    "detector_param_groups",
    "set_nms",
]

BOX_LOSSES = ("l1", "smooth_l1", "iou", "giou", "diou", "ciou")
_IOU_KINDS = ("iou", "giou", "diou", "ciou")


@dataclass(frozen=True)
class _Family:
    background: bool  # a background class 0 (softmax families) or not (sigmoid families)
    head: tuple[str, ...]  # state-dict prefixes whose shape depends on the class count
    box_losses: tuple[str, ...]  # box_loss values this family accepts
    default_box_loss: str
    trainable: tuple[int, int]  # torchvision's (default, max) trainable_backbone_layers
    frozen_bn: bool  # torchvision swaps in FrozenBatchNorm2d when pretrained


_RCNN = _Family(True, ("roi_heads.box_predictor",), ("smooth_l1",), "smooth_l1", (3, 5), True)
_RCNN_MOBILE = _Family(True, _RCNN.head, ("smooth_l1",), "smooth_l1", (3, 6), True)
_RETINA = _Family(False, ("head.classification_head.cls_logits",), BOX_LOSSES, "l1", (3, 5), True)
_SSD = ("head.classification_head",)
DETECTORS: dict[str, tuple[str, _Family]] = {
    "fasterrcnn_mobilenet_v3_large_320_fpn": ("mobilenet_fpn", _RCNN_MOBILE),
    "fasterrcnn_mobilenet_v3_large_fpn": ("mobilenet_fpn", _RCNN_MOBILE),
    "fasterrcnn_resnet50_fpn": ("resnet_fpn", _RCNN),
    "fasterrcnn_resnet50_fpn_v2": (
        "resnet_fpn",
        _Family(True, _RCNN.head, ("smooth_l1",), "smooth_l1", (3, 5), False),
    ),
    "retinanet_resnet50_fpn": ("resnet_fpn", _RETINA),
    "retinanet_resnet50_fpn_v2": (
        "resnet_fpn",
        _Family(False, _RETINA.head, BOX_LOSSES, "giou", (3, 5), False),
    ),
    "fcos_resnet50_fpn": (
        "resnet_fpn",
        _Family(False, _RETINA.head, _IOU_KINDS, "giou", (3, 5), True),
    ),
    "ssdlite320_mobilenet_v3_large": (
        "ssdlite",
        _Family(True, _SSD, ("smooth_l1",), "smooth_l1", (6, 6), False),
    ),
    "ssd300_vgg16": ("vgg", _Family(True, _SSD, ("smooth_l1",), "smooth_l1", (4, 5), False)),
}


# (builder, weights) whose FrozenBatchNorm2d run with eps=0 in torchvision
_EPS_ZERO = {("fasterrcnn_resnet50_fpn", "COCO_V1"), ("retinanet_resnet50_fpn", "COCO_V1")}


@dataclass(frozen=True)
class DetectorInfo:
    """What strop built: ``num_classes`` object classes, ``label_offset`` (1 where class 0 is
    background: labels fed to the model are ``class index + label_offset``), ``box_loss``,
    ``trainable_backbone_layers`` (None: all, no pretrained weights), and the load report."""

    name: str
    num_classes: int
    label_offset: int
    box_loss: str
    trainable_backbone_layers: int | None
    report: LoadReport | None = None


def detector_info(model: nn.Module) -> DetectorInfo:
    info = getattr(model, "_strop_detector", None)
    if not isinstance(info, DetectorInfo):
        fail(
            "detector_info",
            f"model must come from build_detector; got {type(model).__name__}",
            exc=TypeError,
        )
    return info


# ------------------------------------------------------------------------------------- weights
def _resolve_weights(name: str, weights: Any) -> WeightsEnum | str | os.PathLike | Mapping | None:
    if weights is None or isinstance(weights, (WeightsEnum, Mapping)):
        return weights
    if isinstance(weights, os.PathLike) or (
        isinstance(weights, str) and (os.sep in weights or "." in weights)
    ):
        return weights
    if isinstance(weights, str):
        enum = get_model_weights(name)
        if weights == "DEFAULT":
            return enum.DEFAULT
        choices = ["DEFAULT", *enum.__members__]
        check_choice("build_detector", "weights", weights, choices)
        return enum[weights]
    fail(
        "build_detector",
        f"weights must be None, 'DEFAULT', a weights name, a file path or a state dict; "
        f"got {type(weights).__name__}",
        exc=TypeError,
    )


def _state_from(
    weights: Any, sha256: str | None, trust_pickle: bool
) -> tuple[dict[str, Tensor], str]:
    func = "build_detector"
    if isinstance(weights, WeightsEnum):
        cached = hub_cache_path(weights)
        if cached.is_file():
            return read_state_dict(cached, sha256=sha256, func=func), f"{weights} ({cached})"
        try:
            state = weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
        except Exception as exc:  # offline, proxy, HTTP error: one message
            fail(
                func,
                f"weights {weights} are not in the hub cache ('{cached}') and downloading {weights.url} "
                f"failed ({type(exc).__name__}: {exc})",
                hint=f"on an offline machine copy the file to '{cached}' (TORCH_HOME sets the folder)",
            )
        return state, f"{weights} ({cached})"
    if isinstance(weights, Mapping):
        return dict(weights), "the state dict"
    return read_state_dict(
        weights, sha256=sha256, trust_pickle=trust_pickle, func=func
    ), f"'{os.fspath(weights)}'"


def _strip(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def _backbone_keys(
    kind: str, state: Mapping[str, Tensor], own: Mapping[str, Tensor]
) -> tuple[dict[str, Tensor], list[str]]:
    """A classification network's keys renamed into the detector's backbone; ``(mapped, dropped)``."""
    if kind == "resnet_fpn":
        mapped = {f"backbone.body.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    elif kind == "mobilenet_fpn":
        mapped = {
            f"backbone.body.{k[len('features.') :]}": v
            for k, v in state.items()
            if k.startswith("features.")
        }
    else:
        fail(
            "build_detector",
            f"loading a classification backbone into {kind} detectors is not supported",
            hint="pass a full detector checkpoint, or torchvision weights by name",
        )
    # the classifier, and the stages the detector does not use (MobileNet's last conv for FPN)
    dropped = [
        k
        for k in state
        if f"backbone.body.{k}" not in own and f"backbone.body.{k[len('features.') :]}" not in own
    ]
    return {k: v for k, v in mapped.items() if k in own}, dropped


def _load(
    model: nn.Module,
    kind: str,
    family: _Family,
    state: dict[str, Tensor],
    source: str,
    strict: bool,
) -> LoadReport:
    own = model.state_dict()
    state = _strip(state)
    note = ""
    if not any(k.startswith("backbone.") for k in state):
        state, dropped = _backbone_keys(kind, state, own)
        note = f" (a classification backbone: {len(dropped)} tensors outside the detector's backbone unused)"
        own_scope = {k: v for k, v in own.items() if k.startswith("backbone.body.")}
    else:
        own_scope = own
    to_load, unexpected, mismatched, head_reset = {}, [], [], []
    for key, value in state.items():
        if key not in own:
            unexpected.append(key)
        elif own[key].shape == value.shape:
            to_load[key] = value
        elif any(key.startswith(h + ".") for h in family.head):
            head_reset.append(key)  # another class count: the new layer keeps its fresh init
        else:
            mismatched.append((key, tuple(own[key].shape), tuple(value.shape)))
    missing = [k for k in own_scope if k not in state and not k.endswith("num_batches_tracked")]
    report = LoadReport(
        source + note,
        len(to_load),
        tuple(missing),
        tuple(unexpected),
        tuple(mismatched),
        tuple(head_reset),
    )
    if not to_load:
        fail(
            "build_detector",
            f"{source} shares no tensor with {type(model).__name__} ({report})",
            hint="is it a checkpoint of another architecture?",
        )
    if not report.ok and strict:
        fail(
            "build_detector",
            f"{source} does not fit {type(model).__name__}; nothing was loaded ({report})",
            hint="pass strict=False to load the tensors that fit",
        )
    model.load_state_dict(to_load, strict=False)
    return report


# ------------------------------------------------------------------------------------ freezing
def _frozen_bn(module: nn.Module) -> None:
    """Every BatchNorm2d under ``module`` becomes torchvision's FrozenBatchNorm2d (same statistics
    and affine; torchvision builds it with the default eps=1e-5, so strop does too)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features)
            with torch.no_grad():
                for attr in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, attr).copy_(getattr(child, attr))
            setattr(module, name, frozen)
        else:
            _frozen_bn(child)


def _freeze_backbone_layers(model: nn.Module, kind: str, trainable: int) -> None:
    """torchvision's rule for ``trainable_backbone_layers``: the last ``trainable`` stages train."""
    if kind == "resnet_fpn":
        keep = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable] + (
            ["bn1"] if trainable == 5 else []
        )
        for name, p in model.backbone.body.named_parameters():
            if not any(name.startswith(k) for k in keep):
                p.requires_grad_(False)
        return
    if kind == "mobilenet_fpn":
        # the body keeps all 17 MobileNetV3 feature blocks under their indices
        blocks = list(model.backbone.body.children())
        stage = [
            0,
            *[i for i, b in enumerate(blocks) if getattr(b, "_is_cn", False)],
            len(blocks) - 1,
        ]
        before = len(blocks) if trainable == 0 else stage[len(stage) - trainable]
        for b in blocks[:before]:
            b.requires_grad_(False)
        return
    if kind == "vgg":
        # SSD300 splits VGG16's features at its 4th max-pool: features[:23] + extra[0][:7]
        blocks = list(model.backbone.features) + list(model.backbone.extra[0])[:7]
        stage = [0, *[i for i, b in enumerate(blocks) if isinstance(b, nn.MaxPool2d)][:4]]
        before = 30 if trainable == 0 else stage[len(stage) - trainable]
    else:  # ssdlite: MobileNetV3's blocks, split in two at the C4 block's expansion
        first, second = model.backbone.features
        c4 = len(first) - 1  # first = blocks[:c4] + the C4 block's expansion layer
        if trainable == 6:
            return
        # the 17 original blocks are first[:c4], (first[c4] + second[0]) and second[1:]
        c4_block = nn.ModuleList([first[c4], second[0]])
        c4_block._is_cn = True  # the C4 block is the last stage boundary torchvision counts
        blocks = [*first[:c4], c4_block, *second[1:]]
        stage = [
            0,
            *[i for i, b in enumerate(blocks) if getattr(b, "_is_cn", False)],
            len(blocks) - 1,
        ]
        before = len(blocks) if trainable == 0 else stage[len(stage) - trainable]
    for b in blocks[:before]:
        b.requires_grad_(False)


# ----------------------------------------------------------------------------------- box losses
class _StropRetinaNetRegressionHead(RetinaNetRegressionHead):
    """RetinaNet's regression head with strop's ``box_iou_loss`` on the decoded boxes (sum over
    an image's foreground anchors / their count, averaged over images: torchvision's scaling)."""

    _strop_kind = "giou"

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):  # type: ignore[override]
        losses = []
        for target, regression, anchor, matched in zip(
            targets, head_outputs["bbox_regression"], anchors, matched_idxs, strict=True
        ):
            fg = torch.where(matched >= 0)[0]
            gt = target["boxes"][matched[fg]]
            pred = self.box_coder.decode_single(regression[fg], anchor[fg])
            # decoded boxes are ordered by construction (exp of a clamped size): skip the sync
            with value_checks(False):
                loss = box_iou_loss(
                    pred.float(), gt.float(), kind=self._strop_kind, reduction="sum"
                )
            losses.append(loss / max(1, fg.numel()))
        return sum(losses) / max(1, len(targets))


class _StropFCOSHead(FCOSHead):
    """FCOS's head with its GIoU regression term recomputed by strop's ``box_iou_loss``
    (``kind``), over the same foreground points and normalisation as torchvision."""

    _strop_kind = "giou"

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):  # type: ignore[override]
        losses = super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        gt, fg = [], []
        for target, matched in zip(targets, matched_idxs, strict=True):
            boxes = target["boxes"]
            gt.append(
                boxes[matched.clip(min=0)] if len(boxes) else boxes.new_zeros((len(matched), 4))
            )
            fg.append(matched >= 0)
        gt_all, fg_all = torch.stack(gt), torch.stack(fg)
        pred = self.box_coder.decode(head_outputs["bbox_regression"], torch.stack(anchors))
        with value_checks(False):  # relu'd distances: boxes are ordered by construction
            loss = box_iou_loss(
                pred[fg_all].float(), gt_all[fg_all].float(), kind=self._strop_kind, reduction="sum"
            )
        losses["bbox_regression"] = loss / max(1, int(fg_all.sum()))
        return losses


def _set_box_loss(model: nn.Module, name: str, family: _Family, box_loss: str | None) -> str:
    if box_loss is None:
        return family.default_box_loss
    check_choice("build_detector", "box_loss", box_loss, BOX_LOSSES)
    if box_loss not in family.box_losses:
        fail(
            "build_detector",
            f"box_loss={box_loss!r} is not available for {name}; it supports "
            f"{', '.join(family.box_losses)}",
            hint="IoU-type losses need a family that decodes boxes in its loss (retinanet_*, fcos_resnet50_fpn)",
        )
    if name.startswith("retinanet"):
        head = model.head.regression_head
        if box_loss in _IOU_KINDS:
            head.__class__ = _StropRetinaNetRegressionHead
            head._strop_kind = box_loss
        else:
            head._loss_type = box_loss  # torchvision's own l1 / smooth_l1 on the encoded deltas
    elif name.startswith("fcos"):
        model.head.__class__ = _StropFCOSHead
        model.head._strop_kind = box_loss
    return box_loss


# ------------------------------------------------------------------------------------------ NMS
def set_nms(
    model: nn.Module, iou_threshold: float | None = None, *, denominator: str = "union"
) -> None:
    """Post-processing NMS of a built detector: threshold and overlap (``"union"``: torchvision's
    own; ``"min"``: strop's :func:`~strop.losses.batched_nms` with intersection over the smaller
    box, run per class on the detector's outputs in eval mode).

    For ``"min"`` torchvision's own NMS is switched off (threshold 1.0: an IoU is never above it)
    and its per-image cap raised, so that strop's NMS sees every candidate and then keeps the
    ``detections_per_img`` best.
    """
    check_choice("set_nms", "denominator", denominator, ("union", "min"))
    owner = model.roi_heads if hasattr(model, "roi_heads") else model
    state = getattr(model, "_strop_nms", None)
    if state is None:
        state = {"hook": None, "threshold": owner.nms_thresh, "cap": owner.detections_per_img}
        model._strop_nms = state
    if iou_threshold is not None:
        state["threshold"] = float(iou_threshold)
    if state["hook"] is not None:
        state["hook"].remove()
        state["hook"] = None
    if denominator == "union":
        owner.nms_thresh, owner.detections_per_img = state["threshold"], state["cap"]
        return
    owner.nms_thresh, owner.detections_per_img = 1.0, state["cap"] * 10
    threshold, cap = state["threshold"], state["cap"]

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if module.training:
            return output
        # scripting-free eager output: a list of dicts (torchvision returns (losses, dets) only scripted)
        for det in output:
            keep = batched_nms(
                det["boxes"], det["scores"], det["labels"], threshold, denominator="min"
            )[:cap]
            for key in list(det):
                det[key] = det[key][keep]
        return output

    state["hook"] = model.register_forward_hook(hook)


# -------------------------------------------------------------------------------------- builder
def build_detector(
    name: str,
    *,
    num_classes: int,
    weights: Any = None,
    trainable_backbone_layers: int | None = None,
    freeze: str | None = None,
    box_loss: str | None = None,
    nms_threshold: float | None = None,
    nms_denominator: str = "union",
    strict: bool = True,
    sha256: str | None = None,
    trust_pickle: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """A torchvision detector for ``num_classes`` object classes (background added where due).

    ``weights``: ``None`` (random), ``"DEFAULT"`` or a weights name (``"COCO_V1"``: from the hub
    cache, downloaded only when absent), a ``WeightsEnum``, a state dict, or a file
    (``.pth``/``.safetensors``; safe loading, ``sha256``, ``trust_pickle`` as in
    :func:`strop.finetune.load_weights`) holding a full detector or a classification network
    (ResNet-50 / MobileNetV3-Large) whose features go into the detector's backbone.
    ``trainable_backbone_layers``: torchvision's knob (pretrained weights only);
    ``freeze="backbone"`` is ``trainable_backbone_layers=0``. ``box_loss``: see ``docs/detection.md``.
    ``kwargs`` go to the torchvision builder (``min_size``, ``max_size``, ``box_score_thresh``...).
    The report of what loaded is ``detector_info(model).report``.
    """
    func = "build_detector"
    if name not in DETECTORS:
        check_choice(func, "name", name, sorted(DETECTORS))
    kind, family = DETECTORS[name]
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        fail(
            func,
            f"num_classes must be an int >= 1 (object classes, background not counted); got {num_classes!r}",
        )
    if freeze is not None:
        check_choice(func, "freeze", freeze, ("backbone",))
        if trainable_backbone_layers not in (None, 0):
            fail(
                func,
                f"freeze='backbone' means trainable_backbone_layers=0; got also trainable_backbone_layers={trainable_backbone_layers}",
            )
        trainable_backbone_layers = 0
    source = _resolve_weights(name, weights)
    default, most = family.trainable
    if trainable_backbone_layers is not None:
        if (
            isinstance(trainable_backbone_layers, bool)
            or not isinstance(trainable_backbone_layers, int)
            or not 0 <= trainable_backbone_layers <= most
        ):
            fail(
                func,
                f"trainable_backbone_layers must be an int in 0..{most} for {name}; got {trainable_backbone_layers!r}",
            )
        if source is None:
            fail(
                func,
                "trainable_backbone_layers (or freeze) needs pretrained weights: without them every layer "
                "trains, as in torchvision",
                hint="pass weights=..., or drop the option",
            )
    label_offset = 1 if family.background else 0
    model = get_model_builder(name)(
        weights=None, weights_backbone=None, num_classes=num_classes + label_offset, **kwargs
    )
    report, trainable = None, None
    if source is not None:
        state, where = _state_from(source, sha256, trust_pickle)
        report = _load(model, kind, family, state, where, strict)
        if family.frozen_bn:
            _frozen_bn(model.backbone.body)
            if isinstance(source, WeightsEnum) and (name, source.name) in _EPS_ZERO:
                # torchvision's legacy COCO_V1 checkpoints were trained with eps=0 and its builders
                # set it back after loading (detection._utils.overwrite_eps); so does strop
                for m in model.modules():
                    if isinstance(m, FrozenBatchNorm2d):
                        m.eps = 0.0
        trainable = default if trainable_backbone_layers is None else trainable_backbone_layers
        _freeze_backbone_layers(model, kind, trainable)
    loss = _set_box_loss(model, name, family, box_loss)
    if nms_threshold is not None or nms_denominator != "union":
        set_nms(model, nms_threshold, denominator=nms_denominator)
    model._strop_detector = DetectorInfo(name, num_classes, label_offset, loss, trainable, report)
    return model


# ------------------------------------------------------------------------------- param groups
def _part(name: str) -> str:
    if name.startswith(("backbone.body.", "backbone.features.")):
        return "backbone"
    if name.startswith(("backbone.fpn.", "backbone.extra.", "backbone.")):
        return "neck"
    return "head"  # rpn + roi_heads, RetinaNet/FCOS/SSD heads


def detector_param_groups(
    model: nn.Module,
    lr: float,
    *,
    backbone_lr_mult: float = 1.0,
    neck_lr_mult: float = 1.0,
    weight_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """Trainable parameters as ``backbone`` / ``neck`` (FPN, SSD extras) / ``head`` (RPN, ROI
    heads, dense heads) groups for discriminative LRs; each group has ``name`` and ``lr``.
    Norm weights and biases get no weight decay (torchvision's ``norm_weight_decay=0`` habit)."""
    if not math.isfinite(lr) or lr <= 0:
        fail("detector_param_groups", f"lr must be a positive number; got {lr!r}")
    mult = {"backbone": backbone_lr_mult, "neck": neck_lr_mult, "head": 1.0}
    norm_types = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)
    no_decay = {
        f"{m}.{n}" if m else n
        for m, mod in model.named_modules()
        if isinstance(mod, norm_types)
        for n, _ in mod.named_parameters(recurse=False)
    }
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            decay = weight_decay > 0 and p.dim() > 1 and name not in no_decay
            groups.setdefault((_part(name), decay), []).append(p)
    out = []
    for part in ("backbone", "neck", "head"):
        for decay in (True, False):
            if (part, decay) in groups:
                out.append(
                    {
                        "name": part,
                        "params": groups[(part, decay)],
                        "lr": lr * mult[part],
                        "weight_decay": weight_decay if decay else 0.0,
                    }
                )
    return out
