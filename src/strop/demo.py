"""``strop demo``: what transfer learning gives, measured on real handwritten digits on a CPU.

1. *Source task*: a torchvision ``resnet18`` learns 53 characters — letters and symbols, **no
   digit** — rendered in the fonts matplotlib ships and reduced to 8x8 the way scikit-learn's
   digits were scanned (:func:`strop.data.bundled.write_glyphs`). Its backbone is saved as a
   ``.pth`` in the user cache folder (:func:`cache_dir`), keyed by a hash of its config and the
   strop version, so the next demo skips it.
2. *Target task*: scikit-learn's real handwritten digits 0-9 (``load_digits``) from only 5, 10 or
   30 labelled images per class; every run is scored on the same 500 held-out digits (50 per
   class) that no run trains on. Four recipes, same images, same number of optimizer steps:

   ===========================  ==========================================================
   frozen pretrained backbone   feature extraction: load the .pth, freeze it, new head
   recommended fine-tuning      :data:`FINE_TUNE`: ``recipe: fine_tune``, head first, then all
   frozen random backbone       the frozen recipe without the pretrained weights
   from scratch                 :data:`SCRATCH`: random init, everything trains from the start
   ===========================  ==========================================================

   Each cell is run with 3 seeds (a different draw of the labelled images and of the init); the
   table shows mean ± standard deviation of the *last* epoch's accuracy (no epoch is picked on
   the held-out images).

Every training is an ordinary :func:`strop.train.fit` run with its own run folder. A signal stops
the whole demo (:class:`DemoInterrupted`): the source training is resumable, finished target runs
are kept in ``results.json`` and skipped by the next ``strop demo --out`` the same folder, and no
cut run is reported as a result. ``--task segmentation`` is the same story for synthetic shapes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "FINE_TUNE",
    "RECIPES",
    "SCRATCH",
    "CellResult",
    "DemoInterrupted",
    "DemoPlan",
    "cache_dir",
    "conclusion",
    "format_table",
    "run_demo",
    "summarize",
]

#: strop's recommended fine-tuning recipe: the ``recipe: fine_tune`` preset
#: (:data:`strop.train.recipes.FINE_TUNE` — the head alone for an epoch, then everything with
#: AdamW, the backbone at 0.1x, cosine with a warm-up epoch, EMA weights). The demo sets its own
#: batch size and epochs over it, the same for every recipe, so that all runs take the same number
#: of optimizer steps.
FINE_TUNE: dict[str, Any] = {"recipe": "fine_tune"}

#: From scratch: the strongest full-training recipe measured on these digits (it was the demo's
#: fine-tuning recipe until the preset beat it: 0.815 vs 0.848 at 5 per class, mean of 3 seeds) — every
#: layer trains from the first step, SGD + Nesterov under one-cycle, label smoothing 0.1, random
#: crops (no flips: digits are not mirror-symmetric). A head-first phase would only freeze a
#: random backbone.
SCRATCH: dict[str, Any] = {
    "optimizer": {
        "name": "sgd",
        "lr": 0.01,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
    },
    "schedule": {"name": "onecycle"},
    "loss": {"name": "cross_entropy", "label_smoothing": 0.1},
    "data": {"augment": "crop"},
}

# recipe key -> (label, pretrained?, config fragment)
RECIPES: dict[str, tuple[str, bool, dict[str, Any]]] = {
    "frozen-pretrained": (
        "frozen pretrained backbone + new head (the tutorial's recipe)",
        True,
        {
            "model": {"freeze": "backbone"},
            "optimizer": {"name": "sgd", "lr": 0.05, "weight_decay": 5e-4},
            "schedule": {"name": "cosine"},
        },
    ),
    "fine-tune": ("recommended fine-tuning (recipe: fine_tune)", True, FINE_TUNE),
    "frozen-random": (
        "frozen random backbone + new head",
        False,
        {
            "model": {"freeze": "backbone"},
            "optimizer": {"name": "sgd", "lr": 0.05, "weight_decay": 5e-4},
            "schedule": {"name": "cosine"},
        },
    ),
    "scratch": ("from scratch", False, SCRATCH),
}


@dataclass(frozen=True)
class DemoPlan:
    """The demo's budget. :meth:`quick` is a miniature for tests and smoke runs."""

    sizes: tuple[int, ...] = (5, 10, 30)  # labelled target images per class
    seeds: int = 3
    test_per_class: int = 50  # held-out target images per class, shared by every run
    image_size: int = 16  # the scans are 8x8: 16 px keeps every pixel and is 4x cheaper than 32
    target_steps: int = 48  # optimizer steps per target run, the same for every recipe and size
    source_per_class: int = 100  # glyph images per class
    source_epochs: int = 6
    recipes: tuple[str, ...] = tuple(RECIPES)
    precision: str = "fp32"
    digits_per_class: int | None = None  # cap on load_digits images per digit (tests)
    min_epochs: int = 3
    model: str = "resnet18"

    @classmethod
    def quick(cls) -> DemoPlan:
        """Seconds, not minutes: a 0.35M-parameter network, one tiny size, one seed, 3 short
        epochs per run. A plumbing check, not a result."""
        return cls(
            sizes=(2,),
            seeds=1,
            test_per_class=3,
            target_steps=6,
            source_per_class=4,
            source_epochs=1,
            digits_per_class=6,
            model="shufflenet_v2_x0_5",
        )

    def batch_size(self, shots: int) -> int:
        """10 images per batch up to 10 per class (one per class on average), 30 above: each
        epoch has 5-10 optimizer steps, so a run evaluates (and checkpoints) every 5-10 steps."""
        return 10 if shots <= 10 else 30

    def epochs(self, shots: int) -> int:
        steps_per_epoch = math.ceil(10 * shots / self.batch_size(shots))
        return max(self.min_epochs, math.ceil(self.target_steps / steps_per_epoch))


