"""Shared fixtures: the tutorial's fourteen models, each built once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# the shared case tables live next to this file (tests/ has no packages)
sys.path.insert(0, str(Path(__file__).parent))
from _finetune_cases import NUM_CLASSES, TUTORIAL

from strop.finetune import build_model


@pytest.fixture(scope="session")
def tutorial_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: build_model(name, num_classes=NUM_CLASSES) for name in TUTORIAL}
