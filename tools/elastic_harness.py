"""SIGKILL harness for elastic 2-process training: kill one worker, let torchrun heal the run.

Usage::

    python tools/elastic_harness.py --kills 20 --seed 0 [--workdir DIR] [--keep] [--json OUT]

What it does:

1. writes four digit classes (10 images each, 16×16) and a tiny 2-process config
   (``squeezenet1_1`` without dropout, SGD + momentum, fp32, gloo, ``num_workers: 0``, global
   batch 8 -> 4 optimizer steps per epoch, 2 epochs, ``checkpoint_every_steps: 1``);
2. runs ``torchrun --standalone --nproc_per_node=2 -m strop train CFG`` once: the reference;
3. for each trial: the same launch with ``--max-restarts=3`` into a fresh folder, and SIGKILLs
   one worker (rank drawn at random) at a seeded random moment — inside a checkpoint write, a
   random delay after the ``n``-th checkpoint, or a random delay after the start — and sometimes
   a worker of the restarted group again. Then nobody does anything: the launch must finish by
   itself (torchrun restarts the group; strop resumes from ``last.pt`` on its own);
4. counts: runs completed unattended / tried, final ``last.pt`` weights ``torch.equal`` to the
   reference / tried, and that every trial's output stayed in its own folder (no ``-2``).

Every process gets ``OMP_NUM_THREADS=1`` (CPU kernels are then deterministic).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ElasticSummary",
    "ElasticTrial",
    "elastic_config",
    "main",
    "run_elastic_harness",
    "workers",
]

MAX_RESTARTS = 3


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0", STROP_DIST_TIMEOUT="60"
    )
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "STROP_DEBUG"):
        env.pop(key, None)
    return env


def elastic_config(data: Path, output: Path) -> Path:
    """Write the harness's 2-process config for a run into ``output``; returns its path."""
    import yaml

    cfg: dict[str, Any] = {
        "data": {
            "root": str(data),
            "image_size": 32,
            "batch_size": 8,
            "val_fraction": 0.2,
            "num_workers": 0,
        },
        "model": {"name": "squeezenet1_1", "dropout": 0.0},
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        "precision": "fp32",
        "memory_format": "contiguous",
        "device": "cpu",
        "feature_cache": "off",
        "epochs": 2,
        "seed": 0,
        "progress": False,
        "checkpoint_every_steps": 1,
        "output": str(output),
    }
    path = output.with_name(output.name + ".yaml")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _launch(cfg: Path, log: Path, *, max_restarts: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        f"--max-restarts={max_restarts}",
        "-m",
        "strop",
        "train",
        str(cfg),
    ]
    with open(log, "wb") as fh:
        return subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=_env(), start_new_session=True
        )


def workers(agent: int) -> dict[int, int]:
    """``{rank: pid}`` of the live worker processes torchrun's agent ``agent`` started."""
    out: dict[int, int] = {}
    try:
        children = Path(f"/proc/{agent}/task/{agent}/children").read_text().split()
    except OSError:
        return out
    for pid in map(int, children):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(b"RANK="):
                out[int(item[5:])] = pid
    return out


@dataclass
class ElasticTrial:
    index: int
    kills: list[str] = field(default_factory=list)  # "rank R at MODE" per SIGKILL delivered
    completed: bool = False  # the launch exited 0 by itself
    weights_equal: bool = False
    own_folder: bool = False  # no FOLDER-2 appeared: the restarts continued the same folder
    restarts_logged: int = 0  # "restarted by torchrun" lines in the log
    seconds: float = 0.0
    detail: str = ""


def _wait_moment(
    proc: subprocess.Popen, last: Path, mode: str, n: int, delay: float, deadline: float
) -> None:
    tmp = last.with_name(last.name + ".tmp")
    t0, seen, present, inode, fired = time.monotonic(), 0, False, None, None
    while proc.poll() is None and time.monotonic() - t0 < deadline:
        now = time.monotonic()
        if mode == "random" and now - t0 >= delay:
            return
        if mode == "write":
            exists = tmp.exists()
            if exists and not present:
                seen += 1
                if seen >= n:
                    return
            present = exists
        elif mode == "step":
            if fired is None:
                try:
                    ino = last.stat().st_ino
                except FileNotFoundError:
                    ino = None
                if ino is not None and ino != inode:
                    inode, seen = ino, seen + 1
                    if seen >= n:
                        fired = now
            elif now - fired >= delay:
                return
        time.sleep(0.0005)


