"""The training config: one frozen, validated object passed down instead of CLI arguments.

The YAML format is public (see ``docs/config.md``)::

    task: classification            # or segmentation, detection
    data: {root: path/to/images, image_size: 64, batch_size: 32, val_fraction: 0.2}
    model: {name: resnet18, weights: null, freeze: null}
    loss: cross_entropy             # or any strop.losses.build spec, e.g. {dice: 1.0, bce: 1.0}
    optimizer: {name: sgd, lr: 0.01, momentum: 0.9, weight_decay: 0.0001}
    schedule: {name: cosine, warmup_epochs: 1}
    precision: auto                 # fp32 | bf16 | fp16 | auto
    epochs: 10
    seed: 0
    output: runs/example

Unknown or mistyped keys are errors naming the key and the closest valid one; YAML is read with
``yaml.safe_load``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from strop._checks import did_you_mean
from strop.train.config_recipes import (
    DataRecipeFields,
    EMAConfig,
    MixupConfig,
    OptimizerConfig,
    RecipeFields,
    SWAConfig,
    check_recipe_config,
)

__all__ = [
    "Config",
    "DataConfig",
    "EMAConfig",
    "MixupConfig",
    "ModelConfig",
    "OptimizerConfig",
    "SWAConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(DataRecipeFields, _Strict):
    """Where the images are and how they are batched."""

    root: str | None = Field(
        None,
        description="folder of class folders, or train/ + val/; images/ + masks/ for segmentation",
    )
    image_size: int = Field(64, gt=0)
    batch_size: int = Field(32, gt=0)
    val_batch_size: int | None = Field(
        None,
        gt=0,
        description="global batch for validation and eval (default: max(batch_size, 64); detection: batch_size)",
    )
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    num_workers: int | Literal["auto"] = "auto"
    cache: Literal["none", "memory", "disk"] = "none"
    strict: bool = False
    ignore_index: int = 255
    num_classes: int | None = Field(None, gt=0, description="checked against the data when given")
    val_folder: str | None = Field(
        None,
        description="validation folder beside train/ (default: val/, valid/ or validation/; 'test' only when named)",
    )
    format: Literal["auto", "coco", "yolo", "voc"] = Field(
        "auto", description="detection annotations"
    )


class ModelConfig(_Strict):
    """Which network, which weights, what is frozen."""

    name: str = "resnet18"
    weights: str | None = None
    sha256: str | None = None
    strict: bool = True
    freeze: str | int | None = None
    train_bn: bool = False
    aux_weight: float = Field(0.4, ge=0.0)
    dropout: float | None = Field(
        None, ge=0.0, lt=1.0, description="override every Dropout's p (timm's drop_rate)"
    )
    bn_momentum: float | None = Field(
        None, gt=0.0, le=1.0, description="override every BatchNorm's momentum (timm's bn_momentum)"
    )
    trust_pickle: bool = Field(
        False, description="UNSAFE: load legacy pickled weights that can run code"
    )
    keep_head: bool = Field(
        False,
        description="load the source's head when it fits (default: fine-tune from a new head)",
    )
    # detection only (docs/detection.md)
    trainable_backbone_layers: int | None = Field(
        None, ge=0, description="torchvision's knob (detection)"
    )
    box_loss: str | None = Field(
        None, description="detection: l1 | smooth_l1 | iou | giou | diou | ciou"
    )
    nms_threshold: float | None = Field(None, gt=0.0, le=1.0)
    nms_denominator: Literal["union", "min"] = "union"
    min_size: int | None = Field(
        None, gt=0, description="detection: resize (default data.image_size)"
    )
    max_size: int | None = Field(None, gt=0)
    score_threshold: float | None = Field(None, ge=0.0, lt=1.0)
    recalibrate_bn: bool | None = Field(
        None,
        description="detection: recompute BatchNorm stats before validation (default: when plain BN)",
    )


class EarlyStoppingConfig(_Strict):
    """Stop when ``monitor`` has not improved for ``patience`` epochs."""

    patience: int = Field(5, gt=0)
    min_delta: float = Field(0.0, ge=0.0)


class GradualUnfreezeConfig(_Strict):
    """fastai-style fine_tune: head only for ``head_epochs``, then everything at ``lr_mult`` × lr."""

    head_epochs: int = Field(1, gt=0)
    lr_mult: float = Field(0.1, gt=0.0)


class Config(RecipeFields, _Strict):
    """A whole training run. Build it with :func:`load_config` or :func:`config_from_dict`."""

    task: Literal["classification", "segmentation", "detection"] = "classification"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: str | dict[str, Any] = "cross_entropy"
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: str | dict[str, Any] | None = None
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"
    compile: bool | Literal["auto"] = False  # auto: a short probe decides (train/autocompile.py)
    device: str = "auto"
    epochs: int = Field(10, gt=0)
    accumulation_steps: int = Field(1, gt=0)
    clip_grad_norm: float | None = Field(None, gt=0.0)
    seed: int = 0
    monitor: str | None = Field(
        None, description="metric for 'best' (default: val_accuracy / val_dice)"
    )
    monitor_mode: Literal["max", "min"] | None = None
    early_stopping: EarlyStoppingConfig | None = None
    gradual_unfreeze: GradualUnfreezeConfig | None = None
    feature_cache: Literal["auto", "off"] = Field(
        "auto", description="cache frozen-backbone features in memory"
    )
    nonfinite: Literal["skip", "stop"] = "skip"
    checkpoint_every_steps: int | None = Field(None, gt=0)
    sync_batchnorm: bool = False
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="several processes: ddp (replicated model) or fsdp (FSDP2, sharded model)",
    )
    scale_lr: bool = Field(
        False,
        description="linear scaling rule: lr is for 256 images per step; uses lr × batch_size × accumulation_steps / 256",
    )
    progress: bool = True
    output: str = "runs/example"

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        # segmentation's natural default loss is Dice + BCE, not cross-entropy
        if isinstance(data, dict) and data.get("task") == "segmentation" and "loss" not in data:
            data = {**data, "loss": {"dice": 1.0, "bce": 1.0}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _detection_defaults(cls, data: Any) -> Any:
        # a detection config without a model name gets a small detector, not resnet18; no loss
        if isinstance(data, dict) and data.get("task") == "detection":
            data = {"loss": "none", **data}  # the detector computes its own losses
            model = data.get("model")
            if model is None or (isinstance(model, dict) and "name" not in model):
                data = {
                    **data,
                    "model": {**(model or {}), "name": "fasterrcnn_mobilenet_v3_large_320_fpn"},
                }
        return data

    @model_validator(mode="after")
    def _detection_keys(self) -> Config:
        from strop.train.detection_run import check_detection_config

        check_detection_config(self)
        return self

    @model_validator(mode="after")
    def _recipe_checks(self) -> Config:
        check_recipe_config(self)
        return self

    @model_validator(mode="after")
    def _strategy_checks(self) -> Config:
        from strop.train.fsdp import check_fsdp_config

        check_fsdp_config(self)
        return self

    @property
    def monitor_metric(self) -> str:
        """The metric that decides ``best`` (and early stopping)."""
        if self.monitor:
            return self.monitor
        from strop.train.tasks import TASKS

        return TASKS[self.task].default_monitor

    @property
    def monitor_direction(self) -> str:
        """``"max"`` or ``"min"`` for :attr:`monitor_metric`."""
        if self.monitor_mode:
            return self.monitor_mode
        return "min" if "loss" in self.monitor_metric else "max"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON/YAML-safe) for the run folder and checkpoints."""
        return self.model_dump(mode="json")