@dataclass
class CellResult:
    """One finished target run (a cut run never becomes one)."""

    recipe: str
    shots: int
    seed: int
    accuracy: float  # the last epoch's accuracy on the held-out digits
    curve: list[float]  # held-out accuracy after each epoch
    seconds: float
    cpu_seconds: float
    trainable_params: int
    run_dir: str


class DemoInterrupted(Exception):
    """SIGINT/SIGTERM stopped the demo; ``signal_name`` is ``"SIGINT"`` or ``"SIGTERM"``."""

    def __init__(self, signal_name: str, message: str):
        super().__init__(message)
        self.signal_name = signal_name

    @property
    def exit_code(self) -> int:
        """128 + the signal's number: 130 for SIGINT, 143 for SIGTERM (the shell's convention)."""
        return 128 + int(getattr(signal, self.signal_name, signal.SIGTERM))


def cache_dir() -> Path:
    """Where the demo keeps its source model: ``$STROP_CACHE/demo``, else
    ``$XDG_CACHE_HOME/strop/demo``, else ``~/.cache/strop/demo``."""
    from strop._cache import user_cache_dir

    return user_cache_dir("demo")


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            _deep_merge(base[k], v)
            if isinstance(v, Mapping) and isinstance(base.get(k), Mapping)
            else v
        )
    return out


