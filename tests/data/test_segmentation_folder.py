"""segmentation_folder: masks, num_classes, nearest resize, ignore_index, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from strop.data import BadFilesWarning, segmentation_folder, write_shapes


def _pair(root, stem, image, mask, mask_ext=".png"):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(root / "images" / f"{stem}.png")
    Image.fromarray(np.asarray(mask, dtype=np.uint8)).save(root / "masks" / f"{stem}{mask_ext}")


def _simple(root, masks, size=(8, 8)):
    rng = np.random.default_rng(0)
    for i, m in enumerate(masks):
        _pair(root, f"{i:02d}", rng.integers(0, 256, (*size, 3)), m)
    return root


def test_shapes_read_back_multiclass(shapes_root):
    train, val, num_classes = segmentation_folder(shapes_root, image_size=24)
    assert num_classes == 4 and len(train) == 24 and len(val) == 6
    x, m = train[0]
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32
    assert m.shape == (24, 24) and m.dtype == torch.int64
    values = torch.cat([train[i][1].flatten() for i in range(len(train))]).unique()
    assert set(values.tolist()) <= {0, 1, 2, 3} and 0 in values.tolist()
    assert train.deterministic and train.num_classes == 4


def test_split_deterministic(shapes_root):
    a, av, _ = segmentation_folder(shapes_root, image_size=8, seed=3)
    b, bv, _ = segmentation_folder(shapes_root, image_size=8, seed=3)
    _c, cv, _ = segmentation_folder(shapes_root, image_size=8, seed=4)
    assert a.samples == b.samples and av.samples == bv.samples and av.samples != cv.samples
    assert not set(a.samples) & set(av.samples)


def test_binary_shapes_infer_two_classes(tmp_path):
    root = write_shapes(tmp_path, n=6, size=16, num_classes=2)
    train, _, k = segmentation_folder(root, image_size=16, val_fraction=0)
    assert k == 2
    assert set(torch.cat([train[i][1].flatten() for i in range(6)]).unique().tolist()) == {0, 1}


def test_resize_keeps_mask_integer_and_nearest(tmp_path):
    mask = np.zeros((10, 10), np.uint8)
    mask[:, 5:] = 3
    mask[0, 0] = 255  # ignore_index, kept
    mask[4:6, 2:4] = 1
    _simple(tmp_path, [mask], size=(10, 10))
    train, _, k = segmentation_folder(tmp_path, image_size=5, val_fraction=0)
    assert k == 4
    _, m = train[0]
    # NEAREST_EXACT at scale 2 picks source pixel 2*i + 1 (pixel centres)
    expected = torch.from_numpy(mask[1::2, 1::2].astype(np.int64))
    assert torch.equal(m, expected)
    _, up = segmentation_folder(tmp_path, image_size=20, val_fraction=0)[0][0]
    assert set(up.unique().tolist()) == {0, 1, 3, 255}
    assert torch.equal(up[::2, ::2], torch.from_numpy(mask.astype(np.int64)))


def test_ignore_index_kept_and_not_counted(tmp_path):
    _simple(tmp_path, [[[0, 1], [255, 2]], [[2, 2], [0, 255]]], size=(2, 2))
    train, _, k = segmentation_folder(tmp_path, image_size=2, val_fraction=0)
    assert k == 3
    assert train[0][1].tolist() == [[0, 1], [255, 2]]


def test_values_out_of_range_name_the_file(tmp_path):
    _simple(tmp_path, [[[0, 1], [1, 0]], [[0, 7], [1, 0]]], size=(2, 2))
    with pytest.raises(
        ValueError, match=r"segmentation_folder: mask values must be in 0..2 .*01.png' has \[7\]"
    ):
        segmentation_folder(tmp_path, image_size=2, num_classes=3)


def test_zero_255_masks_are_caught(tmp_path):
    _simple(tmp_path, [[[0, 255], [255, 0]]] * 2, size=(2, 2))
    with pytest.raises(
        ValueError, match=r"masks hold no foreground.*ignore_index=255 .*found 0, 255"
    ):
        segmentation_folder(tmp_path, image_size=2)
    # with another ignore_index, 255 is a class
    _, _, k = segmentation_folder(tmp_path, image_size=2, ignore_index=None, val_fraction=0)
    assert k == 256


def test_mismatched_mask_size_names_both(tmp_path):
    _simple(tmp_path, [np.zeros((8, 8))], size=(8, 8))
    _pair(tmp_path, "big", np.zeros((8, 8, 3)), np.ones((6, 8)))
    with pytest.raises(
        ValueError, match=r"differ in size .*images/big.png' is 8x8 but '.*masks/big.png' is 8x6"
    ):
        segmentation_folder(tmp_path, image_size=8)


def test_unmatched_files_listed(tmp_path):
    _simple(tmp_path, [np.ones((4, 4))] * 2, size=(4, 4))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / "lonely.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "masks" / "orphan.png")
    with pytest.raises(
        ValueError,
        match=r"1 image\(s\) without a mask: images/lonely.png; 1 mask\(s\) without an image: masks/orphan.png",
    ):
        segmentation_folder(tmp_path, image_size=4)


def test_missing_masks_folder(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match=r"segmentation_folder: folder '.*masks' does not exist"):
        segmentation_folder(tmp_path, image_size=4)


def test_colour_and_jpeg_masks_rejected(tmp_path):
    _simple(tmp_path, [np.ones((4, 4))], size=(4, 4))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "masks" / "00.png")
    with pytest.raises(
        ValueError,
        match=r"segmentation_folder: mask .*00.png' must be a single-channel image .*got mode 'RGB'",
    ):
        segmentation_folder(tmp_path, image_size=4)
    other = tmp_path / "jpeg"
    _pair(other, "a", np.zeros((4, 4, 3)), np.ones((4, 4)), mask_ext=".jpg")
    with pytest.raises(ValueError, match=r"masks must be stored losslessly"):
        segmentation_folder(other, image_size=4)


def test_bad_mask_skips_pair_with_warning(tmp_path):
    _simple(tmp_path, [np.ones((4, 4))] * 3, size=(4, 4))
    (tmp_path / "masks" / "01.png").write_bytes(b"")
    with pytest.warns(
        BadFilesWarning, match=r"skipped 1 unreadable .*masks/01.png \(zero-byte file\)"
    ):
        train, _val, _ = segmentation_folder(tmp_path, image_size=4, val_fraction=0)
    assert [p.name for p, _ in train.samples] == ["00.png", "02.png"]
    with pytest.raises(ValueError, match=r"segmentation_folder: 1 unreadable .*01.png"):
        segmentation_folder(tmp_path, image_size=4, strict=True)


def test_train_val_layout(tmp_path):
    _simple(tmp_path / "train", [np.ones((4, 4))] * 3, size=(4, 4))
    _simple(tmp_path / "val", [np.ones((4, 4))], size=(4, 4))
    train, val, _ = segmentation_folder(tmp_path, image_size=4)
    assert len(train) == 3 and len(val) == 1


def test_augmentation_moves_image_and_mask_together(tmp_path):
    # the mask is the image's red channel thresholded: any joint crop/flip keeps them aligned
    rng = np.random.default_rng(0)
    for i in range(2):
        mask = (rng.random((16, 16)) > 0.5).astype(np.uint8)
        mask[:, :8] = 0  # asymmetric, so a flip is visible
        mask[0, 0] = 1
        image = np.repeat((mask * 255)[..., None], 3, axis=2)
        _pair(tmp_path, f"{i}", image, mask)
    train, _, _ = segmentation_folder(
        tmp_path, image_size=16, val_fraction=0, augment=True, mean=(0, 0, 0), std=(1, 1, 1)
    )
    assert not train.deterministic
    torch.manual_seed(0)
    changed = False
    for _ in range(10):
        x, m = train[0]
        assert m.dtype == torch.int64 and set(m.unique().tolist()) <= {0, 1}
        # bilinear on the image vs nearest on the mask may disagree only at edges
        agree = ((x[0] > 0.5).long() == m).float().mean()
        assert agree > 0.8
        changed |= not torch.equal(m, train.load(0)[1].long())
    assert changed
