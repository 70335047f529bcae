"""Where a config's ``data.root`` points: a folder, or ``bundled:NAME`` for a bundled data set.

A bundled set is written once under ``$STROP_DATA`` (default ``~/.cache/strop/data``) by its
writer and then read like any folder. Registering another one is one entry in :data:`BUNDLED`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

from strop.data.bundled import write_digits, write_shapes
from strop.data.shapes_detection import write_shapes_detection

__all__ = ["BUNDLED", "PREFIX", "data_home", "resolve_root"]

PREFIX = "bundled:"

# name -> writer(folder) -> the folder it wrote (writers skip work that is already on disk)
BUNDLED: dict[str, Callable[[Path], Path]] = {
    # scikit-learn's real handwritten digits as an ImageFolder
    "digits": write_digits,
    # synthetic binary segmentation (images/ + masks/)
    "shapes": functools.partial(write_shapes, num_classes=2),
    # the same images with one class per shape kind
    "shapes-multiclass": functools.partial(write_shapes, num_classes=4),
    # synthetic detection (COCO json): circles, squares, triangles, 96 px
    "shapes-detection": write_shapes_detection,
}


def data_home() -> Path:
    """``$STROP_DATA``, else ``~/.cache/strop/data``: where bundled sets are written."""
    return Path(os.environ.get("STROP_DATA", Path.home() / ".cache" / "strop" / "data"))


def resolve_root(root: str) -> Path:
    """``bundled:NAME`` -> the folder of that bundled set (written on first use); any other
    string -> that path.

    Raises:
        ValueError: ``bundled:NAME`` names no registered set (the message lists them).
    """
    if not root.startswith(PREFIX):
        return Path(root)
    name = root[len(PREFIX) :]
    writer = BUNDLED.get(name)
    if writer is None:
        raise ValueError(
            f"config: data.root {root!r} names no bundled data set; available: "
            + ", ".join(PREFIX + b for b in BUNDLED)
        )
    return writer(data_home() / name)
