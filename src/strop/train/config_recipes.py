"""Config sections for the recipe parts, for ``strop.train.config`` to import, and the checks
that need more than one section (made at config time, before any data is read).

New keys (YAML)::

    data:
      augment: trivialaugment     # none | flip | standard | crop | trivialaugment | randaugment
                                  # | autoaugment | augmix   (true = standard, false = none)
      hflip: true                 # false: no preset flips (digits, text)
      color_jitter: 0.4           # or [brightness, contrast, saturation(, hue)]; null: off
      random_erasing: 0.25        # probability; 0: off
      sampler: balanced           # default | balanced (classification)
    optimizer: {name: rmsprop, lr: 0.01, weight_decay: 1e-5, implementation: auto,
                alpha: 0.9, centered: true}   # any option of the torch optimizer, by its name
    loss: {name: cross_entropy, weight: auto}  # auto: inverse-frequency class weights
    label_smoothing: 0.1          # classification: cross_entropy's label_smoothing
    mixup: {mixup_alpha: 0.8, cutmix_alpha: 1.0, prob: 1.0, switch_prob: 0.5}
    ema: {decay: 0.999, warmup: true}
    swa: {start_epoch: 8, lr: 0.01, anneal_epochs: 0}
    recipe: fine_tune             # a preset (strop.train.recipes); keys set here win
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from strop._checks import did_you_mean, fail
from strop.data.transforms import AUGMENTATIONS
from strop.optim import IMPLEMENTATIONS, OPTIMIZERS, check_options, optimizer_options

__all__ = [
    "SOFT_TARGET_LOSSES",
    "DataRecipeFields",
    "EMAConfig",
    "MixupConfig",
    "OptimizerConfig",
    "RecipeFields",
    "SWAConfig",
    "apply_label_smoothing",
    "check_recipe_config",
    "check_soft_target_loss",
    "loss_names",
    "resolve_auto_class_weights",
    "uses_auto_class_weights",
]

#: keys every optimizer section accepted before options were per optimizer (ignored where unused)
LEGACY_OPTIONS = ("momentum", "nesterov", "betas")

# photometric and ssd are detection presets (strop.train.detection_run)
AugmentName = Literal[(*AUGMENTATIONS, "photometric", "ssd")]  # type: ignore[valid-type]
OptimizerName = Literal[tuple(OPTIMIZERS)]  # type: ignore[valid-type]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataRecipeFields(BaseModel):
    """Fields for ``DataConfig`` (inherit: ``class DataConfig(DataRecipeFields, _Strict)``)."""

    augment: bool | AugmentName = Field(
        False, description="an augmentation preset (strop.data.transforms)"
    )
    hflip: bool = Field(True, description="false: presets never flip (digits, text)")
    color_jitter: float | tuple[float, float, float] | tuple[float, float, float, float] | None = (
        Field(
            None,
            description="ColorJitter strength s (brightness = contrast = saturation = s) or (b, c, s[, h])",
        )
    )
    random_erasing: float = Field(0.0, ge=0.0, le=1.0, description="RandomErasing probability")
    sampler: Literal["default", "balanced"] = Field(
        "default", description="balanced: every class drawn equally often (with replacement)"
    )


class MixupConfig(_Strict):
    """Mixup / CutMix per batch (``strop.data.mixing.BatchMix``)."""

    mixup_alpha: float = Field(0.8, ge=0.0)
    cutmix_alpha: float = Field(0.0, ge=0.0)
    prob: float = Field(1.0, ge=0.0, le=1.0, description="probability that a batch is mixed")
    switch_prob: float = Field(
        0.5, ge=0.0, le=1.0, description="CutMix instead of MixUp when both alphas > 0"
    )

    @model_validator(mode="after")
    def _something_mixes(self) -> MixupConfig:
        if self.mixup_alpha == 0 and self.cutmix_alpha == 0:
            raise ValueError(
                "mixup_alpha and cutmix_alpha are both 0; set one (e.g. mixup_alpha: 0.8)"
            )
        return self


class EMAConfig(_Strict):
    """EMA of the weights (``strop.train.ema.ModelEMA``)."""

    decay: float = Field(0.999, ge=0.0, lt=1.0)
    warmup: bool = True
    warmup_power: float = Field(2 / 3, gt=0.0)
    warmup_gamma: float = Field(1.0, gt=0.0)


class SWAConfig(_Strict):
    """Stochastic weight averaging (``strop.train.swa.SWA``); ``start_epoch`` is 0-based."""

    start_epoch: int = Field(..., ge=0)
    lr: float = Field(..., gt=0.0)
    anneal_epochs: int = Field(0, ge=0)
    anneal_strategy: Literal["cos", "linear"] = "cos"


class OptimizerConfig(BaseModel):
    """A torch optimizer by name; any further key is that optimizer's own option, checked
    against its signature (``momentum``, ``nesterov``, ``betas``, ``eps``, ``alpha``, ...)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: OptimizerName = "sgd"
    lr: float = Field(0.01, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    head_lr_mult: float = Field(1.0, gt=0.0)
    layer_decay: float | None = Field(None, gt=0.0, le=1.0)
    implementation: Literal[IMPLEMENTATIONS] = "auto"  # type: ignore[valid-type]

    @model_validator(mode="before")
    @classmethod
    def _legacy_options(cls, data: Any) -> Any:
        # momentum / nesterov / betas were fields of every optimizer section before the options
        # became the optimizer's own; configs and checkpoints written then carry them for
        # optimizers that never used them (SGD's betas, AdamW's momentum): dropped, as then
        if not isinstance(data, Mapping):
            return data
        try:
            accepted = optimizer_options(str(data.get("name", "sgd")))
        except ValueError:
            return data  # the name's own error follows
        return {k: v for k, v in data.items() if k not in LEGACY_OPTIONS or k in accepted}

    @model_validator(mode="after")
    def _own_options(self) -> OptimizerConfig:
        accepted = [*type(self).model_fields, *optimizer_options(self.name)]
        for key in self.model_extra or {}:
            if key not in accepted and key not in ("foreach", "fused"):
                raise ValueError(
                    f"unknown key 'optimizer.{key}'{did_you_mean(key, accepted)} "
                    f"(options of {self.name!r}: {', '.join(optimizer_options(self.name))})"
                )
        try:
            check_options("optimizer", self.name, dict(self.model_extra or {}))
        except ValueError as exc:
            raise ValueError(str(exc).removeprefix("optimizer: ")) from None
        return self

    def options(self) -> dict[str, Any]:
        """The optimizer's own options, YAML lists as tuples (``betas: [0.9, 0.99]``)."""
        return {
            k: tuple(v) if isinstance(v, list) else v for k, v in (self.model_extra or {}).items()
        }


class RecipeFields(BaseModel):
    """Top-level fields for ``Config`` (inherit, and call :func:`check_recipe_config` in its
    ``model_validator(mode="after")``)."""

    label_smoothing: float = Field(
        0.0, ge=0.0, le=1.0, description="cross_entropy's label_smoothing"
    )
    mixup: MixupConfig | None = None
    ema: EMAConfig | None = None
    swa: SWAConfig | None = None
    recipe: Literal["fine_tune"] | None = Field(
        None, description="a preset; keys set in the config win"
    )


# ------------------------------------------------------------------- loss-spec helpers

#: Losses that take class-probability targets of shape (N, C) for a multi-class task.
SOFT_TARGET_LOSSES = ("cross_entropy",)

_WHY_NOT = {
    "focal": "its multiclass mode gathers the probability of one class id per sample",
    "dice": "its multiclass mode one-hot encodes class ids",
    "jaccard": "its multiclass mode one-hot encodes class ids",
    "tversky": "its multiclass mode one-hot encodes class ids",
    "lovasz": "it sorts errors against 0/1 targets",
    "bce": "it scores each class independently (sigmoid), not one distribution over classes",
    "dice_bce": "its dice part one-hot encodes class ids",
    "mse": "it would regress logits onto probabilities",
    "box_iou": "it is a box regression loss",
}


def loss_names(spec: str | Mapping[str, Any]) -> list[str]:
    """The canonical names of the losses in a ``strop.losses.build`` spec."""
    from strop.losses.registry import LOSSES

    if isinstance(spec, str):
        return [LOSSES.canonical(n.strip()) for n in spec.split("+")]
    if isinstance(spec, Mapping):
        if "name" in spec:
            return loss_names(spec["name"])
        return [LOSSES.canonical(n) for n in spec]
    fail(
        "loss_names",
        f"spec must be a loss name or a mapping; got {type(spec).__name__}",
        exc=TypeError,
    )


def check_soft_target_loss(spec: str | Mapping[str, Any], *, key: str = "mixup") -> None:
    """Refuse a loss that cannot take the soft targets Mixup/CutMix produce."""
    bad = [n for n in loss_names(spec) if n not in SOFT_TARGET_LOSSES]
    if bad:
        reasons = "; ".join(f"{n}: {_WHY_NOT.get(n, 'it takes class ids')}" for n in bad)
        fail(
            "config",
            f"{key} produces soft targets (class probabilities), which loss "
            f"{', '.join(map(repr, bad))} cannot take ({reasons})",
            hint="use loss: cross_entropy with mixup/cutmix",
        )


def _ce_key(spec: Mapping[str, Any]) -> str | None:
    from strop.losses.registry import LOSSES

    return next((k for k in spec if k in LOSSES and LOSSES.canonical(k) == "cross_entropy"), None)


def _set_option(
    func: str, spec: str | Mapping[str, Any], option: str, value: Any, why: str
) -> str | dict[str, Any]:
    from strop.losses.registry import LOSSES

    if isinstance(spec, str):
        names = [n.strip() for n in spec.split("+")]
        spec = {"name": names[0]} if len(names) == 1 else {n: 1.0 for n in names}
    spec = dict(spec)
    if "name" in spec:
        if LOSSES.canonical(spec["name"]) != "cross_entropy":
            fail(func, f"{why} needs a cross_entropy loss; got loss {spec['name']!r}")
        target = spec
    else:
        key = _ce_key(spec)
        if key is None:
            fail(func, f"{why} needs a cross_entropy loss; got losses {list(spec)}")
        part = spec[key]
        target = (
            dict(part) if isinstance(part, Mapping) else {"weight": 1.0 if part is None else part}
        )
        spec[key] = target
    if option in target and target[option] != value and target[option] != "auto":
        fail(
            func,
            f"{why} sets {option}={value!r} but the loss already sets {option}={target[option]!r}",
            hint="set it in one place",
        )
    target[option] = value
    return spec


def apply_label_smoothing(spec: str | Mapping[str, Any], value: float) -> str | Mapping[str, Any]:
    """The loss spec with cross-entropy's ``label_smoothing=value`` (unchanged when 0)."""
    if value == 0:
        return spec
    return _set_option("config", spec, "label_smoothing", float(value), f"label_smoothing={value}")


def uses_auto_class_weights(spec: str | Mapping[str, Any]) -> bool:
    """Whether ``spec`` is ``{name: cross_entropy, weight: auto}`` (the trainer must then count
    the classes). Only the ``name`` form: in a weighted mix ``weight`` is the mixing weight."""
    return isinstance(spec, Mapping) and "name" in spec and spec.get("weight") == "auto"


def resolve_auto_class_weights(
    spec: str | Mapping[str, Any], weights: list[float]
) -> str | Mapping[str, Any]:
    """Replace ``weight: auto`` by ``weights`` (from :func:`strop.data.samplers.class_weights`,
    over class counts or segmentation pixel counts); other specs are returned unchanged."""
    if not uses_auto_class_weights(spec):
        return spec
    assert isinstance(spec, Mapping)
    return _set_option("config", spec, "weight", [float(w) for w in weights], "weight: auto")


def check_recipe_config(config: Any) -> None:
    """Cross-section checks for a ``Config`` that inherits the fields above (duck-typed:
    reads ``task``, ``loss``, ``epochs``, ``data.sampler``, ``label_smoothing``, ``mixup``,
    ``swa``). Raises ``ValueError`` with the key and the reason."""
    task = config.task
    if config.mixup is not None:
        if task != "classification":
            fail("config", f"mixup is for classification; got task={task!r}")
        check_soft_target_loss(config.loss)
    if config.label_smoothing:
        if task != "classification":
            fail(
                "config",
                f"label_smoothing is a classification key; got task={task!r}",
                hint="set loss: {name: cross_entropy, label_smoothing: ...} for segmentation",
            )
        apply_label_smoothing(config.loss, config.label_smoothing)
    if getattr(config.data, "sampler", "default") == "balanced" and task != "classification":
        fail(
            "config",
            "data.sampler: balanced draws images by class label, so it is for "
            f"classification; got task={task!r}",
            hint="use loss weight: auto (pixel-frequency class weights) for segmentation",
        )
    if config.swa is not None and config.swa.start_epoch >= config.epochs:
        fail(
            "config",
            f"swa.start_epoch={config.swa.start_epoch} must be < epochs={config.epochs} "
            "(0-based), or nothing is averaged",
        )
