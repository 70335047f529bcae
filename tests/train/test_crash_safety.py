"""Crash safety of ``strop train``: SIGKILL anywhere, SIGINT/SIGTERM, a full disk, an unwritable
output folder, and crashes between the files a run writes.

The subprocess tests use ``tools/crash_harness.py`` (real ``python -m strop train`` processes,
really killed); ``STROP_KILL_POINTS=N`` raises the number of SIGKILLs (default 2, ~1 minute).
The in-process tests simulate a death at one exact point with an exception the trainer does not
catch, or a failed write with ``/dev/full`` or a small tmpfs.
"""

import errno
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import strop.train.checkpoint as ckpt_mod
import strop.train.trainer as trainer_mod
from strop.cli import main
from strop.train import fit, load_checkpoint, load_config
from strop.train.checkpoint import CheckpointError

ROOT = Path(__file__).resolve().parents[2]


def _load_harness():
    spec = importlib.util.spec_from_file_location(
        "crash_harness", ROOT / "tools" / "crash_harness.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


harness = _load_harness()


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return harness.make_workspace(tmp_path_factory.mktemp("crash"))


@pytest.fixture(scope="module")
def reference(ws):
    """One uninterrupted ``python -m strop train`` run (subprocess)."""
    return harness.run_reference(ws)


@pytest.fixture(scope="module")
def inproc_reference(ws):
    """The same config run once in this process, without step checkpoints."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the autouse one-thread fixture is function-scoped: not active yet
    try:
        out = ws.root / "inproc-reference"
        fit(load_config(ws.config(out, checkpoint_every_steps=None)), log=lambda m: None)
    finally:
        torch.set_num_threads(n)
    return out


def _config(ws, out, **over):
    return load_config(ws.config(out, **over))


def _model(run, which="last"):
    return load_checkpoint(Path(run) / "checkpoints" / f"{which}.pt")["model"]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class _Died(BaseException):
    """Stands for the process dying at this exact point (nothing in strop catches it)."""


# ---------------------------------------------------------------- SIGKILL, SIGINT, SIGTERM


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_gives_the_uninterrupted_weights(ws, reference):
    kills = int(os.environ.get("STROP_KILL_POINTS", "2"))
    summary = harness.run_harness(kills, seed=0, ws=ws, ref=reference)
    print(summary.text())  # the figures, with -s
    assert summary.kill_points == kills
    assert summary.resume_failures == 0 and summary.unreadable_checkpoints == 0, summary.text()
    assert summary.resumes_loaded + summary.resumes_killed_early == summary.resumes, summary.text()
    assert summary.completed == summary.trials == summary.weights_equal, summary.text()
    assert summary.best_equal == summary.trials, summary.text()
    # the first kill of trial 0 waits for last.pt.tmp: at least one kill is inside a write
    assert summary.kills_during_write >= 1, summary.text()


def _wait_for(predicate, proc, timeout=300.0):
    t0 = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(
                f"strop train exited ({proc.returncode}) before the signal was sent"
            )
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for strop train")
        time.sleep(0.002)


@pytest.mark.slow
def test_sigint_then_sigterm_save_state_exit_130_and_resume_exactly(ws, reference):
    out = ws.root / "signals"
    # only epoch ends and signals save; the progress bar tells when epoch 2's batches run
    cfg = ws.config(out, checkpoint_every_steps=None, progress=True)
    last = out / "checkpoints" / "last.pt"
    steps_per_epoch = 6  # 45 training images, batch 8
    saved = []
    for sig, resume in ((signal.SIGINT, False), (signal.SIGTERM, True)):
        if saved and saved[-1]["epoch"] == 2:
            break  # the first signal came during the last validation: nothing left to interrupt
        proc, log = harness.start_train(
            cfg, resume=resume, log_dir=ws.root, tag=f"signal-{sig.name}"
        )
        _wait_for(lambda log=log: "epoch 2/2" in log.read_text(errors="replace"), proc)
        proc.send_signal(sig)
        assert proc.wait(timeout=300) == 128 + sig  # the shell's status: 130 SIGINT, 143 SIGTERM
        text = log.read_text()
        assert f"interrupted by {sig.name}: state saved to {last}; continue with --resume" in text
        assert "Traceback" not in text
        state = load_checkpoint(last)["state"]
        assert state["interrupted"] == sig.name, state  # this checkpoint was written for the signal
        # at the step after the signal, mid-epoch, or (signal during validation) at the epoch end
        assert (state["epoch"] == 1 and state["batch_in_epoch"] > 0) or state["epoch"] == 2, state
        assert state["step"] == state["epoch"] * steps_per_epoch + state["batch_in_epoch"]
        saved.append(state)
    assert saved[-1]["step"] >= saved[0]["step"] > steps_per_epoch
    proc, log = harness.start_train(cfg, resume=True, log_dir=ws.root, tag="signal-final")
    assert proc.wait(timeout=300) == 0, log.read_text()[-2000:]
    cmp = harness.compare_runs(out, reference.run_dir)
    assert cmp["weights_equal"] and cmp["best_equal"], cmp["detail"]


# ------------------------------------------------------------- full disk, unwritable folder


class _DiskWithQuota:
    """A file on a disk with ``room`` bytes left: writes past it fail with ENOSPC, as a full
    disk does (what was written before stays: a torn file)."""

    def __init__(self, path, mode, room):
        self._fh = open(path, mode)  # noqa: SIM115 - closed by __exit__/close
        self._room = room

    def write(self, data):
        if len(data) > self._room:
            self._fh.write(bytes(data[: self._room]))
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


def test_full_disk_is_reported_and_the_previous_checkpoint_kept(
    ws, inproc_reference, monkeypatch, tmp_path
):
    """ENOSPC in the middle of torch.save (which reports it as a RuntimeError, not an OSError)."""
    import builtins

    writes = {"n": 0}

    def open_with_full_disk_after_3(path, mode="r", *args, **kwargs):
        if "w" in mode and str(path).endswith("last.pt.tmp"):
            writes["n"] += 1
            if writes["n"] > 3:
                return _DiskWithQuota(path, mode, room=100_000)
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(ckpt_mod, "open", open_with_full_disk_after_3, raising=False)
    out = tmp_path / "run"
    with pytest.raises(
        CheckpointError,
        match=r"could not write checkpoint .*last\.pt: the disk is full; "
        r"the previous checkpoint there \(if any\) is kept",
    ):
        fit(_config(ws, out), log=lambda m: None)
    monkeypatch.undo()
    assert writes["n"] == 4
    assert load_checkpoint(out / "checkpoints" / "last.pt")["state"]["step"] == 3
    assert not (out / "checkpoints" / "last.pt.tmp").exists()  # the torn file is gone
    fit(_config(ws, out), resume=True, log=lambda m: None)  # room again: the run finishes exactly
    _assert_same(_model(out), _model(inproc_reference))


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    # 40 MB: a few 18.6 MB last.pt writes (old + tmp) fit, last.pt + best.pt + a new tmp do not
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); "
            "test_full_disk_is_reported_and_the_previous_checkpoint_kept covers ENOSPC"
        )
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_really_full_disk_leaves_no_partial_file_and_resumes_exactly(
    ws, inproc_reference, small_tmpfs, tmp_path
):
    out = small_tmpfs / "run"
    with pytest.raises(
        CheckpointError, match=r"could not write checkpoint .*: the disk is full"
    ) as err:
        fit(_config(ws, out), log=lambda m: None)
    assert isinstance(err.value.__cause__, (OSError, RuntimeError))
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if p.suffix == ".tmp") == []  # no half file left
    state = load_checkpoint(ckpts / "last.pt")["state"]
    assert state["step"] > 0
    moved = tmp_path / "moved"  # the user frees space (here: moves the run) and resumes
    shutil.copytree(out, moved)
    (moved / "config.yaml").unlink()
    fit(_config(ws, moved), resume=True, log=lambda m: None)
    _assert_same(_model(moved), _model(inproc_reference))


def test_unwritable_checkpoint_path_mid_run_is_a_one_line_cli_error(
    ws, inproc_reference, tmp_path, capsys
):
    """As root nothing is read-only: a folder where last.pt.tmp must go makes the write fail."""
    out = tmp_path / "run"
    cfg = ws.config(out)

    class BlockAtStep4:
        def on_batch_end(self, state, logs):
            if state.step == 4:  # after step 3's checkpoint, before step 4's
                (out / "checkpoints" / "last.pt.tmp").mkdir()

    real_fit = trainer_mod.fit

    def fit_with_blocker(config, **kw):
        return real_fit(config, callbacks=[BlockAtStep4()], **kw)

    import strop.train

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(strop.train, "fit", fit_with_blocker)
        rc = main(["train", str(cfg)])
    err = capsys.readouterr().err
    assert rc not in (0, 130)
    assert (
        f"strop train: error: could not write checkpoint {out / 'checkpoints' / 'last.pt'}: Is a directory"
        in err
    )
    assert "Traceback" not in err
    assert load_checkpoint(out / "checkpoints" / "last.pt")["state"]["step"] == 3
    (out / "checkpoints" / "last.pt.tmp").rmdir()
    assert main(["train", str(cfg), "--resume"]) == 0
    _assert_same(_model(out), _model(inproc_reference))


def test_output_folder_that_cannot_be_created_is_a_one_line_cli_error(ws, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cfg = ws.config(blocker / "run", path=tmp_path / "cfg.yaml")
    rc = main(["train", str(cfg)])
    err = capsys.readouterr().err
    assert rc not in (0, 130)
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("strop train: error:") and str(blocker / "run") in last_line, err
    assert "Traceback" not in err


# ------------------------------------------------------- crashes between a run's files


def test_a_crash_between_last_and_best_never_leaves_best_behind(ws, tmp_path, monkeypatch):
    """best.pt must never be older than what last.pt says is best."""
    out = tmp_path / "run"
    real_save = trainer_mod.save_checkpoint

    def dies_writing_epoch2_best(payload, path, **kwargs):
        if Path(path).name == "best.pt" and payload.get("epoch") == 2:
            raise _Died
        return real_save(payload, path, **kwargs)

    monkeypatch.setattr(trainer_mod, "save_checkpoint", dies_writing_epoch2_best)
    with pytest.raises(_Died):
        fit(_config(ws, out, checkpoint_every_steps=None), log=lambda m: None)
    monkeypatch.undo()
    res = fit(_config(ws, out, checkpoint_every_steps=None), resume=True, log=lambda m: None)
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    last_state = load_checkpoint(out / "checkpoints" / "last.pt")["state"]
    assert last_state["best_epoch"] == res.best_epoch == 2  # train_loss fell in epoch 2
    assert best["epoch"] == last_state["best_epoch"], "best.pt is from an older epoch than recorded"


def test_metrics_log_covers_every_checkpoint(ws, tmp_path, monkeypatch):
    """When a checkpoint is on disk, so are the log rows of the steps it covers: a SIGKILL then
    (the next resume continues after the checkpoint's step) must not lose them."""
    out = tmp_path / "run"
    real_save = trainer_mod.save_checkpoint
    gaps = []

    def save_then_read_the_log(payload, path, **kwargs):
        written = real_save(payload, path, **kwargs)
        if Path(path).name == "last.pt":
            step = payload["state"]["step"]
            rows = harness.step_rows(out / "metrics.csv")  # a fresh handle: what the disk holds
            if len(rows) != step:
                gaps.append((step, len(rows)))
        return written

    monkeypatch.setattr(trainer_mod, "save_checkpoint", save_then_read_the_log)
    fit(_config(ws, out), log=lambda m: None)
    assert gaps == [], "(checkpoint step, step rows on disk) where rows were missing"


@pytest.mark.parametrize("torn", ["step,2,", "epoch,"])
def test_a_torn_metrics_row_does_not_block_resume(ws, inproc_reference, tmp_path, torn):
    """A SIGKILL while a buffered flush is under way cuts the last row anywhere."""
    out = tmp_path / "run"

    class InterruptMidEpoch2:
        def on_batch_end(self, state, logs):
            if state.epoch == 1 and state.batch_in_epoch == 2:
                state.should_stop, state.interrupted = True, "SIGINT"

    fit(_config(ws, out), callbacks=[InterruptMidEpoch2()], log=lambda m: None)
    with open(out / "metrics.csv", "a") as fh:
        fh.write(torn)
    res = fit(_config(ws, out), resume=True, log=lambda m: None)
    assert [h["epoch"] for h in res.history] == [1.0, 2.0]
    assert len(harness.step_rows(out / "metrics.csv")) == 12
    _assert_same(_model(out), _model(inproc_reference))


# ------------------------------------------------------------- elastic: 2 processes, torchrun restarts


@pytest.mark.slow
def test_elastic_harness_short(tmp_path):
    """``tools/elastic_harness.py`` with STROP_ELASTIC_KILLS SIGKILLs (default 2): every trial's
    launch finishes by itself and its weights are bit for bit the uninterrupted run's."""
    spec = importlib.util.spec_from_file_location(
        "elastic_harness", ROOT / "tools" / "elastic_harness.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    kills = int(os.environ.get("STROP_ELASTIC_KILLS", "2"))
    summary = mod.run_elastic_harness(kills, seed=1, workdir=tmp_path, max_trials=kills + 2)
    assert summary.kills >= kills, summary.text()
    assert summary.ok, summary.text()
    assert summary.completed == summary.weights_equal == summary.trials
