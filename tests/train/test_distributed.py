"""Distributed data-parallel training under torchrun: 2 processes, gloo, CPU (issue 7).

Every run here is a real ``torchrun`` launch in a subprocess with a timeout, so a hang fails the
test instead of hanging CI. The model is squeezenet1_1 with ``model.dropout: 0.0``: no BatchNorm
and no dropout, so a data-parallel step is mathematically the one-process step on the global
batch and weights can be compared across world sizes.

The data: 4 digit classes × 10 images, ``val_fraction: 0.2`` -> 32 training and 8 validation
images. 32 is divisible by the global batch 16 (and 8 by the 2 ranks): ``DistributedSampler``
pads a split that does not divide evenly by repeating items, and a last batch split unevenly
between ranks is averaged per rank, so other sizes would differ from one process by design.

This file is also the worker script for the launches that need a hook inside training
(``torchrun ... test_distributed.py SPEC.json``, see :func:`_driver`): a callback that sends a
real SIGTERM to torchrun, kills its own rank, or makes its rank hang at a chosen step.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

LAUNCH_TIMEOUT_S = 150  # one launch; normally 10-25 s on 2 busy cores
BASE = {
    "data": {"image_size": 32, "batch_size": 16, "val_fraction": 0.2, "num_workers": 0},
    "model": {"name": "squeezenet1_1", "dropout": 0.0},
    "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
    "precision": "fp32",
    "memory_format": "contiguous",
    "device": "cpu",
    "feature_cache": "off",
    "epochs": 2,
    "seed": 0,
    "progress": False,
}
STEPS = 4  # 2 epochs × 32 images / global batch 16
# Same world size, same operations in the same order: bitwise equal. Across world sizes the
# gradient is averaged in another order (two half-batch means, then their mean), so the weights
# agree to float32 rounding amplified over 4 momentum steps.
ACROSS_WORLD_ATOL = 2e-5


# ----------------------------------------------------------------------------- helpers


def _config(root: Path, out: Path, **over: Any) -> dict[str, Any]:
    cfg = json.loads(json.dumps(BASE))
    cfg["data"]["root"] = str(root)
    cfg["output"] = str(out)
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return cfg


def _write_yaml(cfg: dict[str, Any], path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


def _launch(
    cmd: list[str],
    *,
    timeout: float = LAUNCH_TIMEOUT_S,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[int, str, float]:
    """``(returncode, stdout+stderr, seconds)``; the whole process tree is killed on timeout."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        full_env.pop(key, None)  # never inherit a distributed context from the test runner
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(
            f"{' '.join(cmd[:6])} ... did not finish within {timeout}s (hang). Output:\n{out[-4000:]}"
        )
    return proc.returncode, out, time.monotonic() - t0


def _torchrun(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        *args,
    ]


def _run_driver(jobs: list[dict[str, Any]], tmp: Path, **kw: Any) -> tuple[int, str, float]:
    spec = tmp / "spec.json"
    spec.write_text(json.dumps(jobs))
    return _launch(_torchrun(__file__, str(spec)), **kw)


def _fit_here(cfg: dict[str, Any], *, resume: bool = False) -> Any:
    """One-process reference run inside the test process."""
    from strop.train import config_from_dict, fit

    return fit(config_from_dict(cfg), resume=resume, log=lambda msg: None)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from strop.train import load_checkpoint

    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(
        float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point()
    )


def _csv_rows(run: Path) -> list[dict[str, str]]:
    import csv

    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _assert_one_log(run: Path) -> None:
    """Every optimizer step and epoch logged exactly once (two writing ranks would double them)."""
    rows = _csv_rows(run)
    assert [int(r["step"]) for r in rows if r["kind"] == "step"] == list(range(1, STEPS + 1))
    assert [int(r["epoch"]) for r in rows if r["kind"] == "epoch"] == [1, 2]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from strop.data import write_digits

    return write_digits(
        tmp_path_factory.mktemp("ddp_digits"), digits=[0, 1, 2, 3], per_class=10, seed=0, size=16
    )


