"""SIGKILL harness for ``strop train``: kill it at random moments, resume, compare with a clean run.

Usage::

    python tools/crash_harness.py --kills 30 --seed 0 [--workdir DIR] [--epochs 2] [--keep]

What it does:

1. writes three classes of the bundled digits (20 images each, 16×16) and a tiny config
   (``mobilenet_v3_small`` — small, and its Dropout makes the resume depend on the restored RNG —,
   AdamW + OneCycle, fp32, contiguous, ``num_workers: 0``, ``checkpoint_every_steps: 1`` so that
   many kills land while a checkpoint is being written, best by ``train_loss``);
2. runs ``python -m strop train CFG`` once, uninterrupted: the reference;
3. for each trial: starts the same run in a fresh folder and SIGKILLs it (see :class:`KillPlan`:
   inside a checkpoint write, inside a step, or after a random delay; all draws seeded), then
   restarts it (``--resume`` when ``checkpoints/last.pt`` exists, else from scratch), possibly
   killing it again, until a run completes;
4. checks that the completed run's ``last.pt`` model weights equal the reference bit for bit
   (``torch.equal``), that every resume succeeded, and also compares ``best.pt`` and the per-step
   rows of ``metrics.csv`` (what a user would lose besides the weights).

Every run gets ``OMP_NUM_THREADS=1`` (CPU kernels are then deterministic and identical across
runs). The summary counts kill points tried (SIGKILLs delivered to a live process), kills that left
a ``last.pt.tmp`` behind (they landed inside a checkpoint write), and resumes.

The functions are importable (``tests/train/test_crash_safety.py`` uses them).
"""

from __future__ import annotations

import argparse
import csv
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
    "Summary",
    "TrialResult",
    "Workspace",
    "compare_runs",
    "main",
    "make_workspace",
    "run_harness",
    "run_reference",
    "run_trial",
    "start_train",
    "step_rows",
    "strop_env",
]

STEP_FIELDS = ("epoch", "step", "lr", "loss")  # metrics.csv step-row fields that must not change