class _Signals:
    """The demo's own SIGINT/SIGTERM handler, active between and around ``fit`` calls.

    Inside ``fit`` the trainer installs its own (it stops at the next optimizer step and saves
    ``last.pt``) and returns ``interrupted``; outside it, a signal raises at once.
    """

    def __init__(self) -> None:
        self.received: str | None = None

    def _handler(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name
        raise DemoInterrupted(self.received, f"interrupted by {self.received}")

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


# ----------------------------------------------------------------------------------------------
# the source model


def _source_config(plan: DemoPlan) -> dict[str, Any]:
    """The source training, without its data root and output (those do not change the model)."""
    return {
        "data": {
            "image_size": plan.image_size,
            "batch_size": 64,
            "val_fraction": 0.1,
            "augment": "crop",
            "num_workers": 0,
            "cache": "memory",
        },
        "model": {"name": plan.model},
        "loss": {"name": "cross_entropy", "label_smoothing": 0.1},
        "optimizer": {
            "name": "sgd",
            "lr": 0.1,
            "momentum": 0.9,
            "nesterov": True,
            "weight_decay": 5e-4,
        },
        "schedule": {"name": "onecycle"},
        "epochs": plan.source_epochs,
        "precision": plan.precision,
        "seed": 0,
    }


def source_key(plan: DemoPlan) -> str:
    """A hash of everything that decides the source model: its config, its data, strop's version."""
    from strop import __version__
    from strop.data.bundled import GLYPH_CHARS

    spec = {
        "config": _source_config(plan),
        "glyphs": {"chars": GLYPH_CHARS, "per_class": plan.source_per_class, "seed": 0, "size": 32},
        "strop": __version__,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class SourceModel:
    weights: Path
    accuracy: float
    classes: int
    seconds: float
    cpu_seconds: float
    cached: bool


def _train_source(
    plan: DemoPlan, *, progress: bool, log: Callable[[str], None], fit_log: Callable[[str], None]
) -> SourceModel:
    import torch

    from strop.data.bundled import write_glyphs
    from strop.train import config_from_dict, fit

    key = source_key(plan)
    folder = cache_dir()
    weights = folder / f"{plan.model}-glyphs-{key}.pth"
    meta_path = folder / f"{plan.model}-glyphs-{key}.json"
    if weights.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        log(
            f"source model: cached, skipping its training — {weights}\n"
            f"      (trained in {meta['seconds']:.0f} s; {meta['accuracy']:.3f} accuracy on held-out glyphs of "
            f"{meta['classes']} characters)"
        )
        return SourceModel(
            weights, meta["accuracy"], meta["classes"], meta["seconds"], meta["cpu_seconds"], True
        )

    folder.mkdir(parents=True, exist_ok=True)
    t, c = time.perf_counter(), time.process_time()
    root = write_glyphs(folder / f"glyphs-{key}", per_class=plan.source_per_class, seed=0, size=32)
    run_dir = folder / f"source-run-{key}"
    resume = (run_dir / "checkpoints" / "last.pt").is_file()
    classes = sum(1 for p in root.iterdir() if p.is_dir())
    log(
        f"source model: {plan.model} from scratch on {classes} characters rendered in matplotlib's fonts "
        f"({plan.source_per_class} images each, no digit), {plan.source_epochs} epochs"
        + (" — resuming the interrupted training" if resume else "")
    )
    cfg = _deep_merge(
        _source_config(plan),
        {"data": {"root": str(root)}, "output": str(run_dir), "progress": progress},
    )
    # a source run cut before its first checkpoint starts again in its own folder
    res = fit(config_from_dict(cfg), resume=resume, exist_ok=not resume, log=fit_log)
    if res.interrupted:
        raise DemoInterrupted(
            res.interrupted,
            f"interrupted by {res.interrupted} while training the source model; "
            f"its state is saved in {run_dir / 'checkpoints' / 'last.pt'}",
        )
    accuracy = float(res.final["val_accuracy"])
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)[
        "model"
    ]
    # the backbone only, as a pretrained file for a new task is: the head is the target's own
    from strop.finetune import build_model

    # the head's tensors are those whose shape follows the number of classes
    two, three = (build_model(plan.model, num_classes=n).state_dict() for n in (2, 3))
    head = {k for k in two if two[k].shape != three[k].shape}
    tmp = weights.with_name(weights.name + ".tmp")
    torch.save({k: v for k, v in state.items() if k not in head}, tmp)
    os.replace(tmp, weights)
    seconds, cpu = time.perf_counter() - t, time.process_time() - c
    meta = {
        "accuracy": accuracy,
        "classes": classes,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "key": key,
    }
    tmp = meta_path.with_name(meta_path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, meta_path)  # last: the pair exists only when both are whole
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # ~100 MB the cache does not need
    log(
        f"      source model: {accuracy:.3f} accuracy on held-out glyphs in {seconds:.0f} s "
        f"(CPU {cpu:.0f} s); saved to {weights}"
    )
    return SourceModel(weights, accuracy, classes, seconds, cpu, False)


# ----------------------------------------------------------------------------------------------
# the target task


def _target_splits(out: Path, plan: DemoPlan) -> dict[tuple[int, int], Path]:
    """``(shots, seed) -> root`` with ``train/<digit>`` (``shots`` images) and ``val/<digit>``
    (the held-out images, the same for every split). For one seed the smaller training sets are
    subsets of the larger ones."""
    import numpy as np

    from strop.data import write_digits

    digits = write_digits(out / "data" / "digits", per_class=plan.digits_per_class, size=32)
    splits: dict[tuple[int, int], Path] = {}
    rng = np.random.default_rng(0)
    held: dict[int, list[Path]] = {}
    pool: dict[int, list[Path]] = {}
    for d in range(10):
        files = sorted((digits / str(d)).iterdir())
        order = rng.permutation(len(files))
        held[d] = [files[i] for i in order[: plan.test_per_class]]
        pool[d] = [files[i] for i in order[plan.test_per_class :]]
        if len(pool[d]) < max(plan.sizes):
            raise ValueError(
                f"run_demo: digit {d} has {len(pool[d])} images left after the held-out "
                f"{plan.test_per_class}; sizes ask for up to {max(plan.sizes)}"
            )
    for seed in range(plan.seeds):
        draw = {d: np.random.default_rng(1000 + seed).permutation(len(pool[d])) for d in range(10)}
        for shots in plan.sizes:
            root = out / "data" / "target" / f"{shots}-per-class-seed{seed}"
            marker = root / ".complete"
            if not marker.exists():
                shutil.rmtree(root, ignore_errors=True)
                for d in range(10):
                    for part, files in (
                        ("train", [pool[d][i] for i in draw[d][:shots]]),
                        ("val", held[d]),
                    ):
                        (root / part / str(d)).mkdir(parents=True, exist_ok=True)
                        for f in files:
                            shutil.copy2(f, root / part / str(d) / f.name)
                marker.touch()
            splits[(shots, seed)] = root
    return splits


def _target_config(
    plan: DemoPlan, recipe: str, shots: int, seed: int, root: Path, weights: Path, run_dir: Path
) -> dict[str, Any]:
    _, pretrained, fragment = RECIPES[recipe]
    base = {
        "data": {
            "root": str(root),
            "image_size": plan.image_size,
            "batch_size": plan.batch_size(shots),
            "num_workers": 0,
            "cache": "memory",
        },
        "model": {"name": plan.model, "weights": str(weights) if pretrained else None},
        "epochs": plan.epochs(shots),
        "precision": plan.precision,
        "seed": seed,
        "progress": False,
        "output": str(run_dir),
    }
    return _deep_merge(base, fragment)


def _cell_id(cfg: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]


class _Progress:
    """One bar over the whole comparison (tqdm: done, rate, ETA), advanced per epoch by a cost
    estimate: a full-training epoch costs ~3 passes over its images plus one over the held-out
    set; a frozen one costs a pass over both once (the feature cache), then almost nothing."""

    def __init__(self, total: float, enabled: bool):
        self.bar: Any = None
        if enabled:
            import sys

            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=round(total),
                unit="img",
                unit_scale=True,
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=0.5,
                bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining}",
            )

    def start(self, desc: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(desc)

    def advance(self, n: float) -> None:
        if self.bar is not None:
            self.bar.update(round(n))

    def write(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=self.bar.fp)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _cost(plan: DemoPlan, recipe: str, shots: int) -> tuple[float, float]:
    """``(once, per_epoch)`` estimated cost of a run in image passes."""
    n_train, n_test = 10 * shots, 10 * plan.test_per_class
    fragment = RECIPES[recipe][2]
    if fragment.get("model", {}).get("freeze"):
        return n_train + n_test, 0.02 * (n_train + n_test)
    evals = 2 if fragment.get("recipe") == "fine_tune" else 1  # EMA weights are validated too
    return 0.0, 3 * n_train + evals * n_test


class _EpochTicker:
    """A fit callback: advances the demo's bar after each epoch."""

    def __init__(self, progress: _Progress, per_epoch: float):
        self.progress, self.per_epoch = progress, per_epoch

    def on_epoch_end(self, state: Any, logs: Mapping[str, float]) -> None:
        self.progress.advance(self.per_epoch)


def _run_cells(
    plan: DemoPlan,
    out: Path,
    source: SourceModel,
    *,
    progress: bool,
    log: Callable[[str], None],
    fit_log: Callable[[str], None],
) -> list[CellResult]:
    from strop.train import config_from_dict, fit

    splits = _target_splits(out, plan)
    results_path = out / "results.json"
    done: dict[str, CellResult] = {}
    if results_path.is_file():
        done = {
            k: CellResult(**v)
            for k, v in json.loads(results_path.read_text()).get("cells", {}).items()
        }
    cells = [
        (shots, seed, recipe)
        for shots in plan.sizes
        for seed in range(plan.seeds)
        for recipe in plan.recipes
    ]
    configs = {}
    for shots, seed, recipe in cells:
        run_dir = out / "runs" / f"{shots}-per-class" / f"{recipe}-seed{seed}"
        cfg = _target_config(
            plan, recipe, shots, seed, splits[(shots, seed)], source.weights, run_dir
        )
        configs[(shots, seed, recipe)] = (cfg, _cell_id({**cfg, "source": source.weights.name}))
    todo = [c for c in cells if configs[c][1] not in done]
    total = sum(_cost(plan, r, s)[0] + _cost(plan, r, s)[1] * plan.epochs(s) for s, _, r in todo)
    if len(todo) < len(cells):
        log(
            f"      {len(cells) - len(todo)} of {len(cells)} target runs already finished in {results_path}; "
            "skipping them"
        )
    bar = _Progress(total, progress)
    results: list[CellResult] = [done[configs[c][1]] for c in cells if configs[c][1] in done]
    best = max(results, key=lambda r: r.accuracy, default=None)
    try:
        for i, (shots, seed, recipe) in enumerate(todo):
            cfg, cid = configs[(shots, seed, recipe)]
            once, per_epoch = _cost(plan, recipe, shots)
            bar.start(f"[{i + 1}/{len(todo)}] {shots}/class seed {seed}: {recipe}")
            run_dir = Path(cfg["output"])
            shutil.rmtree(
                run_dir, ignore_errors=True
            )  # a run cut earlier restarts: target runs take seconds
            t, c = time.perf_counter(), time.process_time()
            res = fit(config_from_dict(cfg), callbacks=[_EpochTicker(bar, per_epoch)], log=fit_log)
            if res.interrupted:
                raise DemoInterrupted(
                    res.interrupted,
                    f"interrupted by {res.interrupted} during the target run "
                    f"{run_dir.name} ({shots} per class); that run is discarded",
                )
            bar.advance(once)
            cell = CellResult(
                recipe,
                shots,
                seed,
                float(res.final["val_accuracy"]),
                [float(h["val_accuracy"]) for h in res.history],
                time.perf_counter() - t,
                time.process_time() - c,
                int(res.choices.get("trainable_params", -1)),
                str(run_dir),
            )
            done[cid] = cell
            results.append(cell)
            tmp = results_path.with_name(results_path.name + ".tmp")
            tmp.write_text(json.dumps({"cells": {k: asdict(v) for k, v in done.items()}}, indent=1))
            os.replace(tmp, results_path)
            # keep the checkpoints of the best run only (the confusion matrix needs its weights);
            # a resnet18 run folder is ~140 MB otherwise
            if best is None or cell.accuracy > best.accuracy:
                if best is not None:
                    shutil.rmtree(Path(best.run_dir) / "checkpoints", ignore_errors=True)
                best = cell
            else:
                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            bar.write(
                f"      {shots:>3}/class seed {seed}  {RECIPES[recipe][0]:<62} {cell.accuracy:.3f}  "
                f"({cell.seconds:.1f} s, CPU {cell.cpu_seconds:.1f} s)"
            )
    finally:
        bar.close()
    return results


# ----------------------------------------------------------------------------------------------
# numbers -> table, conclusion, plots


@dataclass
class Summary:
    """Mean and sample standard deviation over seeds, per recipe and size."""

    sizes: list[int]
    recipes: list[str]
    mean: dict[str, dict[int, float]] = field(default_factory=dict)
    sd: dict[str, dict[int, float]] = field(default_factory=dict)
    n: dict[str, dict[int, int]] = field(default_factory=dict)
    values: dict[str, dict[int, list[float]]] = field(default_factory=dict)


def summarize(accuracies: Mapping[str, Mapping[int, Sequence[float]]]) -> Summary:
    """``{recipe: {shots: [accuracy per seed]}}`` -> :class:`Summary` (sd is 0 for one seed)."""
    recipes = list(accuracies)
    sizes = sorted({s for per in accuracies.values() for s in per})
    out = Summary(sizes, recipes)
    for r in recipes:
        out.values[r] = {s: list(v) for s, v in accuracies[r].items()}
        out.mean[r] = {s: statistics.fmean(v) for s, v in accuracies[r].items() if v}
        out.sd[r] = {
            s: statistics.stdev(v) if len(v) > 1 else 0.0 for s, v in accuracies[r].items() if v
        }
        out.n[r] = {s: len(v) for s, v in accuracies[r].items()}
    return out


def _beats(s: Summary, a: str, b: str, size: int) -> tuple[bool, float, float]:
    """``(a wins by more than the spread, margin, spread)``; spread = sd(a) + sd(b)."""
    margin = s.mean[a][size] - s.mean[b][size]
    spread = s.sd[a][size] + s.sd[b][size]
    return margin > spread, margin, spread


def verdicts(
    s: Summary,
    recipe: str = "fine-tune",
    against: Sequence[str] = ("scratch", "frozen-random"),
    unit: str = "per class",
) -> list[str]:
    """One line per size and rival: does ``recipe`` win by more than the seed spread?"""
    lines = []
    for size in s.sizes:
        for other in against:
            if other not in s.mean or recipe not in s.mean or size not in s.mean[other]:
                continue
            ok, margin, spread = _beats(s, recipe, other, size)
            word = (
                "beats"
                if ok
                else (
                    "does NOT beat"
                    if margin <= 0
                    else "is ahead of, but within the seed spread of,"
                )
            )
            lines.append(
                f"{size:>3} {unit}: {_short(recipe)} {word} {_short(other)}: "
                f"{100 * margin:+.1f} points (spread {100 * spread:.1f})"
            )
    return lines


def _short(recipe: str) -> str:
    return {
        "frozen-pretrained": "frozen pretrained",
        "fine-tune": "fine-tuning",
        "frozen-random": "frozen random",
        "scratch": "from scratch",
    }.get(recipe, recipe)


def conclusion(
    s: Summary, recipe: str = "fine-tune", unit: str = "per class", metric: str = "accuracy"
) -> str:
    """The one-line verdict, computed from the numbers: does ``recipe`` beat every recipe without
    pretrained weights (from scratch, frozen random) by more than the seed spread, at the smallest
    size, and does that last to the largest?"""
    rivals = [r for r in s.recipes if r != recipe and r in RECIPES and not RECIPES[r][1]]
    if recipe not in s.recipes or not rivals:
        return (
            f"No conclusion: the comparison needs {_short(recipe)} and a recipe without pretrained "
            f"weights; this run had {', '.join(map(_short, s.recipes))}."
        )
    small, large = s.sizes[0], s.sizes[-1]

    def pct(r: str, size: int) -> str:
        return (
            f"{100 * s.mean[r][size]:.1f}%"
            if metric == "accuracy"
            else f"{metric} {s.mean[r][size]:.3f}"
        )

    wins = {size: all(_beats(s, recipe, o, size)[0] for o in rivals) for size in s.sizes}
    best = max(rivals, key=lambda r: s.mean[r][small])
    margin = s.mean[recipe][small] - s.mean[best][small]
    head = (
        f"with {small} labelled images {unit} {_short(recipe)} reaches {pct(recipe, small)} against "
        f"{pct(best, small)} for {_short(best)} ({100 * margin:+.1f} points"
    )
    if not wins[small]:
        how = "behind" if margin <= 0 else "ahead by no more than the seed spread"
        return f"Transfer learning did not pay off here: {head}, {how})."
    line = f"Transfer learning pays off where labels are scarce: {head}, more than the seed spread)"
    if large == small:
        return line + "."
    gap = s.mean[recipe][large] - max(s.mean[r][large] for r in rivals)
    if wins[large]:
        return line + f"; it still leads by {100 * gap:.1f} points at {large} {unit}."
    return (
        line
        + f"; the advantage fades with more labels ({100 * gap:+.1f} points at {large} {unit})."
    )


def format_table(
    s: Summary,
    params: Mapping[str, int] | None = None,
    seconds: Mapping[str, tuple[float, float]] | None = None,
    labels: Mapping[str, tuple[str, bool, Any]] = RECIPES,
    unit: str = "per class",
) -> str:
    """A markdown table: accuracy mean ± sd per recipe (rows) and size (columns)."""
    head = "| recipe | " + " | ".join(f"{size} {unit}" for size in s.sizes) + " |"
    extra = ""
    if params is not None:
        head += " trainable params (at the start) |"
        extra += "---|"
    if seconds is not None:
        head += " time per run (wall / CPU) |"
        extra += "---|"
    lines = [head, "|---|" + "---|" * len(s.sizes) + extra]
    for r in s.recipes:
        cells = []
        for size in s.sizes:
            n = s.n[r].get(size, 0)
            cells.append(
                "—"
                if not n
                else f"{s.mean[r][size]:.3f} ± {s.sd[r][size]:.3f}"
                if n > 1
                else f"{s.mean[r][size]:.3f}"
            )
        row = f"| {labels[r][0] if r in labels else r} | " + " | ".join(cells) + " |"
        if params is not None:
            row += f" {params.get(r, -1):,} |"
        if seconds is not None:
            w, c = seconds.get(r, (float("nan"), float("nan")))
            row += f" {w:.1f} s / {c:.1f} s |"
        lines.append(row)
    return "\n".join(lines)


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


_COLORS = {
    "frozen-pretrained": "tab:blue",
    "fine-tune": "tab:green",
    "frozen-random": "tab:gray",
    "scratch": "tab:red",
}


def plot_accuracy_vs_shots(s: Summary, path: Path) -> Path:
    """Held-out accuracy against labelled images per class, one line per recipe (± sd)."""
    fig, (ax,) = _figure(6.5, 4.2)
    for r in s.recipes:
        xs = [size for size in s.sizes if size in s.mean[r]]
        ax.errorbar(
            xs,
            [100 * s.mean[r][x] for x in xs],
            yerr=[100 * s.sd[r][x] for x in xs],
            marker="o",
            capsize=3,
            label=_short(r),
            color=_COLORS.get(r),
        )
    ax.set(
        xscale="log",
        xlabel="labelled images per class (log scale)",
        ylabel="held-out accuracy (%)",
        title="Handwritten digits: accuracy vs labelled images",
    )
    ax.set_xticks(s.sizes, [str(x) for x in s.sizes])
    ax.set_xticks([], minor=True)  # no "6x10^0" labels between the sizes
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110)
    return path