@pytest.fixture(scope="module")
def one_process(data_root, tmp_path_factory):
    """In-process single-process runs: global batch 16; 8 × accumulation 2; and plain 8."""
    base = tmp_path_factory.mktemp("one")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runs = {
        "b16": _config(data_root, base / "b16"),
        "b8x2": _config(data_root, base / "b8x2", data={"batch_size": 8}, accumulation_steps=2),
        "b8": _config(data_root, base / "b8", data={"batch_size": 8}),
    }
    try:
        results = {name: _fit_here(cfg) for name, cfg in runs.items()}
    finally:
        torch.set_num_threads(threads)
    return {name: (base / name, results[name]) for name in runs}


@pytest.fixture(scope="module")
def two_process(data_root, tmp_path_factory):
    """``strop train CFG --nproc 2``: the convenience launcher, end to end."""
    base = tmp_path_factory.mktemp("two")
    run = base / "runs" / "ddp"
    cfg = _write_yaml(_config(data_root, run), base / "cfg.yaml")
    rc, out, secs = _launch(
        [sys.executable, "-m", "strop", "train", str(cfg), "--nproc", "2"], cwd=base
    )
    assert rc == 0, out[-4000:]
    return run, out, secs


@pytest.fixture(scope="module")
def interrupted_then_resumed(data_root, tmp_path_factory):
    """One launch runs batch 8 × accumulation 2, then a run SIGTERMed at step 3; a second resumes it."""
    base = tmp_path_factory.mktemp("resume")
    acc = _config(data_root, base / "acc", data={"batch_size": 8}, accumulation_steps=2)
    res = _config(data_root, base / "res")
    rc1, out1, secs1 = _run_driver(
        [
            {"config": acc, "report": str(base / "acc.json"), "count_allreduce": True},
            {
                "config": res,
                "report": str(base / "res.json"),
                "action": "sigterm_launcher",
                "rank": 1,
                "step": 3,
            },
        ],
        base,
    )
    after_interrupt = {k: v.clone() for k, v in _weights(base / "res").items()}
    state_at_interrupt = _load(base / "res")["state"]
    cfg = _write_yaml(res, base / "res.yaml")
    rc2, out2, secs2 = _launch(
        [sys.executable, "-m", "strop", "train", str(cfg), "--nproc", "2", "--resume"]
    )
    return {
        "acc": base / "acc",
        "res": base / "res",
        "rc1": rc1,
        "out1": out1,
        "rc2": rc2,
        "out2": out2,
        "seconds": (secs1, secs2),
        "state_at_interrupt": state_at_interrupt,
        "after_interrupt": after_interrupt,
        "reports": {
            n: [json.loads(p.read_text()) for p in sorted(base.glob(f"{n}.json.rank*"))]
            for n in ("acc", "res")
        },
    }


def _load(run: Path) -> dict[str, Any]:
    from strop.train import load_checkpoint

    return load_checkpoint(run / "checkpoints" / "last.pt")


