"""The few trainer internals the correctness tests reach into, named once.

Everything else in ``test_fit_correctness.py`` goes through public behaviour (``fit``, the run
folder, ``strop.finetune.build_model``). When ``strop.train`` is reorganised, re-point these and
nothing else:

- ``EVALUATE_TARGET``: the name ``fit`` calls for the per-epoch validation metrics; the tests
  replace it with a scripted sequence (its arguments are ignored, so its signature may change).
- ``BUILD_MODEL``: the module attribute ``fit`` builds its model through (a public function; the
  tests wrap it to keep a handle on the model ``fit`` trains).
- :func:`run_evaluate`: calls the validation function directly with a model, loss and loader.
"""

from __future__ import annotations

from typing import Any

import torch

EVALUATE_TARGET = "strop.train.trainer.evaluate"
BUILD_MODEL = ("strop.finetune", "build_model")


def run_evaluate(
    model: torch.nn.Module,
    loss_fn: Any,
    loader: Any,
    *,
    task: str,
    num_classes: int,
    precision: str = "fp32",
) -> dict[str, float]:
    """``evaluate`` on CPU for ``model``/``loss_fn``/``loader``."""
    from strop.train.loop import evaluate

    return evaluate(
        model,
        loss_fn,
        loader,
        task=task,
        num_classes=num_classes,
        precision=precision,
        device=torch.device("cpu"),
    )