def plot_learning_curves(
    cells: Sequence[CellResult],
    s: Summary,
    path: Path,
    *,
    metric: str = "held-out accuracy",
    labels: Mapping[str, tuple[str, bool, Any]] = RECIPES,
) -> Path:
    """Held-out metric after each epoch (mean over seeds), one panel per size."""
    fig, axes = _figure(4.0 * len(s.sizes), 3.6, ncols=len(s.sizes))
    for ax, size in zip(axes, s.sizes, strict=True):
        for r in s.recipes:
            curves = [c.curve for c in cells if c.recipe == r and c.shots == size]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            mean = [100 * statistics.fmean(c[e] for c in curves) for e in range(n)]
            ax.plot(
                range(1, n + 1),
                mean,
                marker=".",
                label=_short(r) if r in RECIPES else labels[r][0],
                color=_COLORS.get(r),
            )
        ax.set(
            title=f"{size} labelled" + (" per class" if labels is RECIPES else " images"),
            xlabel="epoch",
            ylabel=f"{metric} (%)",
        )
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path


def plot_bars(s: Summary, path: Path) -> Path:
    """Grouped bars of the mean accuracy (± sd); the axis starts just below the lowest bar."""
    fig, (ax,) = _figure(7.5, 4.0)
    width = 0.8 / len(s.recipes)
    lows = []
    for k, r in enumerate(s.recipes):
        xs = [i + (k - (len(s.recipes) - 1) / 2) * width for i, size in enumerate(s.sizes)]
        ys = [100 * s.mean[r][size] for size in s.sizes]
        es = [100 * s.sd[r][size] for size in s.sizes]
        lows += [y - e for y, e in zip(ys, es, strict=True)]
        bars = ax.bar(xs, ys, width, yerr=es, capsize=2, label=_short(r), color=_COLORS.get(r))
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    floor = max(0.0, 5 * math.floor((min(lows) - 3) / 5))
    ax.set_ylim(floor, 100)
    ax.set_xticks(range(len(s.sizes)), [f"{size} per class" for size in s.sizes])
    ax.set(
        ylabel=f"held-out accuracy (%) — axis from {floor:.0f}",
        title="Mean accuracy over seeds (± sd)",
    )
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=110)
    return path


