"""Start-up: how long before strop does anything — ``strop --help``, ``import strop.train`` and a
real ``strop train`` up to its first optimizer step, against a hand-written PyTorch script.

Run ``python benchmarks/startup.py [--quick] [--rounds N]``. Every figure is a fresh Python process
(the ``python`` this script runs under, with this checkout's ``src`` first on ``PYTHONPATH``),
timed on the wall clock from just before the parent starts it; candidates are interleaved round
by round and the table gives medians of the wall time and of the process's CPU time (user +
system, all its threads; less moved than wall time by other processes on a shared machine). Timed:

- ``python -c pass``: the interpreter alone (the floor of every line below);
- ``strop --help`` (as ``python -m strop --help``), the whole process;
- ``python -c "import strop.train"`` and ``python -c "import torch, torchvision"`` (what any
  torchvision fine-tuning script pays first), each to the end of its import (the interpreter's
  shutdown after it, about a second once torch is loaded, is not counted);
- ``strop train configs/digits-finetune.yaml`` with ``--set epochs=1 --set data.image_size=32``
  (resnet18, random init, the bundled digits as 32×32 PNGs, batch 32, everything else the
  config's and ``auto``'s own choices), up to the end of its first optimizer step. The child runs
  ``strop.cli.main`` itself behind a few lines that add one callback to ``fit``: its first
  ``on_batch_end`` (after the optimizer step) writes the time and the process exits there;
- the same for a hand-written script: ``import torch, torchvision``, ``ImageFolder`` on the same
  PNGs (``Resize(32)``, ``ToTensor``, ``Normalize``), a shuffled ``DataLoader`` (batch 32, no
  workers), ``torchvision.models.resnet18(weights=None, num_classes=10)``, SGD, one step (fp32).

The digits are written once before the first round (so no run pays scikit-learn's
``load_digits``); each ``strop train`` gets a fresh output folder. The phases of the two
first-step runs (imports done, run built, first step) are medians of the same processes. The
import-time table is one ``python -X importtime -c "import strop.train"``: each third-party
module a strop module imports, with its cumulative time and the strop module that pulls it in.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common import load_average, machine, markdown_table, median

__all__ = ["importtime_top", "main", "run"]

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "digits-finetune.yaml"

# The child of a timed `strop train`: strop.cli.main with one callback added to fit. It writes
# {phase: time.time()} to argv[1] at the first optimizer step, then exits at once.
STROP_CHILD = r"""
import json, os, sys, time
stamps, cpu = {"start": time.time()}, {"start": time.process_time()}
import strop.cli
import strop.train
stamps["imported"], cpu["imported"] = time.time(), time.process_time()
_fit = strop.train.fit

class _FirstStep:
    def on_fit_start(self, state):
        stamps["built"], cpu["built"] = time.time(), time.process_time()

    def on_batch_end(self, state, logs):
        stamps["first_step"], cpu["first_step"] = time.time(), time.process_time()
        with open(sys.argv[1], "w") as f:
            json.dump({"wall": stamps, "cpu": cpu}, f)
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(0)

def fit(config, **kw):
    stamps["fit"], cpu["fit"] = time.time(), time.process_time()
    kw["callbacks"] = [*kw.get("callbacks", ()), _FirstStep()]
    return _fit(config, **kw)

strop.train.fit = fit
rc = strop.cli.main(sys.argv[2:])
sys.exit(f"strop train ended (status {rc}) without an optimizer step")
"""

# The hand-written minimal script: the same model, data, batch and image size, one SGD step.
HAND_CHILD = r"""
import json, sys, time
stamps, cpu = {"start": time.time()}, {"start": time.process_time()}
import torch
import torchvision
from torchvision import transforms
from torchvision.datasets import ImageFolder
stamps["imported"], cpu["imported"] = time.time(), time.process_time()
out, root, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
tf = transforms.Compose([
    transforms.Resize((size, size)),
    transforms.ToTensor(),
    transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
])
data = ImageFolder(root, transform=tf)
loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True)
model = torchvision.models.resnet18(weights=None, num_classes=len(data.classes))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
stamps["built"], cpu["built"] = time.time(), time.process_time()
x, y = next(iter(loader))
torch.nn.functional.cross_entropy(model(x), y).backward()
opt.step()
stamps["first_step"], cpu["first_step"] = time.time(), time.process_time()
with open(out, "w") as f:
    json.dump({"wall": stamps, "cpu": cpu}, f)
