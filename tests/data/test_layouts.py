"""Folder layouts beside ``train/`` and the ``image_size=None`` default (the images' own size)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from strop.data import image_folder, segmentation_folder


def save_rgb(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def make_class_tree(root, counts, size=12, seed=0):
    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        for i in range(n):
            save_rgb(root / name / f"{i:03d}.png", rng.integers(0, 256, (size, size, 3)))
    return root


def _split_tree(root, val_name, *, n_train=4, n_val=2):
    make_class_tree(root / "train", {"cat": n_train, "dog": n_train}, seed=0)
    make_class_tree(root / val_name, {"cat": n_val, "dog": n_val}, seed=1)
    return root


@pytest.mark.parametrize("val_name", ["val", "valid", "validation"])
def test_common_validation_folder_names_are_the_given_split(tmp_path, val_name):
    root = _split_tree(tmp_path, val_name)
    train, val, classes = image_folder(root, image_size=12)
    assert classes == ["cat", "dog"]
    assert len(train) == 8 and len(val) == 4  # the given split, not train/ split 80/20
    assert {p.parent.parent.name for p, _ in val.samples} == {val_name}


def test_test_folder_only_when_asked(tmp_path):
    root = _split_tree(tmp_path, "test")
    with pytest.raises(
        ValueError,
        match=r"has train/ and test/ but no validation folder. Hint: pass val_folder='test'",
    ):
        image_folder(root, image_size=12)
    train, val, _ = image_folder(root, image_size=12, val_folder="test")
    assert len(train) == 8 and len(val) == 4


def test_test_folder_beside_val_is_left_alone(tmp_path):
    root = _split_tree(tmp_path, "val")
    make_class_tree(root / "test", {"cat": 3}, seed=2)
    train, val, _ = image_folder(root, image_size=12)
    assert len(train) == 8 and len(val) == 4


def test_unknown_sibling_of_train_is_refused(tmp_path):
    root = _split_tree(tmp_path, "dev")
    with pytest.raises(
        ValueError, match=r"has train/ and folder\(s\) dev/ that are neither a validation split"
    ):
        image_folder(root, image_size=12)
    assert len(image_folder(root, image_size=12, val_folder="dev")[1]) == 4


def test_two_validation_folders_are_ambiguous(tmp_path):
    root = _split_tree(tmp_path, "val")
    make_class_tree(root / "valid", {"cat": 1}, seed=3)
    with pytest.raises(ValueError, match=r"several validation folders: val/, valid/"):
        image_folder(root, image_size=12)


def test_validation_folder_without_train_is_refused(tmp_path):
    make_class_tree(tmp_path / "valid", {"cat": 2}, seed=0)
    make_class_tree(tmp_path / "cat", {"x": 2}, seed=0)
    with pytest.raises(ValueError, match=r"found '.*valid' but no '.*train'"):
        image_folder(tmp_path, image_size=12)


def test_segmentation_accepts_valid(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("valid", 2)):
        for i in range(n):
            save_rgb(tmp_path / split / "images" / f"{i}.png", rng.integers(0, 256, (8, 8, 3)))
            mask = np.zeros((8, 8), np.uint8)
            mask[2:5, 2:5] = 1
            save_rgb(tmp_path / split / "masks" / f"{i}.png", mask)
    train, val, n_classes = segmentation_folder(tmp_path, image_size=8)
    assert (len(train), len(val), n_classes) == (3, 2, 2)


# -- image_size=None --------------------------------------------------------------------------


def test_image_size_none_keeps_the_images_own_size(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(4):
        save_rgb(tmp_path / "a" / f"{i}.png", rng.integers(0, 256, (20, 30, 3)))  # H=20, W=30
        save_rgb(tmp_path / "b" / f"{i}.png", rng.integers(0, 256, (20, 30, 3)))
    train, val, _ = image_folder(tmp_path, image_size=None)
    assert train.image_size == val.image_size == (20, 30)
    x, _ = train[0]
    assert x.shape == (3, 20, 30)
    # not resized at all: the tensor is the file's pixels, normalised
    path = train.samples[0][0]
    raw = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    mean = torch.tensor(train.mean).view(3, 1, 1)
    std = torch.tensor(train.std).view(3, 1, 1)
    torch.testing.assert_close(x, (raw.float() / 255 - mean) / std)


def test_image_size_none_refuses_mixed_sizes(tmp_path):
    rng = np.random.default_rng(0)
    save_rgb(tmp_path / "a" / "0.png", rng.integers(0, 256, (16, 16, 3)))
    save_rgb(tmp_path / "a" / "1.png", rng.integers(0, 256, (16, 16, 3)))
    save_rgb(tmp_path / "b" / "0.png", rng.integers(0, 256, (16, 24, 3)))
    save_rgb(tmp_path / "b" / "1.png", rng.integers(0, 256, (16, 16, 3)))
    with pytest.raises(
        ValueError,
        match=r"image_size=None takes the images' own size, but .* holds 2 sizes: 16x16 .*, 24x16 .*Hint: pass image_size",
    ):
        image_folder(tmp_path, image_size=None)


def test_segmentation_image_size_none(shapes_root):
    train, _, _ = segmentation_folder(shapes_root, image_size=None)
    x, y = train[0]
    assert train.image_size == (32, 32) and x.shape == (3, 32, 32) and y.shape == (32, 32)