def plot_confusion(
    cell: CellResult, split_root: Path, plan: DemoPlan, path: Path
) -> tuple[Path, float]:
    """Confusion matrix (scikit-learn) of ``cell``'s final weights on the held-out digits;
    returns the path and the accuracy recomputed from the predictions."""
    import torch
    from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

    from strop.data import image_folder
    from strop.train.inference import load_run_model

    model, _, _ = load_run_model(cell.run_dir, "last")
    _, test_ds, classes = image_folder(split_root, image_size=plan.image_size)
    preds, labels = [], []
    with torch.inference_mode():
        for i in range(0, len(test_ds), 100):
            batch = [test_ds[j] for j in range(i, min(i + 100, len(test_ds)))]
            x = torch.stack([b[0] for b in batch])
            preds += model(x).argmax(1).tolist()
            labels += [b[1] for b in batch]
    cm = confusion_matrix(labels, preds, labels=list(range(len(classes))))
    accuracy = float(cm.trace() / cm.sum())
    fig, (ax,) = _figure(5.2, 4.6)
    ConfusionMatrixDisplay(cm, display_labels=classes).plot(ax=ax, colorbar=False, cmap="Blues")
    ax.set_title(
        f"{_short(cell.recipe)}, {cell.shots} labelled per class (seed {cell.seed}): "
        f"{100 * accuracy:.1f}%",
        fontsize=9,
    )
    fig.savefig(path, dpi=110)
    return path, accuracy


