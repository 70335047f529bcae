"""Files that go wrong under a run (issue 17): a full disk during a metrics write, last.pt deleted
mid-run, a truncated best.pt given to eval/predict/export. One clear line each; nothing earlier
lost."""

from __future__ import annotations

import errno
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from strop.train import fit, load_checkpoint

FAST = {
    "model": {"name": "squeezenet1_1", "dropout": 0.0},
    "feature_cache": "off",
    "checkpoint_every_steps": 1,
}


class _FullDisk:
    """Stands in for metrics.csv's open file once the disk is full: every write fails (ENOSPC)."""

    def __init__(self, fh):
        self.fh = fh

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self):
        self.fh.close()


class _FillDiskAt:
    def __init__(self, step):
        self.step = step

    def on_batch_end(self, state, logs):
        if state.step == self.step - 1:  # before the row of `step` is written
            from strop.train import callbacks

            for cb in self.cbs:
                if isinstance(cb, callbacks.CSVLogger):
                    cb._fh = _FullDisk(cb._fh)  # rows are buffered: the next flush fails


def test_full_disk_during_a_metrics_write_is_one_line_and_keeps_the_checkpoints(
    digits_root, tiny_config, tmp_path, monkeypatch
):
    from strop.train import trainer

    out = tmp_path / "run"
    filler = _FillDiskAt(3)
    real = trainer._run_callbacks

    def run_callbacks(run):
        filler.cbs = real(run)
        return filler.cbs

    monkeypatch.setattr(trainer, "_run_callbacks", run_callbacks)
    with pytest.raises(OSError) as info:
        fit(tiny_config(digits_root, out, **FAST), callbacks=[filler], log=lambda m: None)
    msg = str(info.value)
    assert f"could not write {out / 'metrics.csv'}" in msg and "No space left on device" in msg, msg
    assert "\n" not in msg
    # nothing earlier lost: the disk filled while step 2's row was still buffered, so step 2's
    # checkpoint was not written (the log must cover it); step 1's is whole, and so is its row
    assert load_checkpoint(out / "checkpoints" / "last.pt")["state"]["step"] == 1
    rows = (out / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[2] for r in rows[1:]] == ["1"]
    # and the run resumes from there once space is back
    monkeypatch.setattr(trainer, "_run_callbacks", real)
    res = fit(tiny_config(digits_root, out, **FAST), resume=True, log=lambda m: None)
    assert load_checkpoint(res.run_dir / "checkpoints" / "last.pt")["state"]["epoch"] == 2


class _DeleteLastAt:
    def __init__(self, path, step):
        self.path, self.step, self.done = path, step, False

    def on_batch_end(self, state, logs):
        if state.step == self.step and not self.done:
            self.done = True
            self.path.unlink()  # someone cleans up the folder while the run trains


def test_last_pt_deleted_mid_run_is_written_again_and_the_run_is_unchanged(
    digits_root, tiny_config, tmp_path
):
    ref = fit(tiny_config(digits_root, tmp_path / "ref", **FAST), log=lambda m: None)
    out = tmp_path / "run"
    deleter = _DeleteLastAt(out / "checkpoints" / "last.pt", 2)
    res = fit(tiny_config(digits_root, out, **FAST), callbacks=[deleter], log=lambda m: None)
    assert deleter.done
    a = load_checkpoint(res.run_dir / "checkpoints" / "last.pt")
    b = load_checkpoint(ref.run_dir / "checkpoints" / "last.pt")
    import torch

    assert a["state"]["step"] == b["state"]["step"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_truncated_best_pt_is_one_line_for_eval_predict_and_export(
    digits_root, tiny_config, tmp_path
):
    out = tmp_path / "run"
    fit(tiny_config(digits_root, out, **{**FAST, "epochs": 1}), log=lambda m: None)
    best = out / "checkpoints" / "best.pt"
    data = best.read_bytes()
    best.write_bytes(data[: len(data) // 2])  # a copy cut off half-way
    last_before = _sha(out / "checkpoints" / "last.pt")
    image = next(Path(digits_root).rglob("*.png"))
    commands = {
        "eval": ["eval", str(out)],
        "predict": ["predict", str(out), str(image)],
        "export": ["export", str(out), "--out", str(tmp_path / "model.safetensors")],
    }
    for name, args in commands.items():
        proc = subprocess.run(
            [sys.executable, "-m", "strop", *args], capture_output=True, text=True, timeout=300
        )
        assert proc.returncode != 0, (name, proc.stdout, proc.stderr)
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln]
        assert len(lines) == 1, (name, proc.stderr)
        assert lines[0].startswith(f"strop {name}: error:") and str(best) in lines[0], (
            name,
            lines[0],
        )
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "model.safetensors").exists()
    assert _sha(out / "checkpoints" / "last.pt") == last_before  # nothing else touched
    shutil.rmtree(out)
