"""Model names, builders and what strop knows about each architecture.

Every architecture family records where its classifier lives (``"fc"``, ``"classifier.6"``,
``"heads.head"`` ...), its auxiliary heads, and which containers are split into *layer groups*
(the stages that ``freeze``, ``param_groups`` and ``GradualUnfreezing`` work on), so that replacing
a head never guesses (timm's habit of recording the classifier name).

Names come from torchvision itself (``torchvision.models.list_models``): every classification
builder and every semantic-segmentation builder works.
"""

from __future__ import annotations

import difflib
import weakref
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torchvision
from torch import nn
from torchvision.models import get_model_builder, get_model_weights, list_models

from strop._checks import check_positive, fail

__all__ = [
    "FAMILIES",
    "LayerGroup",
    "ModelSpec",
    "architecture_of",
    "available_models",
    "build_architecture",
    "layer_groups",
    "model_spec",
]

Task = Literal["classification", "segmentation"]


@dataclass(frozen=True)
class _Family:
    head: str
    aux_heads: tuple[str, ...] = ()
    # the layers whose output size is the class count; default: (head, *aux_heads)
    output_layers: tuple[str, ...] | None = None
    # containers (besides the root and the heads' ancestors) whose children are layer groups
    expand: tuple[str, ...] = ()
    input_size: int = 224
    task: Task = "classification"

    def outputs(self) -> tuple[str, ...]:
        return (
            self.output_layers if self.output_layers is not None else (self.head, *self.aux_heads)
        )


_SEQ = ("features", "classifier")
# keyed by the model's class name, so that a model built outside strop is recognised too
FAMILIES: dict[str, _Family] = {
    "ResNet": _Family("fc"),
    "RegNet": _Family("fc", expand=("trunk_output",)),
    "ShuffleNetV2": _Family("fc"),
    "GoogLeNet": _Family("fc", aux_heads=("aux1.fc2", "aux2.fc2")),
    "Inception3": _Family("fc", aux_heads=("AuxLogits.fc",), input_size=299),
    "AlexNet": _Family("classifier.6", expand=_SEQ),
    "VGG": _Family("classifier.6", expand=_SEQ),
    "SqueezeNet": _Family("classifier.1", expand=_SEQ),
    "DenseNet": _Family("classifier", expand=("features",)),
    "MobileNetV2": _Family("classifier.1", expand=_SEQ),
    "MobileNetV3": _Family("classifier.3", expand=_SEQ),
    "MNASNet": _Family("classifier.1", expand=("layers", "classifier")),
    "EfficientNet": _Family("classifier.1", expand=_SEQ),
    "ConvNeXt": _Family("classifier.2", expand=_SEQ),
    "VisionTransformer": _Family("heads.head", expand=("encoder", "encoder.layers")),
    "SwinTransformer": _Family("head", expand=("features",)),
    "MaxVit": _Family("classifier.5", expand=("blocks", "classifier")),
    # segmentation: the whole decoder is the head (it learns from scratch when the class count
    # changes only in its last conv, but it is task-specific, so "backbone" freezing keeps it)
    "FCN": _Family(
        "classifier",
        ("aux_classifier",),
        ("classifier.4", "aux_classifier.4"),
        ("backbone",),
        520,
        "segmentation",
    ),
    "DeepLabV3": _Family(
        "classifier",
        ("aux_classifier",),
        ("classifier.4", "aux_classifier.4"),
        ("backbone",),
        520,
        "segmentation",
    ),
    "LRASPP": _Family(
        "classifier",
        (),
        ("classifier.low_classifier", "classifier.high_classifier"),
        ("backbone",),
        520,
        "segmentation",
    ),
}

_CLASSIFICATION = tuple(list_models(module=torchvision.models))
_SEGMENTATION = tuple(list_models(module=torchvision.models.segmentation))


def available_models(task: Task | None = None) -> list[str]:
    """Names ``build_model`` accepts: torchvision's classification and segmentation builders.

    ``task`` (``"classification"``, ``"segmentation"`` or ``None`` for both) filters the list.
    """
    if task not in (None, "classification", "segmentation"):
        fail(
            "available_models",
            f"task must be 'classification', 'segmentation' or None; got {task!r}",
        )
    names = [] if task == "segmentation" else list(_CLASSIFICATION)
    names += [] if task == "classification" else list(_SEGMENTATION)
    return sorted(names)


def resolve_name(func: str, name: Any) -> str:
    """The torchvision builder name for ``name`` (case-insensitive); unknown names fail with the
    close matches."""
    if not isinstance(name, str):
        fail(
            func,
            f"name must be a model name (str); got {type(name).__name__} {name!r}",
            exc=TypeError,
        )
    key = name.strip().lower().replace("-", "_")
    names = available_models()
    if key in names:
        return key
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    fail(
        func,
        f"unknown model {name!r}{hint} ({len(names)} torchvision models are available)",
        hint="strop.finetune.available_models() lists them",
    )