"""

# an import is timed to its end (the child prints time.time() and its CPU time there): the
# interpreter's shutdown after it (about a second once torch is loaded) is not start-up
_STAMP = "; import time; print(time.time(), time.process_time())"
SIMPLE = {
    "python": ("python -c pass", ["-c", "pass"]),
    "help": ("strop --help", ["-m", "strop", "--help"]),
    "import_train": ('python -c "import strop.train"', ["-c", "import strop.train" + _STAMP]),
    "import_torch": (
        'python -c "import torch, torchvision"',
        ["-c", "import torch, torchvision" + _STAMP],
    ),
}
PHASES = ("imported", "built", "first_step")


def child_env(data_home: Path | None = None) -> dict[str, str]:
    """This process's environment with this checkout's ``src`` first on ``PYTHONPATH``."""
    env = dict(os.environ)
    paths = [str(ROOT / "src"), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if data_home is not None:
        env["STROP_DATA"] = str(data_home)
    return env


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(args: Sequence[str], env: dict[str, str]) -> tuple[float, float]:
    """``(wall, cpu)`` seconds of ``python *args`` (a failure raises, with the child's stderr);
    cpu: the child's user + system time. A child whose ``args`` end with ``_STAMP`` is timed to
    the moment it prints ``time.time() time.process_time()``."""
    cpu0, t0, t0_clock = _children_cpu(), time.perf_counter(), time.time()
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"python {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    if args[-1].endswith(_STAMP):
        end, cpu = (float(v) for v in proc.stdout.split()[-2:])
        wall = end - t0_clock
    return wall, cpu


def _first_step(
    args: Sequence[str], stamp_file: Path, env: dict[str, str]
) -> dict[str, dict[str, float]]:
    """``{"wall": {phase: seconds from just before python *args started}, "cpu": {phase: the
    child's CPU seconds (all its threads) up to then}}``; the child writes its stamps
    (``time.time()``, the same clock in both processes) to ``stamp_file``."""
    stamp_file.unlink(missing_ok=True)
    t0 = time.time()
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not stamp_file.is_file():
        raise RuntimeError(
            f"first-step run failed ({proc.returncode}): {' '.join(args[2:])}\n"
            f"{proc.stderr[-3000:]}"
        )
    stamps = json.loads(stamp_file.read_text())
    return {"wall": {k: v - t0 for k, v in stamps["wall"].items()}, "cpu": stamps["cpu"]}


def importtime_top(
    module: str = "strop.train", *, n: int = 8, env: dict[str, str] | None = None
) -> tuple[list[dict[str, Any]], float]:
    """``python -X importtime -c "import <module>"``: the ``n`` costliest third-party modules
    that strop modules import, and the total seconds. Each row: ``module``, its cumulative
    ``seconds``, the strop module that imports it (``by``) and ``mostly``: where most of its time
    goes (following the costliest import inside while it holds >= 60% of its parent's time;
    ``None`` when no single import does)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        env=env or child_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    entries = []  # (depth, name, cumulative µs), in the order Python prints them (children first)
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        _, cum, name = line[len("import time:") :].split("|")
        entries.append(((len(name) - len(name.lstrip()) - 1) // 2, name.strip(), int(cum)))

    def children(i: int) -> list[int]:
        depth, out = entries[i][0], []
        for j in range(i - 1, -1, -1):
            if entries[j][0] <= depth:
                break
            if entries[j][0] == depth + 1:
                out.append(j)
        return out

    rows, total = [], 0.0
    for i, (depth, name, cum) in enumerate(entries):
        if name == module and depth == 0:
            total = cum / 1e6
        parent = next((e for e in entries[i + 1 :] if e[0] < depth), None)
        if parent is None or not parent[1].startswith("strop") or name.startswith("strop"):
            continue
        node, chain = i, []
        while kids := children(node):
            big = max(kids, key=lambda j: entries[j][2])
            if entries[big][2] < 0.6 * entries[node][2]:
                break
            node = big
            chain.append(entries[big][1])
        rows.append(
            {
                "module": name,
                "seconds": cum / 1e6,
                "by": parent[1],
                "mostly": (chain[-1], entries[node][2] / 1e6, chain) if chain else None,
            }
        )
    rows.sort(key=lambda r: -r["seconds"])
    return rows[:n], total


def run(
    *,
    rounds: int = 5,
    size: int = 32,
    progress: Callable[[str], None] = lambda msg: None,
) -> tuple[str, dict[str, Any]]:
    """All the measures, ``rounds`` processes each, interleaved; returns ``(markdown, figures)``.

    ``figures[key]`` for key in ``python, help, import_train, import_torch, strop, hand``:
    ``{"wall": [...], "cpu": [...], "median": median wall s, "median_cpu": ...}``; ``strop`` and
    ``hand`` (to the first step) also ``"phases": {"wall"|"cpu": {phase: median s}}``; then
    the ratios (``ratio_first_step`` = strop / hand median wall, ...), ``importtime``, ``cpu
    features`` and ``load``."""
    from strop.data import write_digits

    load_start = load_average()
    keys = (*SIMPLE, "strop", "hand")
    wall: dict[str, list[float]] = {k: [] for k in keys}
    cpu: dict[str, list[float]] = {k: [] for k in keys}
    phases: dict[str, list[dict[str, dict[str, float]]]] = {"strop": [], "hand": []}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data_home = tmp / "data"
        digits = write_digits(data_home / "digits")  # what bundled:digits resolves to
        env = child_env(data_home)
        stamp = tmp / "stamps.json"
        for r in range(rounds):
            progress(f"  start-up round {r + 1}/{rounds}")
            for key, (_, args) in SIMPLE.items():
                w, c = _timed(args, env)
                wall[key].append(w)
                cpu[key].append(c)
            strop_args = ["-c", STROP_CHILD, str(stamp), "train", str(CONFIG)]
            for item in ("epochs=1", f"data.image_size={size}", f"output={tmp / f'run{r}'}"):
                strop_args += ["--set", item]
            hand_args = ["-c", HAND_CHILD, str(stamp), str(digits), str(size)]
            for who, args in (("strop", strop_args), ("hand", hand_args)):
                st = _first_step(args, stamp, env)
                wall[who].append(st["wall"]["first_step"])
                cpu[who].append(st["cpu"]["first_step"])
                phases[who].append(st)
        top, total = importtime_top(env=env)
    fig: dict[str, Any] = {
        k: {"wall": wall[k], "cpu": cpu[k], "median": median(wall[k]), "median_cpu": median(cpu[k])}
        for k in keys
    }
    for who in ("strop", "hand"):
        fig[who]["phases"] = {
            clock: {p: median([st[clock][p] for st in phases[who]]) for p in PHASES}
            for clock in ("wall", "cpu")
        }
    fig["ratio_first_step"] = fig["strop"]["median"] / fig["hand"]["median"]
    fig["ratio_first_step_cpu"] = fig["strop"]["median_cpu"] / fig["hand"]["median_cpu"]
    fig["ratio_import"] = fig["import_train"]["median"] / fig["import_torch"]["median"]
    fig["ratio_help"] = fig["help"]["median"] / fig["python"]["median"]
    fig["importtime"] = {"total": total, "top": top}
    fig["rounds"], fig["size"] = rounds, size
    fig["cpu features"] = machine()["cpu features"]
    fig["load"] = (load_start, load_average())
    return _markdown(fig), fig


def _markdown(fig: dict[str, Any]) -> str:
    def cells(key: str) -> list[str]:
        return [f"{fig[key]['median']:.2f}", f"{fig[key]['median_cpu']:.2f}"]

    rows = [[f"`{label}`", *cells(key)] for key, (label, _) in SIMPLE.items()]
    rows += [
        [f"`strop train` (digits {fig['size']} px, resnet18), to its first step", *cells("strop")],
        ["hand-written script (same model, data, batch), to its first step", *cells("hand")],
    ]
    md = markdown_table(["fresh process", "median wall s", "median CPU s"], rows)
    ph = [
        [
            who,
            *(
                f"{fig[who]['phases']['wall'][p]:.2f} / {fig[who]['phases']['cpu'][p]:.2f}"
                for p in PHASES
            ),
        ]
        for who in ("strop", "hand")
    ]
    md += "\n\n" + markdown_table(
        ["first-step run (wall / CPU s)", "imports done", "run built (data, model)", "first step"],
        ph,
    )
    md += (
        f"\n\n- **strop / hand to the first step: {fig['ratio_first_step']:.2f}× wall** "
        f"({fig['strop']['median']:.2f} s vs {fig['hand']['median']:.2f} s), "
        f"{fig['ratio_first_step_cpu']:.2f}× CPU; `import strop.train` / "
        f"`import torch, torchvision`: {fig['ratio_import']:.2f}×; `strop --help` / "
        f"`python -c pass`: {fig['ratio_help']:.1f}×"
        f"\n- {fig['rounds']} interleaved round(s), medians; CPU features: {fig['cpu features']}; "
        f"load average (1/5/15 min) {fig['load'][0]} at start, {fig['load'][1]} at end"
    )
    it = fig["importtime"]
    top = [
        [
            f"`{r['module']}`",
            f"{1000 * r['seconds']:.0f}",
            f"`{r['by']}`",
            f"`{r['mostly'][0]}` {1000 * r['mostly'][1]:.0f} ms" if r["mostly"] else "",
        ]
        for r in it["top"]
    ]
    md += (
        f'\n\n`python -X importtime -c "import strop.train"` (one run, {1000 * it["total"]:.0f} ms '
        "in all): the costliest third-party imports of strop modules\n\n"
        + markdown_table(["module", "cumulative ms", "imported by", "mostly in"], top)
    )
    return md


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds instead of 5")
    parser.add_argument("--rounds", type=int, default=None, help="processes per measure")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 5)
    md, _ = run(rounds=rounds, progress=lambda m: print(m, file=sys.stderr))
    return md


if __name__ == "__main__":
    from strop._interrupt import run_script

    sys.exit(run_script(lambda: print(main(sys.argv[1:])), name="benchmarks/startup.py"))
