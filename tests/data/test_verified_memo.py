"""The verdicts of the image-file check are kept and reused while no file changes (issue 16:
a second run on the same folder does not verify every file again)."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from strop.data import BadFilesWarning, _scan, image_folder


def _folder(root, n=3):
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8 + i, 8), (i * 40, 0, 0)).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("STROP_CACHE", str(folder))
    return folder / "verified"


def _forbid_checks(monkeypatch):
    def boom(path):
        raise AssertionError(f"{path} was verified again")

    monkeypatch.setattr(_scan, "check_image_file", boom)


def test_a_second_scan_of_an_unchanged_folder_reuses_the_verdicts(tmp_path, cache, monkeypatch):
    root = _folder(tmp_path / "data")
    paths = sorted(root.rglob("*.png"))
    first = _scan.validate(paths)
    assert first[0] == {p: (8 + int(p.stem), 8) for p in paths} and first[1] == {}
    (memo,) = cache.glob("*.json")
    assert len(json.loads(memo.read_text())["verdicts"]) == len(paths)
    _forbid_checks(monkeypatch)
    assert _scan.validate(paths) == first
    train, _, classes = image_folder(root, image_size=8, val_fraction=0.0)  # the same check
    assert classes == ["a", "b"] and len(train) == 6


def test_a_file_corrupted_after_the_first_scan_is_caught(tmp_path, cache):
    root = _folder(tmp_path / "data")
    image_folder(root, image_size=8, val_fraction=0.0)
    victim = root / "b" / "1.png"
    st = victim.stat()
    victim.write_bytes(b"\0" * st.st_size)  # the same size: only the time tells
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with pytest.warns(BadFilesWarning, match=r"b/1\.png \(not an image\)"):
        train, _, _ = image_folder(root, image_size=8, val_fraction=0.0)
    assert len(train) == 5


def test_a_new_file_or_a_new_bomb_limit_means_a_new_check(tmp_path, cache, monkeypatch):
    root = _folder(tmp_path / "data")
    paths = sorted(root.rglob("*.png"))
    _scan.validate(paths)
    Image.new("L", (9, 9)).save(root / "a" / "new.png")
    good, bad = _scan.validate(sorted(root.rglob("*.png")))
    assert good[root / "a" / "new.png"] == (9, 9) and not bad
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)  # 8x8 = 64 px > 2 x 20: now bombs
    good, bad = _scan.validate(paths)
    assert not good and all("decompression bomb" in why for why in bad.values())


def test_bad_verdicts_are_kept_too_and_reuse_false_checks_again(tmp_path, cache, monkeypatch):
    root = _folder(tmp_path / "data")
    (root / "a" / "junk.png").write_text("not a png")
    paths = sorted(root.rglob("*.png"))
    first = _scan.validate(paths)
    assert first[1] == {root / "a" / "junk.png": "not an image"}
    calls = []
    real = _scan.check_image_file
    monkeypatch.setattr(_scan, "check_image_file", lambda p: calls.append(p) or real(p))
    assert _scan.validate(paths) == first and calls == []
    assert _scan.validate(paths, reuse=False) == first and len(calls) == len(paths)


@pytest.mark.parametrize("damage", ["garbage", "other stamp", "short"])
def test_a_damaged_memo_is_ignored(tmp_path, cache, damage):
    root = _folder(tmp_path / "data")
    paths = sorted(root.rglob("*.png"))
    first = _scan.validate(paths)
    (memo,) = cache.glob("*.json")
    stored = json.loads(memo.read_text())
    if damage == "garbage":
        memo.write_text("{not json")
    elif damage == "other stamp":
        # a forged memo calling every file bad: the stamp does not match, so it is not believed
        memo.write_text(json.dumps({"stamp": "x", "verdicts": [["forged", 0, 0]] * len(paths)}))
    else:
        memo.write_text(json.dumps({"stamp": stored["stamp"], "verdicts": stored["verdicts"][:2]}))
    assert _scan.validate(paths) == first


def test_an_unwritable_cache_folder_only_costs_the_check(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("STROP_CACHE", str(blocker))
    root = _folder(tmp_path / "data")
    paths = sorted(root.rglob("*.png"))
    assert _scan.validate(paths) == _scan.validate(paths, reuse=False)
    assert blocker.read_text().startswith("a file")