def run_trial(
    data: Path,
    root: Path,
    ref_dir: Path,
    index: int,
    rng: random.Random,
    *,
    t_total: float,
    steps: int,
    kill_again: float = 0.3,
    timeout: float = 900.0,
) -> ElasticTrial:
    import torch

    from strop.train.checkpoint import load_checkpoint

    res = ElasticTrial(index=index)
    out = root / f"trial{index:03d}"
    cfg = elastic_config(data, out)
    log = root / f"trial{index:03d}.log"
    t0 = time.monotonic()
    proc = _launch(cfg, log, max_restarts=MAX_RESTARTS)
    last = out / "checkpoints" / "last.pt"
    modes = ("write", "step", "random")
    for k in range(2):
        if k == 1 and rng.random() >= kill_again:
            break
        mode = modes[(index + k) % 3]
        n, delay = rng.randint(1, steps), rng.uniform(0, 0.5 if mode == "step" else t_total)
        rank = rng.randint(0, 1)
        _wait_moment(proc, last, mode, n if k == 0 else 1, delay, deadline=timeout)
        pid = workers(proc.pid).get(rank)
        if proc.poll() is None and pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
                res.kills.append(f"rank {rank} at {mode}")
            except ProcessLookupError:
                pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        res.detail = "timeout"
    res.seconds = time.monotonic() - t0
    text = log.read_text(errors="replace")
    res.restarts_logged = text.count("restarted by torchrun (TORCHELASTIC_RESTART_COUNT=")
    res.completed = proc.returncode == 0
    res.own_folder = not any(root.glob(f"trial{index:03d}-*"))
    if res.completed:
        a, b = (
            load_checkpoint(last)["model"],
            load_checkpoint(ref_dir / "checkpoints" / "last.pt")["model"],
        )
        diff = [k for k in b if k not in a or not torch.equal(a[k], b[k])]
        res.weights_equal = not diff
        res.detail = res.detail or (f"{len(diff)} tensors differ" if diff else "")
    else:
        res.detail = res.detail or text[-1500:]
    return res


@dataclass
class ElasticSummary:
    kills: int
    trials: int
    completed: int
    weights_equal: int
    own_folder: int
    restarts_logged: int
    reference_seconds: float
    seconds: float
    results: list[ElasticTrial]

    @property
    def ok(self) -> bool:
        return self.trials == self.completed == self.weights_equal == self.own_folder

    def text(self) -> str:
        lines = [
            f"elastic SIGKILLs delivered: {self.kills} over {self.trials} trials (2 processes, gloo, "
            f"torchrun --max-restarts={MAX_RESTARTS})",
            f"  runs completed unattended: {self.completed} / {self.trials}",
            f"  final weights torch.equal to the uninterrupted run: {self.weights_equal} / {self.trials}",
            f"  stayed in their own folder: {self.own_folder} / {self.trials}; "
            f"'restarted by torchrun' lines logged: {self.restarts_logged}",
            f"  time: reference {self.reference_seconds:.1f}s, total {self.seconds:.1f}s",
        ]
        for r in self.results:
            if not (r.completed and r.weights_equal and r.own_folder):
                lines.append(f"  trial {r.index}: kills={r.kills} {r.detail[-600:]}")
        return "\n".join(lines)


def run_elastic_harness(
    kills: int, seed: int = 0, *, workdir: str | Path | None = None, max_trials: int | None = None
) -> ElasticSummary:
    """Deliver at least ``kills`` SIGKILLs (one or two per trial); see the module docstring."""
    from strop.data import write_digits

    t0 = time.monotonic()
    root = Path(workdir or tempfile.mkdtemp(prefix="strop-elastic-"))
    root.mkdir(parents=True, exist_ok=True)
    data = Path(write_digits(root / "digits", digits=[0, 1, 2, 3], per_class=10, seed=0, size=16))
    ref_dir = root / "reference"
    proc = _launch(elastic_config(data, ref_dir), root / "reference.log", max_restarts=0)
    if proc.wait(timeout=900) != 0:
        raise RuntimeError(f"reference failed:\n{(root / 'reference.log').read_text()[-3000:]}")
    t_ref = time.monotonic() - t0
    rng = random.Random(seed)
    results: list[ElasticTrial] = []
    while sum(len(r.kills) for r in results) < kills and (
        max_trials is None or len(results) < max_trials
    ):
        results.append(run_trial(data, root, ref_dir, len(results), rng, t_total=t_ref, steps=8))
        print(f"trial {len(results) - 1}: {asdict(results[-1])}", file=sys.stderr, flush=True)
    return ElasticSummary(
        kills=sum(len(r.kills) for r in results),
        trials=len(results),
        completed=sum(r.completed for r in results),
        weights_equal=sum(r.weights_equal for r in results),
        own_folder=sum(r.own_folder for r in results),
        restarts_logged=sum(r.restarts_logged for r in results),
        reference_seconds=t_ref,
        seconds=time.monotonic() - t0,
        results=results,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None)
    p.add_argument("--max-trials", type=int, default=None)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    workdir = (
        Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="strop-elastic-"))
    )
    summary = run_elastic_harness(
        args.kills, args.seed, workdir=workdir, max_trials=args.max_trials
    )
    print(summary.text())
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(summary), indent=2, default=str))
    if summary.ok and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"work folder: {workdir}")
    return 0 if summary.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
