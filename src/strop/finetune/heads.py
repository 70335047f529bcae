"""Classifier heads: find, replace, and split a model's main and auxiliary outputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from strop._checks import check_positive, fail
from strop.finetune.zoo import spec_of

__all__ = ["head_module", "output_loss", "replace_head", "split_outputs"]


def head_module(model: nn.Module) -> nn.Module:
    """The model's head: the output layer of a classifier (``model.fc``, ``model.classifier[6]``,
    ``model.heads.head`` ...) or the decoder head of a segmentation model (``model.classifier``).

    Its *input* is the feature vector a frozen backbone produces, which is what a feature cache
    stores.
    """
    spec = spec_of("head_module", model)
    return model.get_submodule(spec.head)


def _new_layer(func: str, old: nn.Module, num_classes: int) -> nn.Module:
    if isinstance(old, nn.Linear):
        layer: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    elif isinstance(old, nn.Conv2d):
        # squeezenet's classifier and segmentation heads: a 1x1 conv producing class maps
        layer = nn.Conv2d(
            old.in_channels,
            num_classes,
            old.kernel_size,
            old.stride,
            old.padding,
            old.dilation,
            bias=old.bias is not None,
        )
    else:
        fail(func, f"cannot replace an output layer of type {type(old).__name__}", exc=TypeError)
    return layer.to(device=old.weight.device, dtype=old.weight.dtype)


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace every output layer of ``model`` by a freshly initialised one with ``num_classes``
    outputs, in place, and return the model.

    Output layers: ``fc`` (ResNet, RegNet, ShuffleNet, GoogLeNet, Inception), ``classifier[-1]``
    (AlexNet, VGG, MobileNet, EfficientNet, ConvNeXt, MNASNet, MaxViT), squeezenet's 1×1 conv
    ``classifier[1]``, ``heads.head`` (ViT), ``head`` (Swin), DenseNet's ``classifier``, and the
    auxiliary heads that are present (``AuxLogits.fc``; ``aux1.fc2``/``aux2.fc2``;
    ``aux_classifier[4]``). Layers keep their input size, bias, dtype and device; the new layers
    are trainable (``requires_grad=True``) whatever was frozen before.
    """
    spec = spec_of("replace_head", model)
    check_positive("replace_head", "num_classes", num_classes, integer=True)
    for path in spec.output_layers:
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        parent.add_module(attr, _new_layer("replace_head", getattr(parent, attr), num_classes))
    if hasattr(model, "num_classes"):  # squeezenet keeps it as a plain attribute
        model.num_classes = num_classes
    return model


def split_outputs(output: Any) -> tuple[Tensor, list[Tensor]]:
    """Split a model's output into ``(main, [aux, ...])``.

    - a tensor -> ``(output, [])``;
    - inception_v3 / googlenet namedtuples in training mode (``InceptionOutputs(logits,
      aux_logits)``, ``GoogLeNetOutputs(logits, aux_logits2, aux_logits1)``) and plain tuples:
      the first field is the main output, the others (those that are not ``None``) auxiliary;
    - torchvision segmentation dicts ``{"out": ..., "aux": ...}``.

    The training loss is then ``loss(main) + 0.4 * sum(loss(a) for a in aux)`` (torchvision's
    reference recipe); evaluation uses ``main`` only.
    """
    if isinstance(output, Tensor):
        return output, []
    if isinstance(output, Mapping):
        if "out" not in output:
            fail(
                "split_outputs", f"a dict output must have an 'out' key; got keys {sorted(output)}"
            )
        aux = output.get("aux")
        return output["out"], [] if aux is None else [aux]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        aux = [a for a in output[1:] if a is not None]
        if not all(isinstance(a, Tensor) for a in aux):
            fail("split_outputs", "every auxiliary output must be a Tensor or None", exc=TypeError)
        return output[0], aux
    fail(
        "split_outputs",
        f"output must be a Tensor, a (main, *aux) tuple or a dict with 'out'; got {type(output).__name__}",
        exc=TypeError,
    )


def output_loss(
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    output: Any,
    target: Any,
    aux_weight: float = 0.4,
) -> tuple[Tensor, Tensor]:
    """``(loss, main)``: ``loss_fn(main, target) + aux_weight * sum(loss_fn(a, target) for a in aux)``
    over the parts :func:`split_outputs` finds in ``output``.

    ``aux_weight=0.4`` is torchvision's reference recipe for inception_v3/googlenet and the
    segmentation models' auxiliary heads. ``main`` is returned for metrics (accuracy, IoU).
    """
    main, aux = split_outputs(output)
    # the auxiliary losses first: a combined loss's ``parts`` then describe the main output
    aux_losses = [loss_fn(a, target) for a in aux]
    loss = loss_fn(main, target)
    for a in aux_losses:
        loss = loss + aux_weight * a
    return loss, main
