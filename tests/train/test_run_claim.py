"""fit claims its run folder (issue 17): a second run never touches the first, one folder has one
writer, and a worker restarted by torchrun continues the folder its first attempt chose."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from strop.train.runfolder import LOCK_NAME, RunInUseError

FAST = {"model": {"name": "squeezenet1_1", "dropout": 0.0}, "epochs": 1, "feature_cache": "off"}


@pytest.fixture(autouse=True)
def _no_torchrun(monkeypatch):
    for var in ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(var, raising=False)


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` except the lock (its content is the holder's)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME
    }


def test_a_second_run_leaves_every_file_of_the_first_byte_identical(
    digits_root, tiny_config, tmp_path
):
    from strop.train import fit

    out = tmp_path / "runs" / "x"
    lines: list[str] = []
    first = fit(tiny_config(digits_root, out, **FAST), log=lines.append)
    assert first.run_dir == out
    before = _digest(out)
    assert {
        "config.yaml",
        "run.json",
        "metrics.csv",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    } <= set(before)

    second_lines: list[str] = []
    second = fit(tiny_config(digits_root, out, **FAST, seed=1), log=second_lines.append)
    assert second.run_dir == tmp_path / "runs" / "x-2"
    assert _digest(out) == before  # not one byte of the first run changed
    assert any("already holds a run" in m and "x-2" in m for m in second_lines), second_lines
    assert f"run folder: {second.run_dir}" in second_lines
    # the second run is whole in its own folder, and its config says where it lives
    assert (second.run_dir / "checkpoints" / "last.pt").is_file()
    assert yaml.safe_load((second.run_dir / "config.yaml").read_text())["output"] == str(
        second.run_dir
    )
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 0

    # exist_ok reuses the folder on purpose; resume continues it (nothing numbered is made)
    third = fit(tiny_config(digits_root, out, **FAST, seed=2), exist_ok=True, log=lambda m: None)
    assert third.run_dir == out and _digest(out) != before
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 2
    fourth = fit(
        tiny_config(digits_root, out, **{**FAST, "epochs": 2}), resume=True, log=lines.append
    )
    assert fourth.run_dir == out and any("resumed from" in m for m in lines)
    assert sorted(p.name for p in out.parent.iterdir()) == ["x", "x-2"]


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from strop.train import config_from_dict, fit
    import json

    class Wait:  # hold the folder, mid-training, until the test says go
        def on_batch_end(self, state, logs):
            if state.step == 1:
                Path(sys.argv[2]).write_text("training")
                t0 = time.monotonic()
                while not Path(sys.argv[3]).exists() and time.monotonic() - t0 < 60:
                    time.sleep(0.05)

    fit(config_from_dict(json.loads(sys.argv[1])), callbacks=[Wait()], log=lambda m: None)
    """
)


def test_two_real_processes_into_one_folder_the_second_is_refused(
    digits_root, tiny_config, tmp_path
):
    out = tmp_path / "run"
    cfg = tiny_config(digits_root, out, **FAST)
    cfg_yaml = tmp_path / "cfg.yaml"
    cfg_yaml.write_text(yaml.safe_dump(cfg.to_dict()))
    ready, go = tmp_path / "ready", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, json.dumps(cfg.to_dict()), str(ready), str(go)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        t0 = time.monotonic()
        while not ready.exists():
            assert holder.poll() is None, holder.communicate()[0][-3000:]
            assert time.monotonic() - t0 < 120, "the first process never started training"
            time.sleep(0.1)
        before = _digest(out)
        # a second real process (the CLI), told to reuse the folder: refused, one clear line
        second = subprocess.run(
            [sys.executable, "-m", "strop", "train", str(cfg_yaml), "--exist-ok"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode != 0
        err = second.stderr.strip().splitlines()
        assert len(err) == 1, second.stderr
        assert f"run folder {out} is in use by another strop process (pid {holder.pid}" in err[0]
        assert "Traceback" not in second.stderr
        assert _digest(out) == before  # the refused process wrote nothing
        # and in this process too (the library call raises the same refusal)
        from strop.train import fit

        with pytest.raises(RunInUseError, match="is in use by another strop process"):
            fit(cfg, exist_ok=True, log=lambda m: None)
        go.write_text("go")
        assert holder.wait(timeout=120) == 0
    finally:
        go.write_text("go")
        if holder.poll() is None:
            holder.kill()
        holder.communicate()
    # released on exit: the folder can be resumed now
    from strop.train import fit

    assert fit(cfg.model_copy(update={"epochs": 2}), resume=True, log=lambda m: None).run_dir == out


def test_a_torchrun_restart_with_no_checkpoint_yet_starts_again_in_the_same_folder(
    digits_root, tiny_config, tmp_path, monkeypatch
):
    from strop.train import fit

    out = tmp_path / "run"
    out.mkdir()
    # the first attempt claimed the folder and wrote its config, then died before any checkpoint
    (out / "config.yaml").write_text("seed: 0\n")
    (out / LOCK_NAME).write_text(json.dumps({"pid": 1, "run_id": "launch-7"}))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-7")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    lines: list[str] = []
    result = fit(tiny_config(digits_root, out, **FAST), log=lines.append)
    assert result.run_dir == out  # not out-2: this launch's own folder
    assert not (tmp_path / "run-2").exists()
    assert any("restarted by torchrun" in m and "no checkpoint yet" in m for m in lines), lines
    assert not any("resumed from" in m for m in lines)
    assert len(result.history) == 1
    # a second restart of the same launch now finds last.pt and resumes by itself
    lines.clear()
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    again = fit(tiny_config(digits_root, out, **{**FAST, "epochs": 2}), log=lines.append)
    assert again.run_dir == out
    assert any("resuming from checkpoints/last.pt" in m for m in lines), lines
    assert any("resumed from" in m and "at epoch 2" in m for m in lines), lines
    # another launch (another run id) does not take it over: it goes to a new folder
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-8")
    other = fit(tiny_config(digits_root, out, **FAST), log=lambda m: None)
    assert other.run_dir == tmp_path / "run-2"


def test_cli_flags_reach_torchrun_and_bad_combinations_are_one_line(tmp_path, monkeypatch, capsys):
    from strop.cli import main
    from strop.cli import train as train_cli

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("output: runs/x\n")
    launched = []

    class FakePopen:
        def __init__(self, cmd):
            launched.append(cmd)

        def wait(self):
            return 0

        def send_signal(self, sig):
            pass

    monkeypatch.setattr(train_cli.subprocess, "Popen", FakePopen)
    assert main(["train", str(cfg), "--nproc", "2", "--max-restarts", "3", "--exist-ok"]) == 0
    cmd = launched[0]
    assert cmd[1:6] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "--max-restarts=3",
    ]
    assert cmd[-1] == "--exist-ok" and "--resume" not in cmd
    for args, expected in (
        (["--resume", "--exist-ok"], "--resume and --exist-ok exclude each other"),
        (["--max-restarts", "2"], "--max-restarts needs --nproc N > 1"),
        (
            ["--nproc", "2", "--max-restarts", "-1"],
            "--max-restarts must be a number of restarts >= 0; got -1",
        ),
    ):
        assert main(["train", str(cfg), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    assert len(launched) == 1
