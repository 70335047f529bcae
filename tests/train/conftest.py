import sys
from pathlib import Path

import pytest
import torch

from strop.data import write_digits, write_shapes

# the helper modules beside the tests (_train_seams.py, _configs.py) and test modules others reuse
sys.path.insert(0, str(Path(__file__).parent))
from _configs import tiny_config as _tiny_config


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory):
    """Three real digit classes, 20 images each: small enough for end-to-end tests."""
    return write_digits(
        tmp_path_factory.mktemp("digits"), digits=[0, 1, 2], per_class=20, seed=0, size=16
    )


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    return write_shapes(tmp_path_factory.mktemp("shapes"), n=16, size=32, seed=0, num_classes=2)


@pytest.fixture(autouse=True)
def _one_thread():
    # two cores and several test processes: keep each test's torch on one thread
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_config():
    return _tiny_config
