"""image_folder: layouts, split, pipeline values, augmentation, bad input."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from strop.data import IMAGENET_MEAN, IMAGENET_STD, BadFilesWarning, image_folder, split_indices


def test_digits_read_back(digits_root):
    train, val, classes = image_folder(digits_root, image_size=24)
    assert classes == [str(d) for d in range(10)]
    assert len(train) + len(val) == 200
    # 20 per class, val_fraction 0.2 -> 4 per class in val, stratified
    assert Counter(val.targets) == {c: 4 for c in range(10)}
    assert Counter(train.targets) == {c: 16 for c in range(10)}
    x, y = train[0]
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and isinstance(y, int)
    assert train.classes == val.classes == classes and train.class_to_idx["7"] == 7
    # grayscale PNG -> 3 identical channels after RGB conversion; normalisation differs per channel
    raw = (x * torch.tensor(IMAGENET_STD)[:, None, None]) + torch.tensor(IMAGENET_MEAN)[
        :, None, None
    ]
    assert torch.allclose(raw[0], raw[1], atol=1e-5) and torch.allclose(raw[1], raw[2], atol=1e-5)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5


def test_split_deterministic_stratified_and_seeded(digits_root):
    a_train, a_val, _ = image_folder(digits_root, image_size=8, seed=1)
    b_train, b_val, _ = image_folder(digits_root, image_size=8, seed=1)
    _c_train, c_val, _ = image_folder(digits_root, image_size=8, seed=2)
    paths = lambda ds: [p for p, _ in ds.samples]  # noqa: E731
    assert paths(a_val) == paths(b_val) and paths(a_train) == paths(b_train)
    assert paths(a_val) != paths(c_val)
    assert not set(paths(a_train)) & set(paths(a_val))
    assert Counter(c_val.targets) == {c: 4 for c in range(10)}


@pytest.mark.parametrize(
    ("counts", "fraction", "expected"),
    [
        ([10, 10], 0.2, [2, 2]),
        ([10, 3], 0.5, [5, 2]),  # round half up: 1.5 -> 2
        ([1, 5], 0.2, [0, 1]),  # a single image stays in train
        ([2, 2], 0.9, [1, 1]),  # at least one image stays in train
        ([4, 4], 0.0, [0, 0]),
    ],
)
def test_split_indices_counts(counts, fraction, expected):
    targets = [c for c, n in enumerate(counts) for _ in range(n)]
    train, val = split_indices(targets, fraction, seed=0)
    assert sorted(train + val) == list(range(len(targets)))
    assert [sum(targets[i] == c for i in val) for c in range(len(counts))] == expected


def test_pixels_match_manual_pipeline(tmp_path, rgb_file):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (10, 14, 3)).astype(np.uint8)
    rgb_file(tmp_path / "a" / "x.png", array)
    rgb_file(tmp_path / "b" / "y.png", array[::-1])
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    train, val, _ = image_folder(tmp_path, image_size=(6, 8), val_fraction=0, mean=mean, std=std)
    assert len(val) == 0
    x, _ = train[0]
    chw = torch.from_numpy(array).permute(2, 0, 1)
    resized = F.resize(chw, [6, 8], antialias=True).float() / 255
    expected = (resized - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    torch.testing.assert_close(x, expected)


def test_grayscale_and_palette_become_rgb(tmp_path, rgb_file):
    rgb_file(tmp_path / "g" / "gray.png", np.full((8, 8), 200))
    Image.fromarray(np.zeros((8, 8), np.uint8)).convert("P").save(tmp_path / "g" / "pal.png")
    rgb_file(tmp_path / "h" / "rgba.png", np.full((8, 8, 4), 100))
    train, _, _ = image_folder(tmp_path, image_size=8, val_fraction=0)
    for i in range(len(train)):
        assert train[i][0].shape == (3, 8, 8)
    index = {p.name: i for i, (p, _) in enumerate(train.samples)}
    gray, pal, rgba = (train.load(index[n]) for n in ("gray.png", "pal.png", "rgba.png"))
    assert gray.dtype == torch.uint8 and (gray == 200).all()
    assert (pal == 0).all() and (rgba == 100).all()


def test_train_val_layout(tmp_path, class_tree):
    class_tree(tmp_path / "train", {"cat": 3, "dog": 2})
    class_tree(tmp_path / "val", {"dog": 1}, seed=1)
    train, val, classes = image_folder(tmp_path, image_size=8, val_fraction=0.5)
    assert classes == ["cat", "dog"]
    assert len(train) == 5 and len(val) == 1 and val.targets == [1]


def test_train_only_layout_is_split(tmp_path, class_tree):
    class_tree(tmp_path / "train", {"a": 5, "b": 5})
    train, val, _ = image_folder(tmp_path, image_size=8, val_fraction=0.4)
    assert Counter(val.targets) == {0: 2, 1: 2} and len(train) == 6


def test_val_with_unknown_class(tmp_path, class_tree):
    class_tree(tmp_path / "train", {"a": 2})
    class_tree(tmp_path / "val", {"zebra": 1})
    with pytest.raises(
        ValueError, match=r"image_folder: .*val' has class folders that train/ lacks: zebra"
    ):
        image_folder(tmp_path, image_size=8)


def test_missing_folder(tmp_path):
    with pytest.raises(ValueError, match=r"image_folder: data folder '.*nope' does not exist"):
        image_folder(tmp_path / "nope", image_size=8)


def test_no_class_folders(tmp_path):
    with pytest.raises(ValueError, match=r"image_folder: no class folders in"):
        image_folder(tmp_path, image_size=8)


def test_empty_class_folder(tmp_path, class_tree):
    class_tree(tmp_path, {"a": 2})
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        ValueError, match=r"image_folder: class folder '.*empty' contains no readable images"
    ):
        image_folder(tmp_path, image_size=8)


def _plant_bad_files(folder):
    png = folder / "ok.png"
    data = png.read_bytes() if png.exists() else None
    (folder / "zero.png").write_bytes(b"")
    assert data is not None
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "text.jpg").write_text("this is not a JPEG")
    return {"zero.png", "truncated.png", "text.jpg"}


def test_bad_files_one_warning_listing_all(tmp_path, class_tree, rgb_file):
    class_tree(tmp_path, {"a": 4, "b": 4}, size=40)
    rgb_file(tmp_path / "a" / "ok.png", np.random.default_rng(1).integers(0, 256, (40, 40, 3)))
    names = _plant_bad_files(tmp_path / "a")
    (tmp_path / "a" / "notes.txt").write_text("ignored silently")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0\1")
    with pytest.warns(BadFilesWarning) as record:
        train, val, _ = image_folder(tmp_path, image_size=8)
    assert len(record) == 1
    warning = record[0].message
    assert {p.rsplit("/", 1)[-1] for p in warning.files} == names
    text = str(warning)
    assert text.startswith("image_folder: skipped 3 unreadable")
    for name in names:
        assert name in text
    assert "zero-byte" in text and "not an image" in text and "truncated" in text.lower()
    assert len(train) + len(val) == 9  # 8 + ok.png
    everything = [p.name for p, _ in train.samples + val.samples]
    assert not set(everything) & (names | {"notes.txt"})


def test_bad_files_strict_raises_naming_them(tmp_path, class_tree, rgb_file):
    class_tree(tmp_path, {"a": 2, "b": 2}, size=40)
    rgb_file(tmp_path / "b" / "ok.png", np.random.default_rng(1).integers(0, 256, (40, 40, 3)))
    names = _plant_bad_files(tmp_path / "b")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(
            ValueError, match=r"image_folder: 3 unreadable or non-image files"
        ) as info:
            image_folder(tmp_path, image_size=8, strict=True)
    for name in names:
        assert name in str(info.value)


def test_unknown_extension_is_reported(tmp_path, class_tree):
    class_tree(tmp_path, {"a": 2})
    (tmp_path / "a" / "report.docx").write_bytes(b"PK")
    with pytest.warns(BadFilesWarning, match=r"report.docx \(unsupported extension '.docx'\)"):
        image_folder(tmp_path, image_size=8)


def test_hidden_folders_are_not_classes(tmp_path, class_tree):
    class_tree(tmp_path, {"a": 2, "b": 2, ".ipynb_checkpoints": 1})
    _, _, classes = image_folder(tmp_path, image_size=8)
    assert classes == ["a", "b"]


def test_augmentation_modes(digits_root):
    plain, _, _ = image_folder(digits_root, image_size=16)
    aug, _, _ = image_folder(digits_root, image_size=16, augment=True)
    crop, _, _ = image_folder(digits_root, image_size=16, augment="crop")
    assert plain.deterministic and not aug.deterministic and not crop.deterministic
    assert torch.equal(plain[3][0], plain[3][0])
    torch.manual_seed(0)
    draws = [aug[3][0] for _ in range(4)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    assert all(d.shape == (3, 16, 16) for d in draws)


def test_crop_never_flips():
    # a left-right ramp cropped with scale (0.7, 1) keeps increasing to the right
    from strop.data.transforms import augmentation

    ramp = torch.arange(32, dtype=torch.uint8).repeat(3, 32, 1) * 8
    crop = augmentation("t", "crop", (32, 32))
    torch.manual_seed(0)
    for _ in range(20):
        out = crop(ramp).float()
        assert (out[0, :, -1] >= out[0, :, 0]).all()


def test_custom_augment_callable(tmp_path, class_tree):
    class_tree(tmp_path, {"a": 2})
    train, _val, _ = image_folder(
        tmp_path, image_size=8, val_fraction=0, augment=lambda img: img * 0
    )
    assert not train.deterministic
    x, _ = train[0]
    torch.testing.assert_close(x[0], torch.full((8, 8), -IMAGENET_MEAN[0] / IMAGENET_STD[0]))


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"image_size": 0}, ValueError, "image_size must be positive"),
        ({"image_size": "64"}, TypeError, "image_size must be an int"),
        (
            {"image_size": 8, "val_fraction": 1.0},
            ValueError,
            r"val_fraction must be in \[0, 1\); got 1.0",
        ),
        ({"image_size": 8, "mean": (0.5, 0.5)}, ValueError, "mean must be 3 numbers"),
        ({"image_size": 8, "std": (1, 0, 1)}, ValueError, "std must be > 0"),
        ({"image_size": 8, "augment": "flipp"}, ValueError, "augment must be one of"),
        ({"image_size": 8, "cache": 3}, TypeError, "cache must be None, 'memory', 'disk'"),
    ],
)
def test_bad_arguments(tmp_path, class_tree, kwargs, exc, match):
    class_tree(tmp_path, {"a": 2})
    with pytest.raises(exc, match=f"image_folder: {match}"):
        image_folder(tmp_path, **kwargs)


def test_normalization_equals_v2_compose():
    from torchvision.transforms import v2

    from strop.data.transforms import normalization

    image = torch.randint(0, 256, (3, 9, 7), dtype=torch.uint8)
    reference = v2.Compose(
        [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    assert torch.equal(normalization(IMAGENET_MEAN, IMAGENET_STD)(image), reference(image))


def test_load_image_tensor_equals_val_item(tmp_path, class_tree):
    from strop.data import load_image_tensor

    class_tree(tmp_path, {"a": 2, "b": 2}, size=20)
    _, val, _ = image_folder(tmp_path, image_size=(12, 10), val_fraction=0.5)
    path = val.samples[0][0]
    assert torch.equal(load_image_tensor(path, image_size=(12, 10)), val[0][0])
    with pytest.raises(
        ValueError, match=r"load_image_tensor: image '.*missing.png' does not exist"
    ):
        load_image_tensor(tmp_path / "missing.png", image_size=8)
    (tmp_path / "bad.png").write_text("no")
    with pytest.raises(ValueError, match=r"load_image_tensor: cannot decode '.*bad.png'"):
        load_image_tensor(tmp_path / "bad.png", image_size=8)