# ----------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_two_processes_write_one_run_equal_to_one_process(two_process, one_process):
    run, out, _ = two_process
    # only rank 0 writes: one run folder, the usual files, nothing half-written
    assert [p.name for p in run.parent.iterdir()] == ["ddp"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert (run / "config.yaml").is_file() and (run / "plots").is_dir()
    _assert_one_log(run)
    assert out.count("best val_accuracy") == 1  # one summary line, from rank 0
    choices = json.loads((run / "run.json").read_text())
    assert (choices["world_size"], choices["backend"], choices["per_process_batch"]) == (
        2,
        "gloo",
        8,
    )

    ref_run, ref = one_process["b16"]
    w2, w1 = _weights(run), _weights(ref_run)
    assert _max_diff(w2, w1) < ACROSS_WORLD_ATOL
    # the tolerance can fail: training moved the weights far more, and global batch 8 is far off
    other_batch_gap = _max_diff(w1, _weights(one_process["b8"][0]))
    assert other_batch_gap > 100 * ACROSS_WORLD_ATOL
    ckpt = _load(run)
    assert ckpt["state"]["step"] == STEPS and ckpt["state"]["epoch"] == 2

    # validation metrics are all-reduced: each rank saw 4 of the 8 images, the log shows all 8
    rows2 = [r for r in _csv_rows(run) if r["kind"] == "epoch"]
    for row2, hist in zip(rows2, ref.history, strict=True):
        assert float(row2["val_loss"]) == pytest.approx(hist["val_loss"], abs=1e-4)
        assert float(row2["val_accuracy"]) == pytest.approx(hist["val_accuracy"], abs=1e-9)
        # train metrics too: summed over both ranks' shards, not rank 0's half
        assert float(row2["train_loss"]) == pytest.approx(hist["train_loss"], abs=1e-4)
        assert float(row2["train_accuracy"]) == pytest.approx(hist["train_accuracy"], abs=1e-9)


@pytest.mark.slow
def test_resume_after_sigterm_to_torchrun_equals_uninterrupted(
    interrupted_then_resumed, two_process
):
    r = interrupted_then_resumed
    # torchrun forwarded SIGTERM to both workers; both stopped after step 3 and rank 0 saved
    assert r["state_at_interrupt"]["step"] == 3, r["out1"][-3000:]
    assert r["state_at_interrupt"]["interrupted"] is not None
    assert {rep["interrupted"] is not None for rep in r["reports"]["res"]} == {True}
    assert len(r["reports"]["res"]) == 2
    assert r["rc2"] == 0, r["out2"][-4000:]
    assert "resumed from" in r["out2"]
    resumed, uninterrupted = _weights(r["res"]), _weights(two_process[0])
    assert _max_diff(resumed, r["after_interrupt"]) > 1e-4  # the resumed launch did train on
    for k in uninterrupted:  # same world size, same operations: bitwise equal
        assert torch.equal(resumed[k], uninterrupted[k]), k
    _assert_one_log(r["res"])
    # the epoch cut by the interrupt logs the same train metrics as the uninterrupted run
    for row_res, row_ref in zip(_csv_rows(r["res"]), _csv_rows(two_process[0]), strict=True):
        for key in ("loss", "train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert row_res[key] == row_ref[key], (row_res, row_ref)


@pytest.mark.slow
def test_global_batch_and_accumulation_do_not_depend_on_process_count(
    interrupted_then_resumed, one_process
):
    r = interrupted_then_resumed
    reports = r["reports"]["acc"]
    assert len(reports) == 2 and {rep["interrupted"] for rep in reports} == {None}
    w16 = _weights(one_process["b16"][0])
    w8x2 = _weights(one_process["b8x2"][0])
    w8x2_ddp = _weights(r["acc"])
    # 8 × 2 accumulated averages the two half-batch gradients: the batch-16 gradient up to rounding
    assert _max_diff(w8x2, w16) < ACROSS_WORLD_ATOL
    # and on 2 processes each rank accumulates 2 × 4 images: still the batch-16 step
    assert _max_diff(w8x2_ddp, w16) < ACROSS_WORLD_ATOL
    assert _max_diff(w8x2_ddp, w8x2) < ACROSS_WORLD_ATOL
    assert json.loads((r["acc"] / "run.json").read_text())["per_process_batch"] == 4
    assert _load(r["acc"])["state"]["step"] == STEPS
    # no_sync(): 8 micro-batches per rank (2 epochs × 4) but one gradient all-reduce per
    # optimizer step, i.e. 8 / accumulation_steps 2 = STEPS rounds (each over all its buckets)
    micro_batches = 2 * (32 // 2) // 4
    for rep in reports:
        assert rep["rounds"] == micro_batches // 2 == STEPS, rep
        assert rep["buckets"] >= rep["rounds"], rep  # DDP rebuilds its buckets after the first step


@pytest.mark.slow
def test_nan_loss_on_one_rank_makes_every_rank_skip_that_step_together(
    data_root, one_process, tmp_path, monkeypatch
):
    from strop.train import trainer

    run = tmp_path / "run"
    cfg = _config(data_root, run, nonfinite="skip")
    # rank 1's second training batch (step 2) has a NaN loss; rank 0's is fine
    rc, out, secs = _run_driver(
        [{"config": cfg, "report": str(tmp_path / "r.json"), "nan_at": {"rank": 1, "call": 2}}],
        tmp_path,
        env={"STROP_DIST_TIMEOUT": "60"},
    )
    assert rc == 0, out[-4000:]
    assert secs < 60, out[-3000:]  # nobody waited for the collective timeout
    ckpt = _load(run)
    assert ckpt["state"]["step"] == STEPS and ckpt["state"]["epoch"] == 2
    assert (
        ckpt["state"]["nonfinite_batches"] == 1
    )  # rank 0 skipped the step it had a finite loss for
    assert "skipped 1 batch(es) with a non-finite loss or gradient" in out
    # the reference: one process, global batch 16, whose step 2 is skipped (the skip of one process)
    monkeypatch.setattr(trainer, "build_run", trainer.build_run)
    _instrument({"nan_at": {"rank": 0, "call": 2}}, {})
    ref = _config(data_root, tmp_path / "ref", nonfinite="skip")
    assert _fit_here(ref).history[-1]["nonfinite_batches"] == 1
    w2, w1 = _weights(run), _weights(tmp_path / "ref")
    assert _max_diff(w2, w1) < ACROSS_WORLD_ATOL
    assert (
        _max_diff(w2, _weights(one_process["b16"][0])) > 100 * ACROSS_WORLD_ATOL
    )  # the skip mattered


def _launch_with_rank1_killed(
    cfg: dict[str, Any], tmp_path: Path, *, step: int, max_restarts: int = 1
) -> tuple[int, str]:
    """``torchrun --max-restarts=N`` of 2 workers training ``cfg``; rank 1 SIGKILLs itself at
    optimizer step ``step`` (of the first attempt only). Returns ``(exit code, output)``; reports
    go to ``tmp_path/r.json.rank*``."""
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            [
                {
                    "config": cfg,
                    "report": str(tmp_path / "r.json"),
                    "action": "sigkill_self",
                    "rank": 1,
                    "step": step,
                }
            ]
        )
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        f"--max-restarts={max_restarts}",
        __file__,
        str(spec),
    ]
    rc, out, _ = _launch(cmd, timeout=2 * LAUNCH_TIMEOUT_S, env={"STROP_DIST_TIMEOUT": "60"})
    return rc, out


@pytest.mark.slow
def test_sigkill_of_one_rank_under_max_restarts_completes_unattended_with_equal_weights(
    data_root, two_process, tmp_path
):
    run = tmp_path / "run"
    cfg = _config(data_root, run, checkpoint_every_steps=1)
    # rank 1 dies at step 4 (mid-epoch 2); last.pt holds step 3; torchrun restarts both workers once
    rc, out = _launch_with_rank1_killed(cfg, tmp_path, step=4)
    assert rc == 0, out[-4000:]
    assert "failed (exitcode: -9) local_rank: 1" in out, out[-3000:]  # torchrun saw the SIGKILL
    assert (
        "restarted by torchrun (TORCHELASTIC_RESTART_COUNT=1): resuming from checkpoints/last.pt"
        in out
    )
    assert "at epoch 2, batch 1, step 3" in out  # resumed mid-epoch from the step-3 checkpoint
    reports = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("r.json.rank*"))]
    assert [(r["restarts"], r["run_dir"], r["interrupted"]) for r in reports] == [
        (1, str(run), None)
    ] * 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("run")] == ["run"]  # no run-2
    resumed, uninterrupted = _weights(run), _weights(two_process[0])
    for k in uninterrupted:  # same world size, same operations: bitwise equal
        assert torch.equal(resumed[k], uninterrupted[k]), k
    _assert_one_log(run)


