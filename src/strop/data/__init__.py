"""Data for strop: image folders (classification, segmentation), bundled data sets, the uint8
cache and loader settings.

    from strop.data import image_folder, make_loader, write_digits
    root = write_digits("data/digits", size=32)
    train_ds, val_ds, classes = image_folder(root, image_size=64, augment="crop", cache="memory")
    loader = make_loader(train_ds, batch_size=32, shuffle=True, seed=0)

See ``docs/data.md`` for layouts, options, the bad-file policy and the cache.
"""

from __future__ import annotations

from strop.data.bundled import write_digits, write_shapes
from strop.data.cache import SampleCache
from strop.data.folders import (
    IGNORED_SUFFIXES,
    IMAGE_EXTENSIONS,
    BadFilesWarning,
    ImageFolderDataset,
    SegmentationFolderDataset,
    image_folder,
    segmentation_folder,
    split_indices,
)
from strop.data.loaders import auto_num_workers, make_loader, materialize, seed_worker
from strop.data.transforms import AUGMENTATIONS, IMAGENET_MEAN, IMAGENET_STD, load_image_tensor

__all__ = [  # isort-style order (ruff RUF022); pinned by tests/data/test_api.py
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
