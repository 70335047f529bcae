"""write_digits and write_shapes: content, determinism, idempotence, safety."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from strop.data import write_digits, write_shapes
from strop.data.bundled import MANIFEST


def test_digits_layout_counts_and_values(digits_root):
    classes = sorted(p.name for p in digits_root.iterdir() if p.is_dir())
    assert classes == [str(d) for d in range(10)]
    for c in classes:
        files = sorted((digits_root / c).glob("*.png"))
        assert len(files) == 20
        with Image.open(files[0]) as img:
            assert img.mode == "L" and img.size == (16, 16)


def test_digits_pixels_come_from_load_digits(tmp_path):
    root = write_digits(tmp_path / "d", digits=[3], per_class=2, size=8, seed=1)
    images, labels = load_digits(return_X_y=True)
    files = sorted((root / "3").glob("*.png"))
    assert len(files) == 2
    for f in files:
        index = int(f.stem)
        assert labels[index] == 3
        expected = np.rint(images[index].reshape(8, 8) * 255 / 16).astype(np.uint8)
        np.testing.assert_array_equal(np.asarray(Image.open(f)), expected)
    # the full 0..16 range maps onto 0..255: the last scan's 16s are 255 in its file, its 0s are 0
    pixels, scan = np.asarray(Image.open(f)), images[index].reshape(8, 8)
    assert (scan == 16).any() and (scan == 0).any()  # the scan spans the whole range
    np.testing.assert_array_equal(pixels == 255, scan == 16)
    np.testing.assert_array_equal(pixels == 0, scan == 0)


def test_digits_all_per_class_by_default(tmp_path):
    root = write_digits(tmp_path / "d", digits=range(2), size=8)
    _, labels = load_digits(return_X_y=True)
    for d in range(2):
        assert len(list((root / str(d)).glob("*.png"))) == int((labels == d).sum())


def test_digits_selection_depends_on_seed_only(tmp_path):
    a = write_digits(tmp_path / "a", digits=[0, 1], per_class=5, seed=3, size=8)
    b = write_digits(tmp_path / "b", digits=[0, 1], per_class=5, seed=3, size=8)
    c = write_digits(tmp_path / "c", digits=[0, 1], per_class=5, seed=4, size=8)

    def names(root):
        return sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))

    assert names(a) == names(b)
    assert names(a) != names(c)


def test_digits_idempotent_and_rewritten_on_new_params(tmp_path):
    root = write_digits(tmp_path / "d", digits=[0, 1], per_class=3, size=8)
    first = (root / "0").stat().st_mtime_ns, sorted(root.rglob("*.png"))
    write_digits(root, digits=[0, 1], per_class=3, size=8)
    assert ((root / "0").stat().st_mtime_ns, sorted(root.rglob("*.png"))) == first
    write_digits(root, digits=[2], per_class=4, size=8)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["2"]
    assert len(list(root.rglob("*.png"))) == 4
    assert json.loads((root / MANIFEST).read_text())["params"]["digits"] == [2]


def test_refuses_foreign_non_empty_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(
        ValueError, match=r"write_digits: .* is not empty and was not written by strop"
    ):
        write_digits(tmp_path, size=8)
    assert (tmp_path / "mine.txt").read_text() == "user data"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"digits": [10]}, "digits must be a non-empty collection of integers in 0..9"),
        ({"per_class": 0}, "per_class must be > 0"),
        ({"per_class": 500}, "per_class=500 but digit 0 has only 178 images"),
        ({"size": 4}, "size must be >= 8"),
    ],
)
def test_digits_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=f"write_digits: {match}"):
        write_digits(tmp_path / "x", **kwargs)


def test_shapes_multiclass_masks(shapes_root):
    images = sorted((shapes_root / "images").glob("*.png"))
    masks = sorted((shapes_root / "masks").glob("*.png"))
    assert [p.name for p in images] == [p.name for p in masks]
    assert len(images) == 30
    seen = set()
    for i, m in zip(images, masks, strict=True):
        with Image.open(i) as img, Image.open(m) as mask:
            assert img.mode == "RGB" and mask.mode == "L" and img.size == mask.size == (32, 32)
            values = np.unique(np.asarray(mask))
        assert set(values.tolist()) <= {0, 1, 2, 3}
        assert values.max() > 0  # every image holds a shape
        seen |= set(values.tolist())
    assert seen == {0, 1, 2, 3}


@pytest.mark.parametrize(("num_classes", "expected"), [(2, {0, 1}), (3, {0, 1, 2})])
def test_shapes_binary_and_three_classes(tmp_path, num_classes, expected):
    root = write_shapes(tmp_path / "s", n=12, size=24, num_classes=num_classes)
    seen = set()
    for m in (root / "masks").glob("*.png"):
        seen |= set(np.unique(np.asarray(Image.open(m))).tolist())
    assert seen == expected


def test_shapes_deterministic_and_idempotent(tmp_path):
    a = write_shapes(tmp_path / "a", n=3, size=16, seed=5)
    b = write_shapes(tmp_path / "b", n=3, size=16, seed=5)
    for rel in ("images/0002.png", "masks/0002.png"):
        np.testing.assert_array_equal(
            np.asarray(Image.open(a / rel)), np.asarray(Image.open(b / rel))
        )
    before = (a / "images/0000.png").stat().st_mtime_ns
    write_shapes(a, n=3, size=16, seed=5)
    assert (a / "images/0000.png").stat().st_mtime_ns == before


def test_shapes_bad_num_classes(tmp_path):
    with pytest.raises(ValueError, match=r"write_shapes: num_classes must be 2 .*got 5"):
        write_shapes(tmp_path, num_classes=5)
