"""Recipes: named presets of config keys. ``recipe: fine_tune`` in a config fills in every key
below that the config does not set itself.

``fine_tune`` has fastai's ``fine_tune`` shape: the head alone for ``head_epochs`` with the
backbone frozen, then everything unfrozen with discriminative learning rates (the head at
``head_lr_mult`` × the LR, the unfrozen backbone at ``lr_mult`` × it), cosine with a warmup epoch. The numbers are ``benchmarks/recipes.py``'s; they live in
:data:`FINE_TUNE` only, so changing the recommendation is a one-place edit.

Merge rule (:func:`apply_recipe`): the user's config wins key by key, recursively; a section
whose ``name`` differs from the preset's (``optimizer: {name: sgd}`` over the preset's AdamW),
or that the user writes as a string (``schedule: cosine``), replaces the preset's section whole,
so options of one optimizer or schedule never leak into another.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from strop._checks import check_choice, fail

__all__ = ["FINE_TUNE", "RECIPES", "apply_recipe"]

#: fastai fine_tune's shape with the numbers ``benchmarks/recipes.py`` found best (BENCHMARKS.md
#: "Fine-tuning recipes vs fastai"). What was not shown to help stays off: label smoothing and
#: mixup (not measured), augmentation (``augment: crop`` cost 10 points in 12 epochs) and EMA
#: weights (in strop demo's 48-step runs, 3 seeds, no better than the raw weights: 0.847 vs 0.848
#: mean, while validating them doubled the cost of an epoch); each is one key away.
FINE_TUNE: dict[str, Any] = {
    "gradual_unfreeze": {"head_epochs": 1, "lr_mult": 0.1},
    "optimizer": {"name": "adamw", "lr": 3e-4, "head_lr_mult": 10.0},
    "schedule": {"name": "cosine", "warmup_epochs": 1},
    "data": {"batch_size": 10},  # more optimizer steps per epoch: +3 points over batch 32
}

RECIPES: dict[str, dict[str, Any]] = {"fine_tune": FINE_TUNE}


def _merge(preset: Any, user: Any) -> Any:
    if not isinstance(preset, Mapping) or not isinstance(user, Mapping):
        return copy.deepcopy(user)
    if "name" in preset and "name" in user and preset["name"] != user["name"]:
        return copy.deepcopy(dict(user))
    out = copy.deepcopy(dict(preset))
    for key, value in user.items():
        out[key] = _merge(preset[key], value) if key in preset else copy.deepcopy(value)
    return out


def apply_recipe(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config dict with its ``recipe`` preset filled in under the user's keys.

    ``recipe`` stays in the result (so ``run.json`` records both the name and the resolved
    values). A config without ``recipe`` (or ``recipe: null``) comes back as an unchanged copy.
    Apply it before validation, after ``--set`` overrides.
    """
    if not isinstance(config, Mapping):
        fail(
            "apply_recipe", f"config must be a mapping; got {type(config).__name__}", exc=TypeError
        )
    name = config.get("recipe")
    if name is None:
        return copy.deepcopy(dict(config))
    check_choice("apply_recipe", "recipe", name, tuple(RECIPES))
    task = config.get("task", "classification")
    preset = copy.deepcopy(RECIPES[name])
    if task != "classification":
        preset.pop("label_smoothing", None)  # a classification key
    return _merge(preset, config)
