"""Run folders: a run never overwrites another, and one folder has one writer at a time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from strop.train.runfolder import RunInUseError, claim_run_dir, holds_run

HOLD = textwrap.dedent(
    """
    import sys, time
    from strop.train.runfolder import claim_run_dir
    claim = claim_run_dir(sys.argv[1], exist_ok=True)
    print("held", flush=True)
    time.sleep(60)
    """
)


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    proc.stdout.close()
    assert line == "held"
    return proc


@pytest.fixture(autouse=True)
def _no_torchrun(monkeypatch):
    for var in ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT"):
        monkeypatch.delenv(var, raising=False)


def test_an_empty_or_missing_folder_is_used_as_given(tmp_path):
    with claim_run_dir(tmp_path / "run") as claim:
        assert claim.folder == tmp_path / "run"
        assert claim.note is None
        assert (tmp_path / "run" / ".lock").is_file()


def test_a_folder_holding_a_run_is_not_reused_the_next_number_is(tmp_path):
    base = tmp_path / "run"
    base.mkdir()
    (base / "metrics.csv").write_text("kind,epoch\n")
    (tmp_path / "run-2").mkdir()  # taken (even though empty): numbers only go up
    with claim_run_dir(base) as claim:
        assert claim.folder == tmp_path / "run-3"
        assert "already holds a run" in claim.note and "--exist-ok" in claim.note
    assert (base / "metrics.csv").read_text() == "kind,epoch\n"


def test_exist_ok_and_resume_reuse_the_folder(tmp_path):
    base = tmp_path / "run"
    base.mkdir()
    (base / "run.json").write_text("{}")
    assert holds_run(base)
    with claim_run_dir(base, exist_ok=True) as claim:
        assert claim.folder == base
    with claim_run_dir(base, resume=True) as claim:
        assert claim.folder == base


def test_a_second_process_is_refused_while_the_first_holds_the_folder(tmp_path):
    folder = tmp_path / "run"
    proc = _holder(folder)
    try:
        with pytest.raises(RunInUseError, match=rf"run folder {folder} is in use .*pid {proc.pid}"):
            claim_run_dir(folder, exist_ok=True)
    finally:
        proc.kill()
        proc.wait()


def test_a_sigkilled_holder_leaves_no_stale_lock(tmp_path):
    folder = tmp_path / "run"
    proc = _holder(folder)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (folder / ".lock").exists()  # the file stays, the lock does not
    with claim_run_dir(folder, exist_ok=True) as claim:
        assert json.loads((folder / ".lock").read_text())["pid"] == os.getpid()
        assert claim.folder == folder


def test_the_lock_is_released_on_release(tmp_path):
    claim = claim_run_dir(tmp_path / "run")
    claim.release()
    deadline = time.monotonic() + 5
    with claim_run_dir(tmp_path / "run", exist_ok=True) as again:
        assert again.folder == tmp_path / "run"
    assert time.monotonic() < deadline


def test_a_torchrun_restart_finds_the_folder_its_first_attempt_chose(tmp_path, monkeypatch):
    base = tmp_path / "run"
    base.mkdir()
    (base / "run.json").write_text("{}")  # an older run: the launch below goes to run-2
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-42")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    first = claim_run_dir(base)
    assert first.folder == tmp_path / "run-2"
    (first.folder / "run.json").write_text("{}")
    first.release()  # the worker died
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    with claim_run_dir(base) as again:
        assert again.folder == tmp_path / "run-2"
        assert again.resumed_by_restart
        assert "restarted by torchrun" in again.note
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "another-launch")
    with claim_run_dir(base) as other:  # a new launch never continues someone else's run
        assert other.folder == tmp_path / "run-3"
        assert not other.resumed_by_restart
