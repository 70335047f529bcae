"""``build_model``: the transfer-learning steps (architecture, weights, head, freezing) in one call."""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Any

from torch import nn
from torchvision.models import WeightsEnum, get_model_weights

from strop._checks import check_positive, did_you_mean, fail
from strop.finetune.freeze import freeze as _freeze
from strop.finetune.weights import LoadReport, load_weights
from strop.finetune.zoo import build_architecture, resolve_name

__all__ = ["build_model", "load_report_of", "load_summary", "resolve_weights"]

_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar", ".pkl", ".safetensors")


def resolve_weights(name: str, weights: Any) -> WeightsEnum | Path:
    """What ``weights`` means for model ``name``: a torchvision ``WeightsEnum`` member (from a name
    such as ``"DEFAULT"``, ``"IMAGENET1K_V1"``, ``"ResNet18_Weights.IMAGENET1K_V1"``, or the member
    itself) or a local file path (an existing file, or a string that looks like a path).
    """
    func = "build_model"
    if isinstance(weights, WeightsEnum):
        return weights
    if isinstance(weights, os.PathLike):
        return Path(weights)
    if not isinstance(weights, str):
        fail(
            func,
            f"weights must be None, a weights name ('DEFAULT'), a file path or a WeightsEnum; got {type(weights).__name__}",
            exc=TypeError,
        )
    if (
        os.path.exists(weights)
        or weights.endswith(_FILE_SUFFIXES)
        or os.sep in weights
        or "/" in weights
    ):
        return Path(weights)
    enum = get_model_weights(name)
    key = weights.removeprefix(enum.__name__ + ".")
    try:
        return enum[key]
    except KeyError:
        names = ["DEFAULT", *enum.__members__]
        fail(
            func,
            f"weights {weights!r} is neither a file nor a weights name of {name}{did_you_mean(key, names)}",
            hint=f"{enum.__name__} has {', '.join(dict.fromkeys(names))}",
        )


def build_model(
    name: str,
    *,
    num_classes: int,
    weights: str | os.PathLike | WeightsEnum | None = None,
    freeze: str | int | None = None,
    train_bn: bool = False,
    strict: bool = True,
    sha256: str | None = None,
    aux_logits: bool = True,
    trust_pickle: bool = False,
    keep_head: bool = False,
) -> nn.Module:
    """A torchvision model ready to fine-tune for ``num_classes`` classes (on CPU).

    Equivalent to ``models.resnet18(weights=...)`` + freezing +
    ``model.fc = nn.Linear(512, num_classes)``, for any classification builder of torchvision
    (``strop.finetune.available_models()``) and the segmentation builders (``fcn_*``,
    ``deeplabv3_*``, ``lraspp_mobilenet_v3_large``).

    - ``weights``: ``None`` (random init); a torchvision weights name (``"DEFAULT"``,
      ``"IMAGENET1K_V1"``) loaded through the Weights API from the hub cache
      (``$TORCH_HOME/hub/checkpoints``; downloaded only when not cached); a local ``.pth``/``.pt``
      (state dict or checkpoint dict) or ``.safetensors`` file. See :func:`load_weights` for the
      checks (``strict``, ``sha256``; pickles are loaded with ``weights_only=True``). The head is
      built for ``num_classes`` and keeps torchvision's fresh initialisation: transfer learning
      starts from a new output layer ("the output layer is not reused"), also when the source
      has as many classes as the target. ``keep_head=True`` loads a source head of the same
      shape instead (timm's ``pretrained=True`` with a matching ``num_classes`` does that; use it
      to continue training a model on its own task, or to use an ImageNet head as is).
    - ``freeze``: ``None``, ``"backbone"``, a layer-group name (freeze up to it) or a number of
      layer groups, see :func:`freeze`; frozen BatchNorm stays in eval mode unless ``train_bn``.
    - ``aux_logits``: inception_v3/googlenet keep their auxiliary classifiers (replaced for
      ``num_classes``; used in training through :func:`split_outputs`) unless ``False``; for
      fcn/deeplabv3 it is torchvision's ``aux_loss``. With pretrained weights inception_v3 and
      googlenet use ``transform_input=True``, as torchvision does.
    - ``trust_pickle``: UNSAFE opt-in for trusted legacy checkpoints that ``weights_only=True``
      refuses (a pickle can run code on load); see :func:`load_weights`.

    strop remembers the model's architecture name (:func:`~strop.finetune.zoo.architecture_of`)
    and, when weights were loaded, the :class:`LoadReport` (:func:`load_report_of`; one line:
    :func:`load_summary`).
    """
    name = resolve_name("build_model", name)
    check_positive("build_model", "num_classes", num_classes, integer=True)
    for arg, value in (
        ("train_bn", train_bn),
        ("strict", strict),
        ("aux_logits", aux_logits),
        ("trust_pickle", trust_pickle),
        ("keep_head", keep_head),
    ):
        if not isinstance(value, bool):
            fail(
                "build_model",
                f"{arg} must be a bool; got {type(value).__name__} {value!r}",
                exc=TypeError,
            )
    source = None if weights is None else resolve_weights(name, weights)
    if sha256 is not None and source is None:
        fail("build_model", "sha256 was given without weights to check")
    extra = {}
    if isinstance(source, WeightsEnum) and name.startswith("vit_"):
        # ViT weights fix the input size through their position embedding (SWAG: 384, 518)
        extra["image_size"] = source.meta["min_size"][0]
    model = build_architecture(
        name, num_classes=num_classes, pretrained=source is not None, aux_logits=aux_logits, **extra
    )
    if source is not None:
        report: LoadReport = load_weights(
            model,
            source,
            strict=strict,
            sha256=sha256,
            trust_pickle=trust_pickle,
            keep_head=keep_head,
        )
        _LOAD_REPORTS[model] = report
    if freeze is not None:
        _freeze(model, freeze, train_bn=train_bn)
    return model


# What build_model loaded into each model it built; beside the model, not an attribute on it
# (see zoo.architecture_of).
_LOAD_REPORTS: weakref.WeakKeyDictionary[nn.Module, LoadReport] = weakref.WeakKeyDictionary()


def load_report_of(model: nn.Module) -> LoadReport | None:
    """The :class:`LoadReport` of the weights :func:`build_model` loaded into ``model``; ``None``
    when it loaded none or did not build ``model`` (a copy of a model is not recorded)."""
    return _LOAD_REPORTS.get(model)


def load_summary(model: nn.Module) -> str | None:
    """The one-line summary of the weights :func:`build_model` loaded into ``model`` (``None``
    when it loaded none), e.g. ``weights source.pth: 120 tensors loaded; new head
    (keep_head=False), 2 tensors left as initialised``."""
    report = load_report_of(model)
    return None if report is None else report.summary()
