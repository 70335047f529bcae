"""recipe: fine_tune fills in the preset under the user's keys; any key the user sets wins."""

from __future__ import annotations

import pytest

from strop.train import recipes
from strop.train.config_recipes import OptimizerConfig
from strop.train.recipes import FINE_TUNE, apply_recipe


def test_without_recipe_the_config_is_unchanged():
    cfg = {"epochs": 3, "optimizer": {"name": "sgd"}}
    out = apply_recipe(cfg)
    assert out == cfg and out is not cfg
    assert apply_recipe({"recipe": None, "epochs": 2}) == {"recipe": None, "epochs": 2}


def test_the_preset_fills_every_unset_key():
    out = apply_recipe({"recipe": "fine_tune", "data": {"root": "x"}})
    assert out["recipe"] == "fine_tune"
    for key, value in FINE_TUNE.items():
        if key == "data":
            assert out["data"] == {"root": "x", **value}
        else:
            assert out[key] == value


def test_user_keys_win_recursively():
    out = apply_recipe(
        {
            "recipe": "fine_tune",
            "optimizer": {"lr": 0.05},
            "gradual_unfreeze": {"head_epochs": 2},
            "label_smoothing": 0.0,
        }
    )
    assert out["optimizer"] == {**FINE_TUNE["optimizer"], "lr": 0.05}
    assert out["gradual_unfreeze"] == {**FINE_TUNE["gradual_unfreeze"], "head_epochs": 2}
    assert out["label_smoothing"] == 0.0


def test_a_different_name_or_a_shorthand_replaces_the_section():
    out = apply_recipe(
        {"recipe": "fine_tune", "optimizer": {"name": "sgd", "lr": 0.1}, "schedule": "cosine"}
    )
    assert out["optimizer"] == {"name": "sgd", "lr": 0.1}  # no AdamW betas leak into SGD
    assert out["schedule"] == "cosine"


def test_user_null_wins_over_the_preset():
    assert (
        apply_recipe({"recipe": "fine_tune", "gradual_unfreeze": None})["gradual_unfreeze"] is None
    )


def test_segmentation_does_not_get_classification_keys():
    out = apply_recipe({"recipe": "fine_tune", "task": "segmentation"})
    assert "label_smoothing" not in out and out["gradual_unfreeze"] == FINE_TUNE["gradual_unfreeze"]


def test_the_preset_is_valid_config_data():
    OptimizerConfig(**FINE_TUNE["optimizer"])
    assert "ema" not in FINE_TUNE  # measured not to help in short fine-tunes (BENCHMARKS.md)


def test_the_preset_is_not_mutated_by_a_merge():
    before = repr(FINE_TUNE)
    out = apply_recipe({"recipe": "fine_tune"})
    out["optimizer"]["lr"] = 123
    assert repr(FINE_TUNE) == before and recipes.RECIPES["fine_tune"] is FINE_TUNE


def test_unknown_recipe():
    with pytest.raises(
        ValueError,
        match=r"apply_recipe: recipe must be one of 'fine_tune'; got 'finetune'; did you mean 'fine_tune'",
    ):
        apply_recipe({"recipe": "finetune"})
