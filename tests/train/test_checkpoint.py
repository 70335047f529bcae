import errno
import random

import pytest
import torch

from strop.train import checkpoint as ckpt
from strop.train.checkpoint import (
    CheckpointError,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)


def test_round_trip_and_version(tmp_path):
    path = save_checkpoint(
        {"model": {"w": torch.arange(3.0)}, "epoch": 2}, tmp_path / "c" / "last.pt"
    )
    data = load_checkpoint(path)
    assert data["format_version"] == ckpt.FORMAT_VERSION and data["epoch"] == 2
    assert torch.equal(data["model"]["w"], torch.arange(3.0))
    assert not (tmp_path / "c" / "last.pt.tmp").exists()


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint({"epoch": 1}, tmp_path / "last.pt")

    def torn_save(obj, fh):
        fh.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", torn_save)
    with pytest.raises(
        CheckpointError,
        match=r"could not write checkpoint .*last.pt: the disk is full; the previous",
    ):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert not path.with_name("last.pt.tmp").exists()


def test_unwritable_target_is_reported(tmp_path):
    # a directory where the file should go: fails even as root
    (tmp_path / "last.pt").mkdir()
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*last.pt"):
        save_checkpoint({"epoch": 1}, tmp_path / "last.pt")


def test_torn_and_foreign_files_are_clear_errors(tmp_path):
    good = save_checkpoint({"epoch": 1, "blob": torch.zeros(10000)}, tmp_path / "good.pt")
    torn = tmp_path / "torn.pt"
    torn.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"could not read checkpoint .*torn.pt"):
        load_checkpoint(torn)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="not a strop checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "created-by-pickle"
    evil = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "x": _Evil(str(marker))}, evil)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="could not read checkpoint"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_newer_format_is_refused(tmp_path):
    p = tmp_path / "new.pt"
    torch.save({"format_version": ckpt.FORMAT_VERSION + 1}, p)
    with pytest.raises(CheckpointError, match="reads up to"):
        load_checkpoint(p)


def test_rng_capture_restore_survives_a_checkpoint(tmp_path):
    torch.manual_seed(1)
    random.seed(1)
    save_checkpoint({"rng": capture_rng()}, tmp_path / "r.pt")
    expected = (torch.rand(3), random.random())
    restore_rng(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]


def test_shared_frozen_tensors_are_written_once_by_hash_and_verified(tmp_path):
    import hashlib

    big = torch.randn(256, 256)  # the "frozen backbone": 256 KiB
    model = {"backbone.w": big, "head.w": torch.ones(2), "head.b": torch.zeros(2)}
    folder = tmp_path / "ck"
    save_checkpoint(
        {"model": dict(model), "epoch": 1}, folder / "last.pt", shared_model_keys={"backbone.w"}
    )
    frozen = sorted(folder.glob("frozen-*.pt"))
    assert len(frozen) == 1
    # named by the sha256 of its bytes
    assert frozen[0].name == f"frozen-{hashlib.sha256(frozen[0].read_bytes()).hexdigest()[:16]}.pt"
    assert (folder / "last.pt").stat().st_size < big.numel() * 4 // 10  # the head only
    stamp = frozen[0].stat().st_mtime_ns
    model["head.w"] = torch.full((2,), 3.0)
    save_checkpoint(
        {"model": dict(model), "epoch": 2}, folder / "last.pt", shared_model_keys={"backbone.w"}
    )
    assert sorted(folder.glob("frozen-*.pt")) == frozen and frozen[0].stat().st_mtime_ns == stamp
    data = load_checkpoint(folder / "last.pt")
    assert list(data["model"]) == ["backbone.w", "head.w", "head.b"] and "model_shared" not in data
    assert torch.equal(data["model"]["backbone.w"], big)
    assert torch.equal(data["model"]["head.w"], torch.full((2,), 3.0)) and data["epoch"] == 2
    # an altered frozen file is refused, naming the file and the hash
    raw = bytearray(frozen[0].read_bytes())
    raw[-10] ^= 0xFF
    frozen[0].write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"frozen-.*does not match the sha256"):
        load_checkpoint(folder / "last.pt")
    frozen[0].unlink()
    with pytest.raises(CheckpointError, match=r"missing .*whole checkpoints/ folder"):
        load_checkpoint(folder / "last.pt")


def test_changed_frozen_tensors_get_a_new_file(tmp_path):
    w = torch.zeros(4)
    save_checkpoint(
        {"model": {"w": w, "h": torch.ones(1)}}, tmp_path / "last.pt", shared_model_keys={"w"}
    )
    w.add_(1.0)  # in place: the version counter moves, so the memo must not reuse the old file
    save_checkpoint(
        {"model": {"w": w, "h": torch.ones(1)}}, tmp_path / "last.pt", shared_model_keys={"w"}
    )
    assert len(list(tmp_path.glob("frozen-*.pt"))) == 2
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["model"]["w"], torch.ones(4))
