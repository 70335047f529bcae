"""Image folders for classification (``root/<class>/<image>``) and segmentation (``images/`` +
``masks/``), validated before any training starts.

Every file is checked when the dataset is built: PIL ``Image.open(...).verify()`` (header and, for
PNG and JPEG, the whole stream), a non-zero size, a supported extension. Unreadable files are
skipped with one :class:`BadFilesWarning` that lists them, or raise ``ValueError`` with
``strict=True``. Layout errors (missing folder, empty class folder, image without mask, mask of
another size than its image, mask values out of range) always raise ``ValueError`` naming the
paths. See ``docs/data.md`` for the full policy.

The code lives in :mod:`strop.data._scan` (scanning, validation, the split),
:mod:`strop.data._dataset` (the dataset base and the cache glue),
:mod:`strop.data.classification` and :mod:`strop.data.segmentation` (the datasets and builders);
this module keeps the names importable from where they always were.
"""

from __future__ import annotations

from strop.data._scan import (
    IGNORED_SUFFIXES,
    IMAGE_EXTENSIONS,
    BadFilesWarning,
    check_image_file,
    split_indices,
)
from strop.data.classification import ImageFolderDataset, image_folder
from strop.data.segmentation import SegmentationFolderDataset, segmentation_folder

__all__ = [
    "IGNORED_SUFFIXES",
    "IMAGE_EXTENSIONS",
    "BadFilesWarning",
    "ImageFolderDataset",
    "SegmentationFolderDataset",
    "check_image_file",
    "image_folder",
    "segmentation_folder",
    "split_indices",
]
