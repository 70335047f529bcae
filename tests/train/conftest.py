import pytest
import torch

from strop.data import write_digits, write_shapes


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory):
    """Three real digit classes, 20 images each: small enough for end-to-end tests."""
    return write_digits(tmp_path_factory.mktemp("digits"), digits=[0, 1, 2], per_class=20, seed=0, size=16)


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


def _tiny_config(root, out, **over):
    """A resnet18 run on 32×32 digits; ``over`` replaces top-level keys (sections are merged)."""
    from strop.train import config_from_dict

    base = {
        "data": {"root": str(root), "image_size": 32, "batch_size": 16, "val_fraction": 0.25, "num_workers": 0},
        "model": {"name": "resnet18"},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "precision": "fp32",
        "memory_format": "contiguous",
        "epochs": 2,
        "seed": 0,
        "progress": False,
        "output": str(out),
    }
    for k, v in over.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return config_from_dict(base)


@pytest.fixture
def tiny_config():
    return _tiny_config