def test_scale_lr_follows_the_global_batch_not_the_process_count(data_root, tmp_path):
    from strop.train import config_from_dict
    from strop.train.trainer import build_engine_parts

    def lr(**over: Any) -> float:
        cfg = config_from_dict(_config(data_root, tmp_path, **over))
        _, _, opt = build_engine_parts(cfg, 4, torch.device("cpu"), None)
        return opt.param_groups[-1]["lr"]

    assert lr(scale_lr=False) == pytest.approx(0.01)
    # Goyal et al. 2017: lr is given for a global batch of 256; batch 16 × accumulation 2 = 32
    assert lr(scale_lr=True, accumulation_steps=2) == pytest.approx(0.01 * 32 / 256)
    assert lr(scale_lr=True, data={"batch_size": 32}) == pytest.approx(0.01 * 32 / 256)


@pytest.mark.slow
def test_port_in_use_fails_fast_with_a_clear_message(data_root, tmp_path):
    cfg = _write_yaml(_config(data_root, tmp_path / "run"), tmp_path / "cfg.yaml")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        rc, out, secs = _launch(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=1",
                "--nproc_per_node=2",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                "-m",
                "strop",
                "train",
                str(cfg),
            ],
            timeout=90,
        )
    assert rc != 0
    assert "address already in use" in out.lower() and str(port) in out
    assert secs < 60
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_dead_rank_stops_the_others_and_last_checkpoint_stays_valid(
    data_root, two_process, tmp_path
):
    run = tmp_path / "run"
    cfg = _config(data_root, run, checkpoint_every_steps=1)
    rc, out, secs = _run_driver(
        [
            {
                "config": cfg,
                "report": str(tmp_path / "r.json"),
                "action": "sigkill_self",
                "rank": 1,
                "step": 3,
            }
        ],
        tmp_path,
        env={"STROP_DIST_TIMEOUT": "60"},
    )
    assert rc != 0
    assert "Signal 9 (SIGKILL)" in out or "exitcode  : -9" in out, out[-3000:]
    # rank 0 noticed the closed connection (or torchrun stopped it): no waiting for the timeout
    assert secs < 60, out[-3000:]
    assert not list(tmp_path.glob("r.json.rank*"))  # neither rank got to the end
    # rank 1 died after step 3's gradient exchange; rank 0 then failed before saving step 3
    ckpt = _load(run)
    assert ckpt["state"]["step"] == 2
    assert not (run / "checkpoints" / "last.pt.tmp").exists()
    # the checkpoint is a real one: resuming it (here on one process, same global batch)
    # reaches the weights of the uninterrupted 2-process run
    _fit_here({**cfg, "checkpoint_every_steps": None}, resume=True)
    assert _max_diff(_weights(run), _weights(two_process[0])) < ACROSS_WORLD_ATOL