def _fields_at(loc: Sequence[Any]) -> list[str]:
    """Valid keys of the config section at ``loc`` (for did-you-mean)."""
    model: Any = Config
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if (
            field is None
            or not isinstance(field.annotation, type)
            or not issubclass(field.annotation, BaseModel)
        ):
            # Optional[Section] annotations: find the BaseModel inside
            args = getattr(field.annotation, "__args__", ()) if field is not None else ()
            sub = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
            if sub is None:
                return []
            model = sub
        else:
            model = field.annotation
    return list(model.model_fields)


def _leaf(loc: Sequence[Any]) -> tuple[tuple[Any, ...], Any] | None:
    """``(path, annotation)`` of the config key that ``loc`` points into, or None (top level)."""
    model: Any = Config
    for i, part in enumerate(loc):
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        sections = [
            a
            for a in (field.annotation, *get_args(field.annotation))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if not sections or i == len(loc) - 1:
            return tuple(loc[: i + 1]), field.annotation
        model = sections[0]
    return None


def _accepts(annotation: Any) -> str:
    """What a union-typed key accepts, in YAML words: ``true/false, or one of 'none', 'crop'``."""
    words = {
        bool: "true/false",
        int: "an integer",
        float: "a number",
        str: "a string",
        type(None): "null",
        dict: "a mapping",
    }
    parts: list[str] = []
    for arg in get_args(annotation) or (annotation,):
        if get_origin(arg) is Literal:
            values = [repr(v) for v in get_args(arg)]
            parts.append(values[0] if len(values) == 1 else "one of " + ", ".join(values))
        elif isinstance(arg, type) and issubclass(arg, BaseModel):
            parts.append("a section (mapping)")
        else:
            parts.append(words.get(get_origin(arg) or arg, getattr(arg, "__name__", str(arg))))
    return ", or ".join(dict.fromkeys(parts))


def _format_errors(err: ValidationError, source: str) -> str:
    """One line per wrong key; a union-typed key says once what it accepts, not each branch."""
    lines: list[str] = []
    unions: dict[tuple[Any, ...], tuple[Any, Any]] = {}
    errors = err.errors()
    for e in errors:
        leaf = _leaf(e["loc"])
        if leaf is None or e["type"] == "extra_forbidden":
            continue
        branches = [x for x in errors if x["type"] != "extra_forbidden" and _leaf(x["loc"]) == leaf]
        if len(branches) > 1 and len(get_args(leaf[1])) > 1:
            unions.setdefault(leaf[0], (leaf[1], e.get("input")))
    done: set[tuple[Any, ...]] = set()
    for e in errors:
        leaf = _leaf(e["loc"])
        if leaf is not None and leaf[0] in unions and e["type"] != "extra_forbidden":
            if leaf[0] not in done:
                done.add(leaf[0])
                annotation, got = unions[leaf[0]]
                lines.append(
                    f"{'.'.join(map(str, leaf[0]))}: expected {_accepts(annotation)}; got {got!r}"
                )
            continue
        loc = [
            p
            for p in e["loc"]
            if not (isinstance(p, str) and p.startswith(("function-after", "literal")))
        ]
        key = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            hint = did_you_mean(str(loc[-1]), _fields_at(loc))
            lines.append(f"unknown key {key!r}{hint}")
        else:
            got = e.get("input")
            got_text = f"; got {got!r}" if not isinstance(got, dict) else ""
            lines.append(f"{key}: {e['msg']}{got_text}")
    return f"invalid config {source}: " + "; ".join(lines)


def config_from_dict(data: Mapping[str, Any] | None, *, source: str = "(dict)") -> Config:
    """Validate plain data into a :class:`Config`; errors name the key and the close match."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise TypeError(
            f"invalid config {source}: expected a mapping at the top level; got {type(data).__name__}"
        )
    from strop.train.recipes import apply_recipe

    try:
        data = apply_recipe(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"invalid config {source}: {exc}") from None
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ValueError(_format_errors(err, source)) from None


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``--set a.b=value`` overrides (values parsed as YAML: ``0.1``, ``true``, ``null``)."""
    out = yaml.safe_load(yaml.safe_dump(data)) or {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set: expected KEY=VALUE such as optimizer.lr=0.1; got {item!r}")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None or isinstance(child, str):
                # a shorthand like `schedule: cosine` becomes a mapping when an option is set
                child = {} if child is None else {"name": child}
                node[part] = child
            elif not isinstance(child, dict):
                raise ValueError(f"--set {item!r}: {part!r} holds {child!r}, not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problem = (
                getattr(exc, "problem", None) or getattr(exc, "reason", None) or type(exc).__name__
            )
            raise ValueError(
                f"--set {item!r}: the value is not valid YAML ({problem}); quote it"
            ) from None
    return out


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (safe loader), apply ``--set`` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"invalid config {path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"invalid config {path}: expected a mapping at the top level; got {type(data).__name__}"
        )
    return config_from_dict(apply_overrides(data, overrides), source=str(path))