def _task_of(name: str) -> Task:
    return "segmentation" if name in _SEGMENTATION else "classification"


def _builder_kwargs(
    name: str, *, num_classes: int, pretrained: bool, aux_logits: bool
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    if name in ("inception_v3", "googlenet"):
        # torchvision's own recipe for pretrained weights: normalised-input transform on, and its
        # slow truncated-normal init skipped (the loaded weights overwrite it). Passing
        # init_weights explicitly also avoids torchvision's FutureWarning.
        kwargs.update(
            aux_logits=aux_logits, init_weights=not pretrained, transform_input=pretrained
        )
    elif _task_of(name) == "segmentation":
        kwargs["weights_backbone"] = (
            None  # never download an ImageNet backbone behind the user's back
        )
        if not name.startswith("lraspp"):
            kwargs["aux_loss"] = aux_logits
    return kwargs


# The torchvision name each model built here was built from, so that model_spec(model) knows the
# exact variant (efficientnet_b3's input size, not EfficientNet's default). Kept beside the model
# rather than on it: the user's module gets no extra attribute, and an entry goes with its model.
_ARCHITECTURES: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def architecture_of(model: nn.Module) -> str | None:
    """The torchvision name ``model`` was built from by :func:`build_architecture` (and so by
    ``build_model``), e.g. ``"efficientnet_b3"``; ``None`` for a model built elsewhere. A copy
    (``copy.deepcopy``, a pickled model) is a new object and is not recorded."""
    return _ARCHITECTURES.get(model)


def build_architecture(
    name: str,
    *,
    num_classes: int,
    pretrained: bool = False,
    aux_logits: bool = True,
    device: torch.device | str | None = None,
    **builder_kwargs: Any,
) -> nn.Module:
    """The bare torchvision architecture ``name`` with ``num_classes`` outputs, no weights.

    ``pretrained=True`` sets the builder options torchvision uses with pretrained weights
    (inception/googlenet ``transform_input=True``). ``device="meta"`` builds without memory or
    initialisation cost (shapes only), which is how :func:`model_spec` and ``strop inspect`` work;
    RegNet's builder computes widths with tensors and cannot run on meta, so it is built on CPU.
    ``builder_kwargs`` go to the torchvision builder (e.g. ViT's ``image_size``).
    """
    name = resolve_name("build_architecture", name)
    check_positive("build_architecture", "num_classes", num_classes, integer=True)
    builder = get_model_builder(name)
    kwargs = _builder_kwargs(
        name, num_classes=num_classes, pretrained=pretrained, aux_logits=aux_logits
    )
    kwargs.update(builder_kwargs)
    if device is not None and torch.device(device).type == "meta" and not name.startswith("regnet"):
        with torch.device("meta"):
            model = builder(**kwargs)
    else:
        model = builder(**kwargs)
        if device is not None:
            model = model.to(device)
    _ARCHITECTURES[model] = name
    return model


def _family(func: str, model: nn.Module) -> _Family:
    family = FAMILIES.get(type(model).__name__)
    if family is None:
        known = ", ".join(sorted(FAMILIES))
        fail(
            func,
            f"model must be a torchvision classification or segmentation architecture; got {type(model).__name__}",
            hint=f"strop knows the heads of: {known}",
            exc=TypeError,
        )
    return family


def _default_input_size(name: str, family: _Family) -> int:
    try:
        transforms = get_model_weights(name).DEFAULT.transforms
    except (
        ValueError,
        KeyError,
        AttributeError,
    ):  # pragma: no cover - every builder has weights today
        return family.input_size
    key = "resize_size" if family.task == "segmentation" else "crop_size"
    size = transforms.keywords.get(key, family.input_size)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


@dataclass(frozen=True)
class LayerGroup:
    """A stage of the network, in forward order: ``name`` is its module path (``"layer3"``,
    ``"features.4"``), or ``"head"`` for the classifier(s) (``paths`` lists them)."""

    name: str
    paths: tuple[str, ...]
    modules: tuple[nn.Module, ...]
    params: tuple[tuple[str, nn.Parameter], ...]

    @property
    def is_head(self) -> bool:
        return self.name == "head"

    def numel(self, *, trainable_only: bool = False) -> int:
        """Number of parameters (only those with ``requires_grad`` when ``trainable_only``)."""
        return sum(p.numel() for _, p in self.params if p.requires_grad or not trainable_only)


@dataclass(frozen=True)
class ModelSpec:
    """What strop knows about an architecture.

    ``head`` is the attribute path of the classifier (``"fc"``, ``"classifier.6"``; the whole
    decoder ``"classifier"`` for segmentation), ``aux_heads`` the auxiliary heads present,
    ``output_layers`` the layers whose output size is the class count (what ``replace_head``
    swaps), ``groups`` the layer-group names in forward order (``"head"`` last), ``input_size``
    the square input side the default weights were trained at (224; 299 for inception_v3; the
    resize size, 520, for segmentation).
    """

    name: str | None
    task: Task
    input_size: int
    head: str
    aux_heads: tuple[str, ...]
    output_layers: tuple[str, ...]
    groups: tuple[str, ...]
    num_classes: int


def _present(model: nn.Module, path: str) -> bool:
    try:
        return model.get_submodule(path) is not None
    except AttributeError:
        return False


def _out_size(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return layer.out_features
    if isinstance(layer, nn.Conv2d):
        return layer.out_channels
    # segmentation heads: their last conv
    convs = [m for m in layer.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def spec_of(func: str, model: nn.Module) -> ModelSpec:
    """``ModelSpec`` of a model instance (used by every function that takes a model)."""
    if not isinstance(model, nn.Module):
        fail(func, f"model must be a torch.nn.Module; got {type(model).__name__}", exc=TypeError)
    family = _family(func, model)
    name = architecture_of(model)
    aux = tuple(p for p in family.aux_heads if _present(model, p))
    outputs = tuple(p for p in family.outputs() if _present(model, p))
    if isinstance(getattr(model, "image_size", None), int):  # ViT: fixed by its position embedding
        size = model.image_size
    else:
        size = _default_input_size(name, family) if name else family.input_size
    groups = tuple(g.name for g in _groups(model, family, aux))
    return ModelSpec(
        name=name,
        task=family.task,
        input_size=size,
        head=family.head,
        aux_heads=aux,
        output_layers=outputs,
        groups=groups,
        num_classes=_out_size(model.get_submodule(outputs[0])),
    )


def model_spec(name_or_model: str | nn.Module) -> ModelSpec:
    """Input size, head path, task and layer groups of a model name or a model.

    A name is resolved like :func:`build_model` does (unknown names list the close matches) and
    described with torchvision's default class count and auxiliary heads; a model instance is
    described as it is (its current class count, its aux heads if any).

    Example: ``model_spec("inception_v3").input_size == 299``,
    ``model_spec("vgg16").head == "classifier.6"``.
    """
    if isinstance(name_or_model, nn.Module):
        return spec_of("model_spec", name_or_model)
    name = resolve_name("model_spec", name_or_model)
    default_classes = 21 if _task_of(name) == "segmentation" else 1000
    model = build_architecture(name, num_classes=default_classes, device="meta")
    return spec_of("model_spec", model)


def _ancestors(path: str) -> set[str]:
    parts = path.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _groups(model: nn.Module, family: _Family, aux: tuple[str, ...]) -> list[LayerGroup]:
    heads = (family.head, *aux)
    expand = {"", *family.expand}.union(*(_ancestors(h) for h in heads))
    seen: set[int] = set()
    groups: list[LayerGroup] = []

    def params_of(
        prefix: str, module: nn.Module, recurse: bool = True
    ) -> list[tuple[str, nn.Parameter]]:
        out = []
        for n, p in module.named_parameters(prefix=prefix, recurse=recurse):
            if id(p) not in seen:
                seen.add(id(p))
                out.append((n, p))
        return out

    head_modules = [model.get_submodule(h) for h in heads]
    for m in head_modules:
        for p in m.parameters():
            seen.add(id(p))  # claimed by the head group, built last

    def visit(prefix: str, module: nn.Module) -> None:
        direct = params_of(prefix, module, recurse=False)
        for n, p in direct:  # class tokens, position embeddings: one group each
            groups.append(LayerGroup(n, (n,), (), ((n, p),)))
        for child_name, child in module.named_children():
            path = f"{prefix}.{child_name}" if prefix else child_name
            if path in heads:
                continue
            if path in expand:
                visit(path, child)
                continue
            ps = params_of(path, child)
            if ps:
                groups.append(LayerGroup(path, (path,), (child,), tuple(ps)))

    visit("", model)
    head_params = tuple(
        (f"{h}.{n}", p)
        for h, m in zip(heads, head_modules, strict=True)
        for n, p in m.named_parameters()
    )
    groups.append(LayerGroup("head", heads, tuple(head_modules), head_params))
    return groups


def layer_groups(model: nn.Module) -> list[LayerGroup]:
    """The model's layer groups in forward order, the head group (all heads, aux included) last.

    Each parameter belongs to exactly one group. Groups are the children of the root and of the
    family's stage containers (``features`` of VGG/MobileNet/EfficientNet/ConvNeXt, ``layers`` of
    MNASNet, ``encoder.layers`` of ViT, ``backbone`` of segmentation models ...), skipping modules
    without parameters: ``resnet18`` gives ``conv1, bn1, layer1, layer2, layer3, layer4, head``.
    """
    family = _family("layer_groups", model)
    aux = tuple(p for p in family.aux_heads if _present(model, p))
    return _groups(model, family, aux)