@pytest.mark.slow
def test_hung_rank_times_out_instead_of_hanging(data_root, tmp_path):
    run = tmp_path / "run"
    cfg = _config(data_root, run, checkpoint_every_steps=1, epochs=1)
    rc, out, secs = _run_driver(
        [
            {
                "config": cfg,
                "report": str(tmp_path / "r.json"),
                "action": "hang",
                "rank": 1,
                "step": 2,
            }
        ],
        tmp_path,
        env={"STROP_DIST_TIMEOUT": "4"},
    )
    assert rc != 0
    # rank 0's collective gave up after STROP_DIST_TIMEOUT and said so
    assert "timed out waiting 4000ms" in out.lower(), out[-3000:]
    assert secs < 60, out[-3000:]
    assert _load(run)["state"]["step"] == 1  # saved before the hang, intact


def test_not_distributed_without_torchrun_env(monkeypatch):
    from strop.train.distributed import DistContext, init_from_env

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_from_env(torch.device("cpu"))
    assert ctx == DistContext() and not ctx.enabled and ctx.is_main


def test_timeout_from_argument_env_or_default(monkeypatch):
    from strop.train.distributed import DEFAULT_TIMEOUT_S, resolve_timeout

    monkeypatch.delenv("STROP_DIST_TIMEOUT", raising=False)
    assert resolve_timeout() == DEFAULT_TIMEOUT_S == 300.0
    monkeypatch.setenv("STROP_DIST_TIMEOUT", "12.5")
    assert resolve_timeout() == 12.5
    assert resolve_timeout(3) == 3.0  # the argument wins
    for bad in ("soon", "0", "-1", "inf", "nan"):
        monkeypatch.setenv("STROP_DIST_TIMEOUT", bad)
        with pytest.raises(ValueError, match=r"init_from_env: \$STROP_DIST_TIMEOUT must be .*got"):
            resolve_timeout()
    with pytest.raises(
        TypeError, match="init_from_env: timeout_s must be a number of seconds; got str"
    ):
        resolve_timeout("5")  # type: ignore[arg-type]


