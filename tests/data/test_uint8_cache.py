"""The uint8 sample cache: same tensors as the uncached path, shared with workers, persistent."""

from __future__ import annotations

import os

import pytest
import torch

import strop.data.classification as folders  # where ImageFolderDataset decodes
from strop.data import SampleCache, image_folder, make_loader, segmentation_folder


def _items(ds):
    return [ds[i] for i in range(len(ds))]


@pytest.mark.parametrize("cache", ["memory", "dir"])
def test_cached_equals_uncached_bit_exact(digits_root, tmp_path, cache):
    spec = tmp_path / "cache" if cache == "dir" else cache
    plain, plain_val, _ = image_folder(digits_root, image_size=20)
    cached, cached_val, _ = image_folder(digits_root, image_size=20, cache=spec)
    assert cached.cache is not None and cached.cache.filled == 0
    first = _items(cached)  # fills
    assert cached.cache.filled == len(cached)
    second = _items(cached)  # reads
    for (a, ya), (b, yb), (c, yc) in zip(_items(plain), first, second, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c) and ya == yb == yc
    assert all(
        torch.equal(a[0], b[0]) for a, b in zip(_items(plain_val), _items(cached_val), strict=True)
    )


def test_cache_skips_decoding(digits_root, monkeypatch):
    train, _, _ = image_folder(digits_root, image_size=12, cache="memory")
    _items(train)

    def boom(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(folders, "load_image", boom)
    assert len(_items(train)) == len(train)


def test_disk_cache_persists_across_instances(digits_root, tmp_path, monkeypatch):
    where = tmp_path / "c"
    first, _, _ = image_folder(digits_root, image_size=12, cache=where)
    expected = _items(first)
    files = sorted(p.name for p in where.iterdir())
    assert any(f.endswith("-image.npy") for f in files) and any(
        f.endswith("-filled.npy") for f in files
    )
    monkeypatch.setattr(
        folders, "load_image", lambda *a, **k: pytest.fail("decoded although cached on disk")
    )
    again, _, _ = image_folder(digits_root, image_size=12, cache=where)
    assert again.cache.filled == len(again)
    for (a, ya), (b, yb) in zip(expected, _items(again), strict=True):
        assert torch.equal(a, b) and ya == yb


def test_disk_cache_key_changes_with_size_and_files(tmp_path, class_tree):
    root = class_tree(tmp_path / "d", {"a": 3, "b": 3})
    where = tmp_path / "c"
    a, _, _ = image_folder(root, image_size=8, cache=where, val_fraction=0)
    b, _, _ = image_folder(root, image_size=10, cache=where, val_fraction=0)
    assert a.cache.key != b.cache.key
    path = a.samples[0][0]
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a modified file
    c, _, _ = image_folder(root, image_size=8, cache=where, val_fraction=0)
    assert c.cache.key != a.cache.key


def test_disk_cache_shorthand_lives_in_hidden_folder(tmp_path, class_tree):
    root = class_tree(tmp_path, {"a": 2, "b": 2})
    train, _, classes = image_folder(root, image_size=8, cache="disk")
    _items(train)
    assert (root / ".strop_cache").is_dir()
    assert image_folder(root, image_size=8)[2] == classes == ["a", "b"]  # not taken for a class


@pytest.mark.parametrize("where", ["memory", "dir"])
def test_cache_filled_by_workers_is_shared(digits_root, tmp_path, where):
    spec = tmp_path / "c" if where == "dir" else where
    train, _, _ = image_folder(digits_root, image_size=12, cache=spec)
    loader = make_loader(train, batch_size=40, shuffle=True, seed=0, num_workers=2)
    batches = [x for x, _ in loader]
    assert train.cache.filled == len(train)  # written by the workers, seen here
    plain, _, _ = image_folder(digits_root, image_size=12)
    order = torch.cat(
        [x for x, _ in make_loader(plain, batch_size=40, shuffle=True, seed=0, num_workers=0)]
    )
    assert torch.equal(torch.cat(batches), order)


def test_augmentation_still_runs_on_cached_images(digits_root):
    train, _, _ = image_folder(digits_root, image_size=16, augment="crop", cache="memory")
    torch.manual_seed(0)
    a = train[5][0]
    b = train[5][0]  # from the cache now
    assert train.cache.filled == 1 and not torch.equal(a, b)


def test_segmentation_cache_bit_exact(shapes_root, tmp_path):
    plain, _, _ = segmentation_folder(shapes_root, image_size=20)
    cached, _, _ = segmentation_folder(shapes_root, image_size=20, cache=tmp_path / "c")
    _items(cached)
    again, _, _ = segmentation_folder(shapes_root, image_size=20, cache=tmp_path / "c")
    assert again.cache.filled == len(again)
    for (x0, m0), (x1, m1) in zip(_items(plain), _items(again), strict=True):
        assert torch.equal(x0, x1) and torch.equal(m0, m1) and m1.dtype == torch.int64


def test_sample_cache_rejects_wrong_shape(tmp_path):
    cache = SampleCache(2, {"image": ((3, 4, 4), torch.uint8)}, location="memory", key="")
    with pytest.raises(
        ValueError,
        match=r"SampleCache.put: image must be torch.uint8 \(3, 4, 4\); got torch.uint8 \(3, 5, 4\)",
    ):
        cache.put(0, torch.zeros(3, 5, 4, dtype=torch.uint8))
    assert cache.get(0) is None and cache.nbytes() == 2 * 48
