"""The public surface of strop.data and its layering."""

from __future__ import annotations

import ast
from pathlib import Path

import strop.data

PINNED = [
    "AUGMENTATIONS",
    "IGNORED_SUFFIXES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "BadFilesWarning",
    "ImageFolderDataset",
    "SampleCache",
    "SegmentationFolderDataset",
    "auto_num_workers",
    "image_folder",
    "load_image_tensor",
    "make_loader",
    "materialize",
    "seed_worker",
    "segmentation_folder",
    "split_indices",
    "write_digits",
    "write_shapes",
]


def test_all_is_pinned_and_resolves():
    assert strop.data.__all__ == PINNED
    for name in PINNED:
        obj = getattr(strop.data, name)
        if callable(obj):  # functions and classes are strop.data's own, not re-exported strays
            assert obj.__module__.startswith("strop.data."), (name, obj.__module__)
        else:  # the constants are non-empty tuples/frozensets
            assert isinstance(obj, (tuple, frozenset, dict, list)) and len(obj) > 0, name
    assert issubclass(strop.data.BadFilesWarning, UserWarning)


def test_public_functions_have_docstrings():
    for name in PINNED:
        obj = getattr(strop.data, name)
        if callable(obj):
            assert obj.__doc__ and obj.__doc__.strip(), name


def test_data_never_imports_train_or_cli():
    package = Path(strop.data.__file__).parent
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                continue
            for mod in mods:
                assert not mod.startswith(("strop.train", "strop.cli")), (path.name, mod)
            assert not any(
                isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print"
                for n in ast.walk(tree)
            ), path.name