def test_partial_torchrun_env_is_a_clear_error(monkeypatch):
    from strop.train.distributed import init_from_env

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(
        ValueError, match=r"init_from_env: \$RANK must be an integer when WORLD_SIZE='2'; got None"
    ):
        init_from_env(torch.device("cpu"))


# ----------------------------------------------------------------------------- worker script


class _Action:
    """At optimizer step ``step`` on rank ``rank``: SIGTERM torchrun, SIGKILL itself, or hang."""

    def __init__(self, kind: str, rank: int, step: int):
        self.kind, self.rank, self.step = kind, rank, step
        self.done = False

    def on_batch_end(self, state: Any, logs: dict[str, float]) -> None:
        if self.done or state.step != self.step or int(os.environ["RANK"]) != self.rank:
            return
        if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
            return  # the fault happens once: the attempt torchrun restarts runs clean
        self.done = True
        if self.kind == "sigkill_self":
            os.kill(os.getpid(), signal.SIGKILL)
        deadline = time.monotonic() + 30
        if self.kind == "sigterm_launcher":
            # as a scheduler preempting the job would: torchrun forwards SIGTERM to every worker.
            # Wait for ours, so the stop lands at this step on both ranks
            os.kill(os.getppid(), signal.SIGTERM)
        # "hang": alive but stuck (rank 0 waits in a collective) until torchrun stops us
        while not state.interrupted and time.monotonic() < deadline:
            time.sleep(0.02)


class _NaNLossAt:
    """A loss that is NaN at its ``call``-th training call (validation runs without grad)."""

    def __init__(self, loss_fn: Any, call: int):
        self.loss_fn, self.call, self.calls = loss_fn, call, 0

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        loss = self.loss_fn(*args, **kwargs)
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.call:
                return loss * float("nan")
        return loss


def _instrument(job: dict[str, Any], counts: dict[str, int]) -> None:
    """Patch the run fit builds: a NaN loss on one rank, and/or a DDP comm hook that counts
    gradient all-reduces (``rounds``: how often bucket 0 was reduced; ``buckets``: all calls)."""
    from strop.train import trainer

    build = trainer.__dict__.setdefault("_unpatched_build_run", trainer.build_run)

    def build_run(*args: Any, **kwargs: Any) -> Any:
        run = build(*args, **kwargs)
        if "nan_at" in job and int(os.environ.get("RANK", "0")) == job["nan_at"]["rank"]:
            run.loss_fn = _NaNLossAt(run.loss_fn, job["nan_at"]["call"])
        if job.get("count_allreduce"):
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

            def hook(process_group, bucket):  # unannotated: DDP checks a hook's annotations
                counts["buckets"] += 1
                counts["rounds"] += bucket.index() == 0
                return allreduce_hook(process_group, bucket)

            run.module.register_comm_hook(None, hook)
        return run

    trainer.build_run = build_run


def _driver(spec_path: str) -> int:
    """Run the jobs in ``spec_path`` in this (torchrun worker) process, one ``fit`` after another."""
    from strop.train import config_from_dict, fit

    torch.set_num_threads(1)
    rank = os.environ.get("RANK", "0")
    for job in json.loads(Path(spec_path).read_text()):
        cbs = [_Action(job["action"], job["rank"], job["step"])] if job.get("action") else []
        counts = {"buckets": 0, "rounds": 0}
        _instrument(job, counts)
        result = fit(
            config_from_dict(job["config"]), resume=job.get("resume", False), callbacks=cbs
        )
        Path(f"{job['report']}.rank{rank}").write_text(
            json.dumps(
                {
                    "interrupted": result.interrupted,
                    "run_dir": str(result.run_dir),
                    **counts,
                    "restarts": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
                }
            )
        )
        if result.interrupted:
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(_driver(sys.argv[1]))
