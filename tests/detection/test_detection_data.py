"""Detection data: three formats read to the same boxes, hand-computed conversions, bad input."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from strop.data.detection import (
    DetectionDataset,
    DroppedBoxesWarning,
    detect_format,
    detection_collate,
    detection_folder,
    detection_transforms,
    read_detection,
)
from strop.data.shapes_detection import SHAPE_CLASSES, write_shapes_detection
from strop.losses import box_iou


def _image(path, w=40, h=20):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)


def _coco(root, anns, images=None, cats=None):
    _image(root / "images" / "a.png")
    images = (
        images
        if images is not None
        else [{"id": 1, "file_name": "a.png", "height": 20, "width": 40}]
    )
    cats = cats if cats is not None else [{"id": 1, "name": "cat"}, {"id": 7, "name": "dog"}]
    (root / "annotations.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )
    return root


def _one_line(exc_info):
    text = str(exc_info.value)
    assert "\n" not in text and "Hint:" in text
    return text


# ------------------------------------------------------------------ hand-computed conversions
def test_coco_xywh_and_gapped_category_ids(tmp_path):
    root = _coco(
        tmp_path,
        [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 5]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "iscrowd": 1},
        ],
    )
    records, names, cats = read_detection(root)
    assert names == ["cat", "dog"] and cats == {1: "cat", 7: "dog"}
    assert records[0].boxes == ((2.0, 3.0, 12.0, 8.0), (0.0, 0.0, 4.0, 4.0))
    assert records[0].labels == (1, 0) and records[0].crowd == (False, True)


def test_yolo_normalised_centre_size(tmp_path):
    _image(tmp_path / "images" / "a.png")  # 40 wide, 20 high
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("1 0.5 0.5 0.5 0.25\n\n")
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    records, names, _ = read_detection(tmp_path)
    # cx=20, cy=10, w=20, h=5 -> (10, 7.5, 30, 12.5)
    assert detect_format(tmp_path) == "yolo" and names == ["cat", "dog"]
    assert records[0].boxes == ((10.0, 7.5, 30.0, 12.5),) and records[0].labels == (1,)


def test_voc_one_based_inclusive_and_clipping(tmp_path):
    _image(tmp_path / "JPEGImages" / "a.png")
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.png</filename>"
        "<object><name>dog</name><difficult>1</difficult><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>20</ymax></bndbox></object>"
        "<object><name>cat</name><bndbox><xmin>31</xmin><ymin>1</ymin><xmax>50</xmax><ymax>5</ymax></bndbox></object>"
        "</annotation>"
    )
    records, names, _ = read_detection(tmp_path)
    assert names == ["cat", "dog"]
    # VOC pixel 1..10 is [0, 10); a box past the right edge (40) is clipped
    assert records[0].boxes == ((0.0, 1.0, 10.0, 20.0), (30.0, 0.0, 40.0, 5.0))
    assert records[0].labels == (1, 0) and records[0].crowd == (True, False)


@pytest.mark.parametrize("fmt", ["yolo", "voc"])
def test_the_three_formats_read_to_the_same_boxes(tmp_path, fmt):
    coco = detection_folder(write_shapes_detection(tmp_path / "coco", n_train=12, n_val=4, size=48))
    other = detection_folder(
        write_shapes_detection(tmp_path / fmt, n_train=12, n_val=4, size=48, format=fmt)
    )
    assert coco[2] == other[2] == list(SHAPE_CLASSES)
    for split in (0, 1):
        for a, b in zip(coco[split], other[split], strict=True):
            assert a.labels == b.labels
            assert np.allclose(
                np.array(a.boxes).reshape(-1, 4), np.array(b.boxes).reshape(-1, 4), atol=1e-4
            )


def test_bundled_set_has_overlaps_tiny_boxes_and_negatives(tmp_path):
    train, _, names = detection_folder(
        write_shapes_detection(tmp_path, n_train=60, n_val=10, size=64)
    )
    counts = [len(r.boxes) for r in train]
    assert 0 in counts and max(counts) >= 3 and len(names) == 3
    sides = [min(b[2] - b[0], b[3] - b[1]) for r in train for b in r.boxes]
    assert min(sides) <= 7  # tiny shapes
    overlaps = [
        float(box_iou(torch.tensor(r.boxes), torch.tensor(r.boxes)).fill_diagonal_(0).max())
        for r in train
        if len(r.boxes) > 1
    ]
    assert max(overlaps) > 0.05
    for r in train:
        assert all(0 <= b[0] < b[2] <= 64 and 0 <= b[1] < b[3] <= 64 for b in r.boxes)
    # same parameters: the files are reused, not rewritten
    assert write_shapes_detection(tmp_path, n_train=60, n_val=10, size=64) == tmp_path
    with pytest.raises(ValueError, match="holds another data set"):
        write_shapes_detection(tmp_path, n_train=61, n_val=10, size=64)


# ------------------------------------------------------------------------------ the dataset
def test_dataset_targets_resize_and_negatives(tmp_path):
    root = _coco(
        tmp_path,
        [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 5]}],
        images=[
            {"id": 1, "file_name": "a.png", "height": 20, "width": 40},
            {"id": 2, "file_name": "b.png", "height": 20, "width": 40},
        ],
    )
    _image(tmp_path / "images" / "b.png")
    records, names, _ = read_detection(root)
    ds = DetectionDataset(records, names, detection_transforms(False, image_size=80))
    (x, t), (_, t2) = ds[0], ds[1]
    assert x.shape == (3, 40, 80) and x.dtype == torch.float32 and float(x.max()) <= 1
    assert torch.equal(
        t["boxes"].as_subclass(torch.Tensor), torch.tensor([[4.0, 6.0, 24.0, 16.0]])
    )  # x2 scale
    assert (
        t["labels"].tolist() == [1] and t2["boxes"].shape == (0, 4) and t2["labels"].shape == (0,)
    )
    images, targets = detection_collate([ds[0], ds[1]])
    assert len(images) == 2 and targets[1]["image_id"] == 1


def test_random_augmentation_keeps_valid_boxes(tmp_path):
    train, _, names = detection_folder(
        write_shapes_detection(tmp_path, n_train=8, n_val=2, size=48)
    )
    torch.manual_seed(0)
    for augment in ("flip", "photometric", "ssd"):
        ds = DetectionDataset(train, names, detection_transforms(True, augment=augment))
        for i in range(len(ds)):
            x, t = ds[i]
            b = t["boxes"].as_subclass(torch.Tensor)
            h, w = x.shape[1:]
            assert len(b) == len(t["labels"]) == len(t["iscrowd"])
            assert ((b[:, 2] - b[:, 0]) >= 1).all() and ((b[:, 3] - b[:, 1]) >= 1).all()
            assert (b[:, :2] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()


def test_flip_moves_boxes_with_the_image(tmp_path):
    root = _coco(tmp_path, [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 5]}])
    records, names, _ = read_detection(root)
    ds = DetectionDataset(records, names, detection_transforms(True, augment="flip"))
    seen = set()
    for seed in range(8):
        torch.manual_seed(seed)
        seen.add(tuple(ds[0][1]["boxes"].as_subclass(torch.Tensor)[0].tolist()))
    assert seen == {(2.0, 3.0, 12.0, 8.0), (28.0, 3.0, 38.0, 8.0)}  # x -> 40 - x


# ------------------------------------------------------------------------------ bad input
def test_unknown_layout_and_format(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(
        ValueError, match=r"detect_format: '.*' matches no detection layout; it holds notes.txt"
    ) as e:
        read_detection(tmp_path)
    assert "format='coco'|'yolo'|'voc'" in _one_line(e)
    with pytest.raises(
        ValueError,
        match=r"read_detection: format must be one of 'auto', 'coco', 'yolo', 'voc'; got 'xml'",
    ):
        read_detection(tmp_path, format="xml")


def test_missing_image(tmp_path):
    root = _coco(
        tmp_path, [], images=[{"id": 3, "file_name": "gone.png", "height": 20, "width": 40}]
    )
    with pytest.raises(
        ValueError,
        match=r"annotations.json' image id 3 \('gone.png'\): the image '.*gone.png' does not exist",
    ) as e:
        read_detection(root)
    _one_line(e)


def test_class_id_out_of_range(tmp_path):
    root = _coco(tmp_path, [{"id": 5, "image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1]}])
    with pytest.raises(
        ValueError,
        match=r"annotation id 5 \(image id 1\): category_id 3 is out of range; categories are \[1, 7\]",
    ) as e:
        read_detection(root)
    _one_line(e)
    _image(tmp_path / "y" / "images" / "a.png")
    (tmp_path / "y" / "labels").mkdir()
    (tmp_path / "y" / "labels" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n2 0.5 0.5 0.1 0.1\n")
    (tmp_path / "y" / "classes.txt").write_text("cat\ndog\n")
    with pytest.raises(
        ValueError,
        match=r"a.txt' line 2: class id 2 is out of range; expected \[0, 1\] \(2 names\)",
    ) as e:
        read_detection(tmp_path / "y")
    _one_line(e)


def test_inverted_and_nan_boxes_are_refused(tmp_path):
    root = _coco(tmp_path, [{"id": 9, "image_id": 1, "category_id": 1, "bbox": [10, 0, -4, 5]}])
    with pytest.raises(
        ValueError,
        match=r"annotation id 9 \(image id 1\): box has x2 < x1 or y2 < y1: .* = \[10.0, 0.0, 6.0, 5.0\]",
    ) as e:
        read_detection(root)
    assert "width, height >= 0" in _one_line(e)
    _coco(tmp_path, [{"id": 9, "image_id": 1, "category_id": 1, "bbox": [float("nan"), 0, 4, 5]}])
    with pytest.raises(ValueError, match=r"annotation id 9 .* NaN or infinite"):
        read_detection(root)


def test_degenerate_boxes_dropped_with_one_warning_naming_them(tmp_path):
    root = _coco(
        tmp_path,
        [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 0, 5]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 2, 3, 3]},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3]},
        ],
    )
    with pytest.warns(
        DroppedBoxesWarning, match=r"dropped 2 box\(es\).*annotation id 1 .*annotation id 2 "
    ):
        records, _, _ = read_detection(root)
    assert records[0].boxes == ((1.0, 1.0, 4.0, 4.0),)


def test_empty_annotations_file(tmp_path):
    _image(tmp_path / "images" / "a.png")
    (tmp_path / "annotations.json").write_text("")
    with pytest.raises(ValueError, match=r"read_detection: '.*annotations.json' is empty") as e:
        read_detection(tmp_path)
    _one_line(e)
    (tmp_path / "annotations.json").write_text("{}")
    with pytest.raises(ValueError, match=r"has no images or no categories"):
        read_detection(tmp_path)


def test_mismatched_categories_across_splits(tmp_path):
    ann = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2]}]
    _coco(tmp_path / "train", ann, cats=[{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}])
    _coco(tmp_path / "val", ann, cats=[{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}])
    with pytest.raises(
        ValueError,
        match=r"detection_folder: categories of '.*train' and '.*val' differ; .*\(2, 'dog'\), \(3, 'dog'\)",
    ) as e:
        detection_folder(tmp_path)
    _one_line(e)


def test_yolo_without_names_uses_one_id_range_for_both_splits(tmp_path):
    for split, line in (("train", "2 0.5 0.5 0.2 0.2\n"), ("val", "0 0.5 0.5 0.2 0.2\n")):
        _image(tmp_path / split / "images" / "a.png")
        (tmp_path / split / "labels").mkdir()
        (tmp_path / split / "labels" / "a.txt").write_text(line)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        train, val, names = detection_folder(tmp_path)
    assert names == ["0", "1", "2"] and train[0].labels == (2,) and val[0].labels == (0,)
    assert any("no classes.txt or data.yaml" in str(w.message) for w in seen)