def strop_env() -> dict[str, str]:
    """The environment of every ``strop train`` the harness starts: one thread, same everywhere."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    env.pop("STROP_DEBUG", None)  # errors must look as a user sees them
    return env


@dataclass
class Workspace:
    """Where the harness keeps its data, config and runs."""

    root: Path
    data: Path
    epochs: int = 2
    model: str = "mobilenet_v3_small"
    checkpoint_every_steps: int | None = 1

    def config(self, output: Path, *, path: Path | None = None, **over: Any) -> Path:
        """Write the tiny config of a run writing to ``output`` (``over`` replaces top-level
        keys) to ``path`` (default ``output`` + ``.yaml``, beside it); returns ``path``."""
        import yaml

        cfg: dict[str, Any] = {
            "data": {
                "root": str(self.data),
                "image_size": 16,
                "batch_size": 8,
                "val_fraction": 0.25,
                "num_workers": 0,
            },
            "model": {"name": self.model},
            "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 1e-4},
            "schedule": {"name": "onecycle", "max_lr": 0.003},
            # train_loss falls over these epochs, so best.pt is rewritten at the last one too
            "monitor": "train_loss",
            "precision": "fp32",
            "memory_format": "contiguous",
            "feature_cache": "off",
            "epochs": self.epochs,
            "seed": 0,
            "progress": False,
            "checkpoint_every_steps": self.checkpoint_every_steps,
            "output": str(output),
        }
        cfg.update(over)
        path = path or output.with_name(output.name + ".yaml")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path


def make_workspace(
    root: str | Path,
    *,
    epochs: int = 2,
    model: str = "mobilenet_v3_small",
    checkpoint_every_steps: int | None = 1,
) -> Workspace:
    """Create ``root`` with three digit classes (20 images each, 16×16) for the harness runs."""
    from strop.data import write_digits

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    data = write_digits(root / "digits", digits=[0, 1, 2], per_class=20, seed=0, size=16)
    return Workspace(
        root=root,
        data=Path(data),
        epochs=epochs,
        model=model,
        checkpoint_every_steps=checkpoint_every_steps,
    )


def start_train(
    config: Path, *, resume: bool, log_dir: Path, tag: str, exist_ok: bool = False
) -> tuple[subprocess.Popen, Path]:
    """Start ``python -m strop train CONFIG [--resume | --exist-ok]``; stdout+stderr go to
    ``log_dir/tag.log``. ``exist_ok``: a run killed before its first checkpoint starts again in
    its own folder (without it strop would, rightly, go to ``FOLDER-2``)."""
    log = log_dir / f"{tag}.log"
    flag = ["--resume"] if resume else (["--exist-ok"] if exist_ok else [])
    cmd = [sys.executable, "-m", "strop", "train", str(config), *flag]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=strop_env())
    return proc, log


@dataclass
class Reference:
    """The uninterrupted run: its folder and how long its phases took (to place kills)."""

    run_dir: Path
    t_ready: float  # seconds from start until run.json appeared (imports, data, model built)
    t_total: float  # seconds until the process exited
    writes: int  # times last.pt was replaced (one per step with checkpoint_every_steps: 1)
    t_step: float  # mean seconds between two replacements of last.pt


def run_reference(ws: Workspace, *, timeout: float = 600.0) -> Reference:
    """Run the config once without interruption; raises if it fails."""
    run_dir = ws.root / "reference"
    cfg = ws.config(run_dir)
    t0 = time.monotonic()
    proc, log = start_train(cfg, resume=False, log_dir=ws.root, tag="reference")
    t_ready = None
    last = run_dir / "checkpoints" / "last.pt"
    inode, replaced = None, []
    while proc.poll() is None:
        if t_ready is None and (run_dir / "run.json").exists():
            t_ready = time.monotonic() - t0
        ino = _inode(last)
        if ino is not None and ino != inode:
            inode = ino
            replaced.append(time.monotonic() - t0)
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise TimeoutError(f"reference run exceeded {timeout}s; log: {log}")
        time.sleep(0.001)
    t_total = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(
            f"reference run failed (exit {proc.returncode}):\n{log.read_text()[-3000:]}"
        )
    t_step = (replaced[-1] - replaced[0]) / (len(replaced) - 1) if len(replaced) > 1 else 0.1
    return Reference(
        run_dir=run_dir,
        t_ready=t_ready if t_ready is not None else t_total / 2,
        t_total=t_total,
        writes=max(len(replaced), 1),
        t_step=t_step,
    )


@dataclass
class TrialResult:
    """One trial: a run killed one or more times, resumed until it completed."""

    index: int
    kills: int = 0  # SIGKILLs delivered to a live process
    kills_during_write: int = 0  # kills after which checkpoints/last.pt.tmp existed
    kills_before_first_checkpoint: int = 0  # nothing to resume: the next run started fresh
    modes: list[str] = field(default_factory=list)  # "random" or "write" per kill
    resumes: int = 0  # runs started with --resume
    resumes_loaded: int = 0  # of those, the ones that logged "resumed from" (checkpoint read fine)
    resumes_killed_early: int = 0  # the others: SIGKILLed before reading it (during imports)
    failures: list[str] = field(default_factory=list)  # runs that exited non-zero on their own
    unreadable_checkpoints: int = 0  # last.pt present but not loadable after a kill
    completed: bool = False
    weights_equal: bool = False
    best_equal: bool = False
    steps_equal: bool = False
    detail: str = ""


def _checkpoint_readable(path: Path) -> bool:
    from strop.train.checkpoint import load_checkpoint

    try:
        load_checkpoint(path)
    except Exception:
        return False
    return True


def step_rows(path: Path) -> list[tuple[str, ...]]:
    """The ``(epoch, step, lr, loss)`` cells of every ``kind=step`` row of a ``metrics.csv``."""
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [
            tuple(row.get(k) or "" for k in STEP_FIELDS)
            for row in csv.DictReader(fh)
            if row.get("kind") == "step"
        ]


def compare_runs(a: Path, b: Path) -> dict[str, Any]:
    """Compare two run folders: ``last``/``best`` model weights (``torch.equal``) and step rows.

    Returns ``{"weights_equal", "best_equal", "steps_equal", "detail"}``; ``detail`` names the
    first difference.
    """
    import torch

    from strop.train.checkpoint import load_checkpoint

    out: dict[str, Any] = {"detail": ""}
    for which in ("last", "best"):
        sa = load_checkpoint(a / "checkpoints" / f"{which}.pt")["model"]
        sb = load_checkpoint(b / "checkpoints" / f"{which}.pt")["model"]
        diff = [k for k in sa if k not in sb or not torch.equal(sa[k], sb[k])]
        out["weights_equal" if which == "last" else "best_equal"] = (
            not diff and sa.keys() == sb.keys()
        )
        if diff and not out["detail"]:
            out["detail"] = f"{which}.pt differs first at {diff[0]} ({len(diff)} tensors differ)"
    ra, rb = step_rows(a / "metrics.csv"), step_rows(b / "metrics.csv")
    out["steps_equal"] = ra == rb
    if ra != rb and not out["detail"]:
        out["detail"] = f"metrics.csv step rows: {len(ra)} vs {len(rb)} in the reference"
    return out


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


@dataclass
class KillPlan:
    """When to kill: ``mode`` and its parameters (drawn from the harness's seeded RNG).

    - ``"write"``: at the ``n``-th appearance of ``last.pt.tmp`` (inside a checkpoint write);
    - ``"step"``: ``delay`` seconds after ``last.pt`` was replaced for the ``n``-th time (inside
      the next step, its CSV row, or an epoch's validation);
    - ``"random"``: ``delay`` seconds after the start (anywhere: imports, training, teardown).
    """

    mode: str
    n: int = 1
    delay: float = 0.0


def _kill_when(proc: subprocess.Popen, last: Path, plan: KillPlan, *, deadline: float) -> bool:
    """Wait for the moment ``plan`` names and SIGKILL ``proc``; True when it was alive then."""
    tmp = last.with_name(last.name + ".tmp")
    t0 = time.monotonic()
    seen, present, inode, fired_at = 0, False, _inode(last), None
    while proc.poll() is None:
        now = time.monotonic()
        if now - t0 > deadline:
            break
        if plan.mode == "random":
            if now - t0 >= plan.delay:
                break
        elif plan.mode == "write":
            exists = tmp.exists()
            if exists and not present:
                seen += 1
                if seen >= plan.n:
                    break
            present = exists
        elif fired_at is None:  # "step": count replacements of last.pt (a new inode each time)
            ino = _inode(last)
            if ino is not None and ino != inode:
                inode, seen = ino, seen + 1
                if seen >= plan.n:
                    fired_at = now
        elif now - fired_at >= plan.delay:
            break
        time.sleep(0.0005)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode == -signal.SIGKILL


MODES = ("write", "step", "random")


def run_trial(
    ws: Workspace,
    ref: Reference,
    index: int,
    rng: random.Random,
    *,
    kill_budget: int,
    kill_again: float = 0.5,
    max_kills: int = 3,
    timeout: float = 600.0,
) -> TrialResult:
    """One trial: kill, resume (maybe kill again, at most ``max_kills`` and ``kill_budget``),
    until a run completes; then compare with the reference.

    The ``k``-th kill of trial ``i`` uses mode ``MODES[(i + k) % 3]`` (see :class:`KillPlan`);
    ``n`` is uniform over the run's checkpoint writes, the ``"step"`` delay uniform over 1.5 mean
    step times and the ``"random"`` delay uniform over the reference run's wall time.
    """
    res = TrialResult(index=index)
    run_dir = ws.root / f"trial{index:03d}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    cfg = ws.config(run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    tmp = last.with_name("last.pt.tmp")
    attempt = 0
    while True:
        resume = last.exists()
        proc, log = start_train(
            cfg,
            resume=resume,
            log_dir=ws.root,
            tag=f"trial{index:03d}-{attempt}",
            exist_ok=attempt > 0,
        )
        res.resumes += resume
        want_kill = res.kills < min(max_kills, kill_budget) and (
            res.kills == 0 or rng.random() < kill_again
        )
        killed = False
        if want_kill:
            mode = MODES[(index + res.kills) % len(MODES)]
            plan = KillPlan(
                mode,
                n=rng.randint(1, ref.writes),
                delay=rng.uniform(0, 1.5 * ref.t_step)
                if mode == "step"
                else rng.uniform(0, ref.t_total),
            )
            if resume and mode != "random":  # a resumed run writes only what is left
                plan.n = rng.randint(1, max(ref.writes - _steps_done(last), 1))
            killed = _kill_when(proc, last, plan, deadline=timeout)
            if killed:
                res.kills += 1
                res.modes.append(mode)
                res.kills_during_write += tmp.exists()
                if not last.exists():
                    res.kills_before_first_checkpoint += 1
                elif not _checkpoint_readable(last):
                    res.unreadable_checkpoints += 1
        if not killed:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        text = log.read_text(errors="replace")
        if resume and "resumed from" in text:
            res.resumes_loaded += 1
        elif resume and killed:
            res.resumes_killed_early += 1
        attempt += 1
        if killed:
            continue
        if proc.returncode != 0:
            res.failures.append(f"{log.name}: exit {proc.returncode}: {text[-1500:]}")
            return res
        res.completed = True
        break
    cmp = compare_runs(run_dir, ref.run_dir)
    res.weights_equal, res.best_equal, res.steps_equal = (
        cmp["weights_equal"],
        cmp["best_equal"],
        cmp["steps_equal"],
    )
    res.detail = cmp["detail"]
    return res


def _steps_done(last: Path) -> int:
    from strop.train.checkpoint import load_checkpoint

    try:
        return int(load_checkpoint(last)["state"]["step"])
    except Exception:
        return 0


@dataclass
class Summary:
    """What the harness found; ``ok`` when every trial completed with the reference weights."""

    kill_points: int
    kills_during_write: int
    kills_before_first_checkpoint: int
    trials: int
    completed: int
    weights_equal: int
    best_equal: int
    steps_equal: int
    resumes: int
    resumes_loaded: int
    resumes_killed_early: int
    resume_failures: int
    unreadable_checkpoints: int
    reference_seconds: float
    seconds: float
    results: list[TrialResult]

    @property
    def ok(self) -> bool:
        """Every trial completed with the reference weights; every resume read its checkpoint
        (or was killed before it could); no checkpoint was unreadable after a kill."""
        return (
            self.completed == self.trials == self.weights_equal
            and self.resume_failures == 0
            and self.unreadable_checkpoints == 0
            and self.resumes_loaded + self.resumes_killed_early == self.resumes
        )

    def text(self) -> str:
        """A short human-readable report."""
        lines = [
            f"kill points survived: {self.kill_points if self.ok else 'FAILED'} of {self.kill_points} "
            f"SIGKILLs, over {self.trials} trials",
            f"  kills inside a checkpoint write (last.pt.tmp left behind): {self.kills_during_write}",
            f"  kills before the first checkpoint (fresh restart): {self.kills_before_first_checkpoint}",
            f"  resumes: {self.resumes} started, {self.resumes_loaded} read last.pt, "
            f"{self.resumes_killed_early} killed before reading it, {self.resume_failures} failed; "
            f"unreadable last.pt after a kill: {self.unreadable_checkpoints}",
            f"  trials: {self.trials}, completed {self.completed}; final last.pt == reference: "
            f"{self.weights_equal}; best.pt == reference: {self.best_equal}; "
            f"metrics.csv step rows == reference: {self.steps_equal}",
            f"  time: reference {self.reference_seconds:.1f}s, total {self.seconds:.1f}s",
        ]
        for r in self.results:
            if r.failures or not (r.weights_equal and r.best_equal and r.steps_equal):
                lines.append(
                    f"  trial {r.index}: kills={r.kills} ({','.join(r.modes)}) {r.detail} "
                    + " | ".join(f.splitlines()[0] if f else "" for f in r.failures)
                )
                lines.extend("      " + ln for f in r.failures for ln in f.splitlines()[-6:])
        return "\n".join(lines)


def run_harness(
    kills: int,
    seed: int = 0,
    *,
    workdir: str | Path | None = None,
    epochs: int = 2,
    kill_again: float = 0.5,
    ws: Workspace | None = None,
    ref: Reference | None = None,
) -> Summary:
    """Deliver ``kills`` SIGKILLs over as many trials as it takes; see the module docstring.

    ``ws``/``ref`` reuse a workspace and reference run (the tests share them).
    """
    t0 = time.monotonic()
    if ws is None:
        ws = make_workspace(workdir or tempfile.mkdtemp(prefix="strop-crash-"), epochs=epochs)
    if ref is None:
        ref = run_reference(ws)
    rng = random.Random(seed)
    results: list[TrialResult] = []
    delivered = 0
    while delivered < kills:
        r = run_trial(
            ws, ref, len(results), rng, kill_budget=kills - delivered, kill_again=kill_again
        )
        results.append(r)
        delivered += r.kills
        if r.kills == 0 and r.completed and len(results) > 3 * kills:
            break  # the run ends before any kill lands: the timing model is wrong for this machine
    return Summary(
        kill_points=delivered,
        kills_during_write=sum(r.kills_during_write for r in results),
        kills_before_first_checkpoint=sum(r.kills_before_first_checkpoint for r in results),
        trials=len(results),
        completed=sum(r.completed for r in results),
        weights_equal=sum(r.weights_equal for r in results),
        best_equal=sum(r.best_equal for r in results),
        steps_equal=sum(r.steps_equal for r in results),
        resumes=sum(r.resumes for r in results),
        resumes_loaded=sum(r.resumes_loaded for r in results),
        resumes_killed_early=sum(r.resumes_killed_early for r in results),
        resume_failures=sum(len(r.failures) for r in results),
        unreadable_checkpoints=sum(r.unreadable_checkpoints for r in results),
        reference_seconds=ref.t_total,
        seconds=time.monotonic() - t0,
        results=results,
    )


def main(argv: list[str] | None = None) -> int:
    """CLI: prints the summary; exit status 0 when every trial matched the reference."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=10, help="SIGKILLs to deliver (kill points)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workdir", default=None, help="default: a new temporary folder")
    p.add_argument(
        "--keep", action="store_true", help="keep the work folder (default: removed when ok)"
    )
    p.add_argument("--json", default=None, help="also write the summary as JSON here")
    args = p.parse_args(argv)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="strop-crash-"))
    summary = run_harness(args.kills, args.seed, workdir=workdir, epochs=args.epochs)
    print(summary.text())
    if args.json:
        data = asdict(summary)
        Path(args.json).write_text(json.dumps(data, indent=2, default=str))
    if summary.ok and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"work folder: {workdir}")
    return 0 if summary.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
