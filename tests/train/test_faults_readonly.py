"""A run folder that turns read-only mid-run (issue 17): during a checkpoint write and during a
metrics write. As root ``chmod`` blocks nothing, so the write fails the way a read-only folder
makes it fail: ``PermissionError(EACCES)`` from ``os.replace`` / the open file. One clear line;
nothing earlier lost. (The full-disk cases are in test_faults_files.py, a folder in the way of
``last.pt.tmp`` in test_crash_safety.py.)"""

from __future__ import annotations

import errno
import os

import pytest

from strop.train import fit, load_checkpoint
from strop.train.checkpoint import CheckpointError

FAST = {
    "model": {"name": "squeezenet1_1", "dropout": 0.0},
    "feature_cache": "off",
    "checkpoint_every_steps": 1,
}


def _denied(*args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied")


class _ReadOnlyAt:
    """From optimizer step ``step`` on, renames in the run folder fail as in a read-only folder."""

    def __init__(self, step, monkeypatch, target):
        self.step, self.mp, self.target = step, monkeypatch, target

    def on_batch_end(self, state, logs):
        if state.step == self.step:
            self.mp.setattr(*self.target, _denied)


def test_read_only_folder_during_a_checkpoint_write_keeps_the_previous_one(
    digits_root, tiny_config, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    ro = _ReadOnlyAt(3, monkeypatch, (os, "replace"))  # after step 2's save, before step 3's
    with pytest.raises(CheckpointError) as info:
        fit(tiny_config(digits_root, out, **FAST), callbacks=[ro], log=lambda m: None)
    monkeypatch.undo()
    msg = str(info.value)
    assert msg == (
        f"could not write checkpoint {out / 'checkpoints' / 'last.pt'}: Permission denied; "
        "the previous checkpoint there (if any) is kept"
    )
    assert load_checkpoint(out / "checkpoints" / "last.pt")["state"]["step"] == 2
    assert not list((out / "checkpoints").glob("*.tmp"))  # the half-written file was removed
    rows = [r.split(",") for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    # nothing earlier lost: the rows of both checkpoints written (and step 3's, flushed by
    # on_checkpoint just before its save failed)
    assert [r[2] for r in rows] == ["1", "2", "3"]


class _ReadOnlyFile:
    """metrics.csv's open file in a folder that became read-only: every write fails (EACCES)."""

    def __init__(self, fh):
        self.fh = fh

    write = flush = staticmethod(_denied)

    def close(self):
        self.fh.close()


def test_read_only_folder_during_a_metrics_write_is_one_line_and_keeps_the_checkpoints(
    digits_root, tiny_config, tmp_path, monkeypatch
):
    from strop.train import callbacks, trainer

    out = tmp_path / "run"
    real = trainer._run_callbacks
    cbs: list = []

    def run_callbacks(run):
        cbs[:] = real(run)
        return cbs

    class At:
        def on_batch_end(self, state, logs):
            if state.step == 2:  # before step 3's row is written
                for cb in cbs:
                    if isinstance(cb, callbacks.CSVLogger):
                        cb._fh = _ReadOnlyFile(cb._fh)

    monkeypatch.setattr(trainer, "_run_callbacks", run_callbacks)
    with pytest.raises(OSError) as info:
        fit(tiny_config(digits_root, out, **FAST), callbacks=[At()], log=lambda m: None)
    msg = str(info.value)
    assert info.value.errno == errno.EACCES
    assert f"could not write {out / 'metrics.csv'}: Permission denied" in msg and "\n" not in msg, (
        msg
    )
    # the failed flush carried step 2's row, so step 2's checkpoint was not written; step 1's is
    step = load_checkpoint(out / "checkpoints" / "last.pt")["state"]["step"]
    assert step == 1
    assert [r.split(",")[2] for r in (out / "metrics.csv").read_text().splitlines()[1:]] == ["1"]