# ----------------------------------------------------------------------------------------------
# the command


def run_demo(
    out: str | Path = "strop-demo",
    *,
    task: str = "classification",
    plan: DemoPlan | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    report: Callable[[str], None] | None = None,
) -> Summary:
    """Run the demo into ``out`` and return its :class:`Summary` (see the module docstring).

    ``log`` gets the progress (default: stderr), ``report`` the results — table, verdicts,
    conclusion (default: stdout). Raises :class:`DemoInterrupted` when SIGINT/SIGTERM stopped it;
    nothing partial is reported or returned then.
    """
    import sys

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    report = report or (lambda msg: print(msg, flush=True))
    if task not in ("classification", "segmentation"):
        raise ValueError(f"run_demo: task must be 'classification' or 'segmentation'; got {task!r}")
    plan = plan or DemoPlan()
    unknown = [r for r in plan.recipes if r not in RECIPES]
    if unknown:
        raise ValueError(f"run_demo: unknown recipe(s) {unknown}; available: {', '.join(RECIPES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    signals = _Signals()
    t0, c0 = time.perf_counter(), time.process_time()
    fit_log_path = out / "fit.log"

    def fit_log(msg: str) -> None:  # fit's per-run notes (precision, feature cache) go to a file
        with open(fit_log_path, "a") as fh:
            fh.write(msg + "\n")

    with signals.installed():
        if task == "segmentation":
            return _segmentation_demo(
                out, progress=progress, log=log, report=report, fit_log=fit_log
            )
        log(f"[1/2] source task (cache: {cache_dir()})")
        source = _train_source(plan, progress=progress, log=log, fit_log=fit_log)
        n_runs = len(plan.sizes) * plan.seeds * len(plan.recipes)
        log(
            f"[2/2] target task: real handwritten digits 0-9 from {', '.join(map(str, plan.sizes))} labelled "
            f"images per class; {len(plan.recipes)} recipes x {plan.seeds} seed(s) = {n_runs} runs, each scored on "
            f"{10 * plan.test_per_class} held-out digits"
        )
        cells = _run_cells(plan, out, source, progress=progress, log=log, fit_log=fit_log)
        s = summarize(
            {
                r: {
                    size: [c.accuracy for c in cells if c.recipe == r and c.shots == size]
                    for size in plan.sizes
                }
                for r in plan.recipes
            }
        )
        params = {r: next(c.trainable_params for c in cells if c.recipe == r) for r in plan.recipes}
        seconds = {
            r: (
                statistics.fmean(c.seconds for c in cells if c.recipe == r),
                statistics.fmean(c.cpu_seconds for c in cells if c.recipe == r),
            )
            for r in plan.recipes
        }
        plots = out / "plots"
        plots.mkdir(exist_ok=True)
        best = max(cells, key=lambda c: c.accuracy)
        splits_root = out / "data" / "target" / f"{best.shots}-per-class-seed{best.seed}"
        written = [
            plot_accuracy_vs_shots(s, plots / "demo-accuracy-vs-shots.png"),
            plot_learning_curves(cells, s, plots / "demo-learning-curves.png"),
            plot_bars(s, plots / "demo-bars.png"),
        ]
        path, _ = plot_confusion(best, splits_root, plan, plots / "demo-confusion.png")
        written.append(path)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    report("")
    report(
        f"Held-out accuracy on {10 * plan.test_per_class} real handwritten digits (mean ± sd over "
        f"{plan.seeds} seed(s); last epoch, {plan.target_steps} optimizer steps per run; source: "
        f"{source.accuracy:.3f} on held-out glyphs):"
    )
    report(format_table(s, params, seconds))
    report("")
    for line in verdicts(s):
        report(line)
    report("")
    report(f"plots: {', '.join(str(p) for p in written)}; runs in {out / 'runs'}")
    report(
        f"demo took {wall:.0f} s (CPU time {cpu:.0f} s){'; source model from the cache' if source.cached else ''}"
    )
    report(conclusion(s))
    return s


# ----------------------------------------------------------------------------------------------
# segmentation

#: The segmentation demo's recipes: lraspp_mobilenet_v3_large, Dice + BCE, AdamW. The last row is
#: the recipe the demo used before (every layer at 10x lower LR, the new head included): it is kept
#: as the experiment that shows why it lost to training from scratch (see the README).
SEG_RECIPES: dict[str, tuple[str, bool, dict[str, Any]]] = {
    "frozen-pretrained": (
        "frozen pretrained backbone + new head (the tutorial's recipe)",
        True,
        {"model": {"freeze": "backbone"}, "optimizer": {"lr": 0.003}},
    ),
    "fine-tune": (
        "recommended fine-tuning (head first, backbone at 0.1x LR)",
        True,
        {"gradual_unfreeze": {"head_epochs": 2, "lr_mult": 0.1}, "optimizer": {"lr": 0.003}},
    ),
    "frozen-random": (
        "frozen random backbone + new head",
        False,
        {"model": {"freeze": "backbone"}, "optimizer": {"lr": 0.003}},
    ),
    "scratch": ("from scratch", False, {"optimizer": {"lr": 0.003}}),
    "full-low-lr": (
        "full fine-tuning, everything at 10x lower LR (the old demo's)",
        True,
        {"optimizer": {"lr": 0.0003}},
    ),
}


def _segmentation_demo(
    out: Path,
    *,
    progress: bool,
    log: Callable[[str], None],
    report: Callable[[str], None],
    fit_log: Callable[[str], None],
    shots: int = 30,
    seeds: int = 1,
    image_size: int = 64,
    source_epochs: int = 8,
    target_epochs: int = 30,
) -> Summary:
    """Source: 3-class shapes (background, circle, square); target: binary foreground of all shapes
    (triangles are new) from ``shots`` labelled images, scored on 120 held-out images."""
    import torch

    from strop.data import write_shapes
    from strop.train import config_from_dict, fit

    t0, c0 = time.perf_counter(), time.process_time()
    source_root = write_shapes(
        out / "data" / "shapes-source", n=240, size=image_size, seed=1, num_classes=3
    )
    n_val = 120
    target_root = write_shapes(
        out / "data" / "shapes-target", n=shots + n_val, size=image_size, seed=2, num_classes=2
    )
    common = {
        "task": "segmentation",
        "precision": "auto",
        "progress": progress,
        "optimizer": {"name": "adamw", "weight_decay": 1e-4},
        "schedule": {"name": "cosine", "warmup_epochs": 1},
    }
    model = {"name": "lraspp_mobilenet_v3_large", "bn_momentum": 0.1}

    def run(cfg: dict[str, Any], what: str) -> Any:
        res = fit(
            config_from_dict(cfg), exist_ok=True, log=fit_log
        )  # a demo rerun replaces its runs
        if res.interrupted:
            raise DemoInterrupted(
                res.interrupted,
                f"interrupted by {res.interrupted} during {what}; that run is discarded",
            )
        return res

    log(
        f"[1/2] source task: lraspp_mobilenet_v3_large from scratch on 3-class shapes ({source_epochs} epochs)"
    )
    src = run(
        _deep_merge(
            common,
            {
                "data": {"root": str(source_root), "image_size": image_size, "batch_size": 16},
                "model": model,
                "epochs": source_epochs,
                "seed": 0,
                "loss": {"dice": {"weight": 1.0, "mode": "multiclass"}, "cross_entropy": 1.0},
                "optimizer": {"lr": 0.003},
                "output": str(out / "runs" / "source-shapes"),
            },
        ),
        "the source training",
    )
    state = torch.load(
        src.run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True
    )["model"]
    weights = out / "lraspp-shapes-source.pth"
    # the whole source model; its 3-class output convs do not fit the binary target and are re-initialised
    torch.save(state, weights)
    log(f"      source val_dice {src.final['val_dice']:.3f}; saved to {weights}")
    log(
        f"[2/2] target task: binary shapes (triangles are new) from {shots} labelled images, "
        f"{len(SEG_RECIPES)} recipes x {seeds} seed(s)"
    )
    values: dict[str, dict[int, list[float]]] = {r: {shots: []} for r in SEG_RECIPES}
    cells: list[CellResult] = []
    for seed in range(seeds):
        for key, (label, pretrained, fragment) in SEG_RECIPES.items():
            cfg = _deep_merge(
                common,
                {
                    "data": {
                        "root": str(target_root),
                        "image_size": image_size,
                        "batch_size": 8,
                        "val_fraction": n_val / (shots + n_val),
                    },
                    "model": {**model, "weights": str(weights) if pretrained else None},
                    "epochs": target_epochs,
                    "seed": seed,
                    "loss": {"dice": 1.0, "bce": 1.0},
                    "output": str(out / "runs" / f"{key}-seed{seed}"),
                    "progress": False,
                },
            )
            t, c = time.perf_counter(), time.process_time()
            log(f"      training {label} (seed {seed}) ...")
            res = run(_deep_merge(cfg, fragment), label)
            dice = float(res.final["val_dice"])
            values[key][shots].append(dice)
            cells.append(
                CellResult(
                    key,
                    shots,
                    seed,
                    dice,
                    [float(h["val_dice"]) for h in res.history],
                    time.perf_counter() - t,
                    time.process_time() - c,
                    int(res.choices.get("trainable_params", -1)),
                    str(res.run_dir),
                )
            )
            log(
                f"      {label}: val Dice {dice:.3f} ({cells[-1].seconds:.0f} s, CPU {cells[-1].cpu_seconds:.0f} s)"
            )
    s = summarize(values)
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    curves = plot_learning_curves(
        cells, s, plots / "demo-segmentation-curves.png", metric="val Dice", labels=SEG_RECIPES
    )
    params = {r: next(c.trainable_params for c in cells if c.recipe == r) for r in SEG_RECIPES}
    secs = {
        r: (
            statistics.fmean(c.seconds for c in cells if c.recipe == r),
            statistics.fmean(c.cpu_seconds for c in cells if c.recipe == r),
        )
        for r in SEG_RECIPES
    }
    report("")
    report(
        f"Last epoch's val Dice on {n_val} held-out images ({seeds} seed(s), {target_epochs} epochs):"
    )
    report(format_table(s, params, secs, labels=SEG_RECIPES, unit="labelled images"))
    report("")
    for line in verdicts(s, unit="labelled"):
        report(line)
    report(f"plots: {curves}; runs in {out / 'runs'}")
    report(
        f"demo took {time.perf_counter() - t0:.0f} s (CPU time {time.process_time() - c0:.0f} s)"
    )
    report(conclusion(s, unit="in all", metric="Dice"))
    return s
