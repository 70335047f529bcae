"""Config sections and config-time checks: soft-target refusal matches what the losses really
do, label smoothing reaches cross-entropy, optimizer options are checked against torch."""

from __future__ import annotations

from typing import Any, Literal

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError, model_validator

from strop import losses
from strop.optim import OPTIMIZERS
from strop.train.config_recipes import (
    _WHY_NOT,
    DataRecipeFields,
    OptimizerConfig,
    RecipeFields,
    apply_label_smoothing,
    check_recipe_config,
    check_soft_target_loss,
    resolve_auto_class_weights,
    uses_auto_class_weights,
)


class _Data(DataRecipeFields):
    root: str | None = None


class _Config(RecipeFields):
    # the shape the lead's Config takes: inherit RecipeFields, call check_recipe_config
    task: Literal["classification", "segmentation"] = "classification"
    loss: str | dict[str, Any] = "cross_entropy"
    epochs: int = 10
    data: _Data = _Data()
    optimizer: OptimizerConfig = OptimizerConfig()

    @model_validator(mode="after")
    def _cross(self) -> _Config:
        check_recipe_config(self)
        return self


X = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
SOFT = torch.softmax(torch.randn(6, 4, generator=torch.Generator().manual_seed(1)), 1)


def test_cross_entropy_takes_soft_targets_as_the_formula_says():
    got = losses.build("cross_entropy")(X, SOFT)
    torch.testing.assert_close(got, -(SOFT * X.log_softmax(1)).sum(1).mean())
    check_soft_target_loss("cross_entropy")  # accepted


@pytest.mark.parametrize("name", ["focal", "dice", "jaccard", "tversky", "lovasz"])
def test_refused_losses_really_cannot_take_soft_targets_in_multiclass_mode(name):
    with pytest.raises(ValueError, match=f"{name}_loss: target must have shape"):
        losses.build(name, mode="multiclass")(X, SOFT)
    with pytest.raises(
        ValueError, match=rf"config: mixup produces soft targets .* loss '{name}' cannot take"
    ):
        check_soft_target_loss(name)


def test_every_registered_loss_is_either_accepted_or_has_a_reason():
    assert set(losses.LOSSES.names()) == {"cross_entropy", *_WHY_NOT}


def test_mixup_with_focal_is_refused_at_config_time():
    with pytest.raises(
        ValidationError,
        match=r"mixup produces soft targets.*'focal'.*Hint: use loss: cross_entropy",
    ):
        _Config(loss="focal", mixup={"mixup_alpha": 0.8})
    assert _Config(mixup={"cutmix_alpha": 1.0, "mixup_alpha": 0}).mixup.cutmix_alpha == 1.0
    with pytest.raises(ValidationError, match="both 0"):
        _Config(mixup={"mixup_alpha": 0})


def test_label_smoothing_maps_to_cross_entropys_option():
    spec = apply_label_smoothing("ce", 0.1)
    assert spec == {"name": "ce", "label_smoothing": 0.1}
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    torch.testing.assert_close(losses.build(spec)(X, y), F.cross_entropy(X, y, label_smoothing=0.1))
    # with soft targets: smoothing mixes the target with the uniform distribution
    smoothed = 0.9 * SOFT + 0.1 / 4
    torch.testing.assert_close(
        losses.build(spec)(X, SOFT), -(smoothed * X.log_softmax(1)).sum(1).mean()
    )
    assert apply_label_smoothing("cross_entropy", 0.0) == "cross_entropy"


def test_label_smoothing_in_a_weighted_mix_goes_to_the_cross_entropy_part():
    spec = apply_label_smoothing({"mse": 1.0, "cross_entropy": 0.5}, 0.2)
    assert spec == {"mse": 1.0, "cross_entropy": {"weight": 0.5, "label_smoothing": 0.2}}
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    loss = losses.build(spec)
    loss(X, F.one_hot(y, 4).float())
    torch.testing.assert_close(
        loss.parts["cross_entropy"],
        F.cross_entropy(X, F.one_hot(y, 4).float(), label_smoothing=0.2),
    )


@pytest.mark.parametrize(
    ("loss", "match"),
    [
        ("focal", r"label_smoothing=0.1 needs a cross_entropy loss; got loss 'focal'"),
        (
            {"name": "cross_entropy", "label_smoothing": 0.3},
            r"sets label_smoothing=0.1 but the loss already sets label_smoothing=0.3",
        ),
        ({"dice": 1.0, "bce": 1.0}, r"needs a cross_entropy loss; got losses \['dice', 'bce'\]"),
    ],
)
def test_label_smoothing_refusals(loss, match):
    with pytest.raises(ValidationError, match=match):
        _Config(loss=loss, label_smoothing=0.1)


def test_auto_class_weights_resolve_into_the_cross_entropy_weight():
    spec = {"name": "cross_entropy", "weight": "auto"}
    assert uses_auto_class_weights(spec) and not uses_auto_class_weights("cross_entropy")
    resolved = resolve_auto_class_weights(spec, [0.5, 1.0, 2.0, 4.0])
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    w = torch.tensor([0.5, 1.0, 2.0, 4.0])
    torch.testing.assert_close(losses.build(resolved)(X, y), F.cross_entropy(X, y, weight=w))


def test_optimizer_section_takes_each_optimizers_own_options():
    assert set(OptimizerConfig.model_fields["name"].annotation.__args__) == set(OPTIMIZERS)
    c = OptimizerConfig(name="rmsprop", lr=0.01, alpha=0.9, centered=True)
    assert c.options() == {"alpha": 0.9, "centered": True}
    assert OptimizerConfig(name="adamw", betas=[0.9, 0.95]).options() == {"betas": (0.9, 0.95)}
    assert OptimizerConfig(name="adamw").model_dump()["implementation"] == "auto"
    with pytest.raises(
        ValidationError, match=r"unknown key 'optimizer.momentun'; did you mean 'momentum'"
    ):
        OptimizerConfig(name="sgd", momentun=0.9)
    with pytest.raises(ValidationError, match=r"unknown key 'optimizer.alpha'.*options of 'adam'"):
        OptimizerConfig(name="adam", alpha=0.9)
    # momentum/nesterov/betas were fields of every optimizer before: old configs stay valid
    assert OptimizerConfig(name="adam", momentum=0.9, nesterov=False).options() == {}
    assert OptimizerConfig(name="sgd", betas=[0.9, 0.999]).options() == {}
    with pytest.raises(ValidationError):
        OptimizerConfig(name="lbfgs")


def test_cross_section_checks():
    with pytest.raises(ValidationError, match=r"swa.start_epoch=10 must be < epochs=10"):
        _Config(swa={"start_epoch": 10, "lr": 0.01})
    with pytest.raises(
        ValidationError,
        match=r"data.sampler: balanced .* for classification; got task='segmentation'",
    ):
        _Config(task="segmentation", loss="dice", data={"sampler": "balanced"})
    with pytest.raises(ValidationError, match=r"mixup is for classification"):
        _Config(task="segmentation", mixup={})
    ok = _Config(
        data={"augment": "trivialaugment", "random_erasing": 0.25, "color_jitter": 0.4},
        ema={"decay": 0.99},
        swa={"start_epoch": 5, "lr": 0.01},
        label_smoothing=0.1,
    )
    assert ok.ema.warmup and ok.data.hflip


def test_data_fields_validate():
    with pytest.raises(ValidationError):
        _Data(augment="trivial")
    with pytest.raises(ValidationError):
        _Data(random_erasing=1.5)
