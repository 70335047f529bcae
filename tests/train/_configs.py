"""The small run configs the training tests start from."""

from __future__ import annotations

from typing import Any


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s top-level keys replaced; a section (a dict) is merged key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def tiny_config(root, out, **over):
    """A resnet18 run on 32×32 digits; ``over`` replaces top-level keys (sections are merged)."""
    from strop.train import config_from_dict

    base = {
        "data": {
            "root": str(root),
            "image_size": 32,
            "batch_size": 16,
            "val_fraction": 0.25,
            "num_workers": 0,
        },
        "model": {"name": "resnet18"},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "precision": "fp32",
        "memory_format": "contiguous",
        "epochs": 2,
        "seed": 0,
        "progress": False,
        "output": str(out),
    }
    return config_from_dict(merged(base, over))
