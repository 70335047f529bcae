"""strop: fine-tune PyTorch models with the training techniques that matter.

Subpackages are imported on first use so that ``strop --help`` does not pay for torch::

    import strop
    strop.losses.dice_loss(...)      # imports strop.losses here
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBPACKAGES = ("data", "finetune", "losses", "precision", "schedules", "train")

__all__ = ["__version__", "data", "finetune", "losses", "precision", "schedules", "train"]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"strop.{name}")
    raise AttributeError(f"module 'strop' has no attribute {name!r}")
