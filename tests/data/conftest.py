"""Small bundled data sets, written once per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from strop.data import write_digits, write_shapes


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 digits per class, 16x16 grayscale PNGs (200 files)."""
    return write_digits(tmp_path_factory.mktemp("digits"), per_class=20, size=16, seed=0)


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 multiclass shape images (num_classes=4), 32x32."""
    return write_shapes(tmp_path_factory.mktemp("shapes"), n=30, size=32, seed=0, num_classes=4)


def save_rgb(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def make_class_tree(root: Path, counts: dict[str, int], size: int = 12, seed: int = 0) -> Path:
    """``root/<class>/<i>.png`` with random RGB content."""
    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        for i in range(n):
            save_rgb(root / name / f"{i:03d}.png", rng.integers(0, 256, (size, size, 3)))
    return root


@pytest.fixture
def class_tree():
    """Factory: ``class_tree(root, {"a": 3, "b": 2})`` writes random RGB PNGs per class."""
    return make_class_tree


@pytest.fixture
def rgb_file():
    """Factory: ``rgb_file(path, array)`` saves an 8-bit image (RGB or grayscale)."""
    return save_rgb
