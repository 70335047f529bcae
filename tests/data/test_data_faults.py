"""Hostile data folders (issue 17): decompression bombs, a symlink loop, 10,000 empty files.

Each is one clear warning (or, with ``strict=True``, one error) naming the file, never a hang or an
out-of-memory."""

from __future__ import annotations

import os
import time

import pytest
from PIL import Image

from strop.data import BadFilesWarning, image_folder


def _class_folder(root, name, n=4, size=8):
    folder = root / name
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (size, size), (i * 40, 0, 0)).save(folder / f"{i}.png")
    return folder


def test_decompression_bombs_are_refused_with_the_file_named(tmp_path, monkeypatch):
    _class_folder(tmp_path, "a")
    b = _class_folder(tmp_path, "b")
    # PIL's own guard, scaled down: warn above MAX_IMAGE_PIXELS, refuse above twice that
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.new("L", (40, 40)).save(b / "warn.png")  # 1600 px: PIL would only warn and decode it
    Image.new("L", (50, 50)).save(b / "bomb.png")  # 2500 px > 2 × 1000: PIL raises
    t0 = time.monotonic()
    with pytest.warns(BadFilesWarning) as record:
        train, _, classes = image_folder(tmp_path, image_size=8, val_fraction=0.0)
    assert time.monotonic() - t0 < 30
    assert len(record) == 1
    text = str(record[0].message)
    assert "2 unreadable or non-image files" in text
    assert (
        "b/bomb.png (refused: decompression bomb" in text
        and "b/warn.png (refused: decompression bomb" in text
    )
    assert len(train) == 8 and classes == ["a", "b"]  # the 8 good images are kept
    with pytest.raises(ValueError, match=r"b/bomb.png \(refused: decompression bomb"):
        image_folder(tmp_path, image_size=8, val_fraction=0.0, strict=True)


def test_a_symlink_loop_in_the_data_folder_is_walked_once(tmp_path):
    a = _class_folder(tmp_path, "a")
    _class_folder(tmp_path, "b")
    os.symlink(tmp_path, a / "loop")  # a/loop -> the root: a/loop/a/loop/... forever
    os.symlink(a, a / "self")
    t0 = time.monotonic()
    train, _, classes = image_folder(tmp_path, image_size=8, val_fraction=0.0)
    assert time.monotonic() - t0 < 30
    assert classes == ["a", "b"]
    # each real image once: not 4 × 40 copies reached through the links
    assert len(train) == 8
    assert len({os.path.realpath(p) for p, _ in train.samples}) == 8


def test_ten_thousand_empty_files_are_one_warning_and_fast(tmp_path):
    _class_folder(tmp_path, "a")
    b = _class_folder(tmp_path, "b")
    for i in range(10_000):
        (b / f"empty{i:05d}.jpg").touch()
    t0 = time.monotonic()
    with pytest.warns(BadFilesWarning) as record:
        train, _, _ = image_folder(tmp_path, image_size=8, val_fraction=0.0)
    seconds = time.monotonic() - t0
    assert seconds < 30, seconds
    assert len(record) == 1
    text = str(record[0].message)
    assert "10000 unreadable or non-image files" in text and "(zero-byte file)" in text
    assert text.endswith("Pass strict=True to make this an error.") and "and 9900 more" in text
    assert len(train) == 8
