"""Fine-tuning recipes side by side: accuracy per minute against fastai and a plain PyTorch loop.

Run ``python benchmarks/recipes.py [--quick]`` (fastai comes from the ``bench`` extra:
``pip install -e .[bench]``). The setting is issue 13's:

- *source*: a torchvision ``resnet18`` trained from scratch by ``strop.train.fit`` on digits 0-4
  of scikit-learn's real ``load_digits`` (the recipe of ``strop demo``); its backbone is saved as a
  ``.pth`` (no ``fc.*``), the file every candidate starts from;
- *target*: digits 5-9 with ``shots`` labelled images per class (5, 20, 50), the rest of 5-9 as the
  validation set; the split is a function of the seed, the same for every candidate.

Candidates (see ``CANDIDATES``; each strop candidate is one config dict merged over ``BASE``, so a
``recipe: fine_tune`` preset is one line to add):

- ``fastai fine_tune``: ``vision_learner(dls, resnet18, pretrained=False)`` with the source
  backbone loaded into its body, ``learn.fine_tune(epochs - 1)`` at its defaults (one frozen
  epoch, then ``epochs - 1`` unfrozen: the same number of epochs as the others);
- ``plain SGD loop``: a hand-written loop, new head, everything trains, SGD momentum 0.9 + cosine;
- ``strop ...``: ``strop.train.fit(config_from_dict(...))`` with today's config keys.

Every candidate sees the same images: fastai and the plain loop read the tensors strop's
``image_folder`` decodes (resized, ImageNet-normalised), strop reads the folder itself. Wall time
is each candidate's whole run (model build, weight loading, training, one validation per epoch;
strop also writes its run folder and checkpoints). Runs are interleaved seed by seed in one process
so that load from other processes hits every candidate alike; the table reports medians with the
[min, max] over seeds, and each candidate's wall time as a ratio to fastai's *for the same seed*
(median of the per-seed ratios). "time to fastai's best" is the wall time until the first epoch
whose validation accuracy reaches the median best accuracy of fastai at that shot count.

SIGINT/SIGTERM stop the whole benchmark: nothing partial is reported as a result (a strop run
that ends with ``RunResult.interrupted`` set stops it the same way). Exit status 130 / 143.

``--ablation`` runs the one-factor-at-a-time experiments (``ABLATIONS``) that explain why the
documented strop recipe lost: each changes one thing of the docs' recipe (or of the plain loop's).

On a shared machine, run one process per (shots, seed) — ``--shots 20 --seeds 1 --markdown
s20-1.md`` — and combine their JSON files with ``--from-json s*.json``: the wall-time ratios stay
per seed, measured in one process. ``--image-size`` defaults to the demo's 64: at 32 pixels
resnet18's last stage is 1x1 and fastai's best accuracy at 20 shots drops from 0.92 to 0.71.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from common import load_average, machine, markdown_table, quiet

__all__ = [
    "ABLATIONS",
    "BASE",
    "CANDIDATES",
    "BenchInterrupted",
    "Candidate",
    "Run",
    "main",
    "run",
    "strop_candidate",
    "summarize",
]

SOURCE_DIGITS = ["0", "1", "2", "3", "4"]
TARGET_DIGITS = ["5", "6", "7", "8", "9"]
FASTAI = "fastai fine_tune"


class BenchInterrupted(BaseException):
    """SIGINT/SIGTERM reached the benchmark: stop everything, report nothing partial.

    A ``BaseException`` so that no ``except Exception`` in a framework swallows it.
    """


@dataclass(frozen=True)
class Candidate:
    """``kind`` is ``strop`` (``config`` merged over ``BASE``), ``plain`` or ``fastai``."""

    name: str
    kind: str
    config: dict[str, Any] = field(default_factory=dict)


def strop_candidate(name: str, **config: Any) -> Candidate:
    """A strop candidate: ``config`` is merged over ``BASE`` (nested dicts key by key)."""
    return Candidate(name, "strop", config)


#: A value that removes the key from the merged config (``None`` is an explicit null).
DROP = "<drop>"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if v == DROP:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


#: What every strop candidate shares (data.root, image_size, epochs, seed, output are filled in).
BASE: dict[str, Any] = {
    "data": {"batch_size": 32, "cache": "memory", "num_workers": 0},
    "model": {"name": "resnet18"},
    "precision": "fp32",  # like-for-like with fastai and the plain loop (auto picks bf16 on AVX512-BF16)
    "progress": False,
}

#: The documented recipe today (docs/finetune.md "Gradual unfreezing", docs/config.md): AdamW 1e-4,
#: the head at 10x, fastai-style gradual unfreezing, cosine with one warmup epoch.
DOCS = {
    "optimizer": {"name": "adamw", "lr": 1e-4, "head_lr_mult": 10.0},
    "gradual_unfreeze": {"head_epochs": 1, "lr_mult": 0.1},
    "schedule": {"name": "cosine", "warmup_epochs": 1},
}

#: The plain loop's recipe (SGD 0.01, momentum 0.9, weight decay 5e-4, cosine), inside strop.
PLAIN = {
    "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "cosine"},
}

#: The recipe the ablation found best (the proposal for ``recipe: fine_tune``): the docs' shape
#: with 3x the LR and 3x the optimizer steps (batch 10), bf16 where the CPU/GPU runs it natively.
BEST = _merge(DOCS, {"optimizer": {"lr": 3e-4}, "data": {"batch_size": 10}, "precision": "auto"})

CANDIDATES: list[Candidate] = [
    Candidate(FASTAI, "fastai"),
    Candidate("plain SGD loop", "plain", {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}),
    # the chapter's recipe as `strop demo` runs it: pretrained backbone frozen, new head
    strop_candidate(
        "strop frozen backbone (chapter)",
        model={"freeze": "backbone"},
        optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
        schedule={"name": "cosine", "warmup_epochs": 1},
    ),
    strop_candidate("strop docs today", **DOCS),
    strop_candidate("strop best", **BEST),
    strop_candidate("strop best, half the epochs", **BEST, epochs=6),
    # the preset as a user runs it: its own batch (10) and precision (auto: bf16 where the CPU
    # runs it natively) instead of BASE's batch 32 and fp32
    strop_candidate(
        "strop recipe: fine_tune", recipe="fine_tune", data={"batch_size": DROP}, precision=DROP
    ),
]


def _docs(name: str, **change: Any) -> Candidate:
    return strop_candidate(name, **_merge(DOCS, change))


#: One factor at a time from the docs' recipe (``--ablation``); ``None`` removes a key.
_LR3 = {"optimizer": {"lr": 3e-4}}

ABLATIONS: list[Candidate] = [
    # step 1: one factor of the docs' recipe at a time
    _docs("docs"),
    _docs("docs, batch 8", data={"batch_size": 8}),
    _docs("docs, adamw lr 3e-4", **_LR3),
    _docs("docs, adamw lr 1e-3", optimizer={"lr": 1e-3}),
    _docs("docs, no warmup", schedule={"name": "cosine"}),
    _docs("docs, no gradual unfreeze", gradual_unfreeze=None),
    _docs("docs, head_lr_mult 1", optimizer={"head_lr_mult": 1.0}),
    _docs("docs, train_bn", model={"train_bn": True}),
    _docs("docs, weight_decay 0.05", optimizer={"weight_decay": 0.05}),
    _docs("docs, augment crop", data={"augment": "crop"}),
    _docs("docs, label smoothing 0.1", loss={"name": "cross_entropy", "label_smoothing": 0.1}),
    _docs("docs, onecycle", schedule={"name": "onecycle"}),
    # step 2: one factor at a time from docs + lr 3e-4
    _docs("lr3e-4, no gradual unfreeze", **_LR3, gradual_unfreeze=None),
    _docs("lr3e-4, no warmup", **_LR3, schedule={"name": "cosine"}),
    _docs("lr3e-4, batch 10", **_LR3, data={"batch_size": 10}),
    _docs("lr3e-4, augment crop", **_LR3, data={"augment": "crop"}),
    _docs("lr3e-4, precision auto (bf16)", **_LR3, precision="auto"),
    # the plain loop's recipe inside strop
    strop_candidate("sgd 0.01 cosine (plain loop's recipe)", **PLAIN),
    strop_candidate("sgd 0.03 cosine", **_merge(PLAIN, {"optimizer": {"lr": 0.03}})),
    strop_candidate("sgd 0.01 cosine, batch 10", **_merge(PLAIN, {"data": {"batch_size": 10}})),
    strop_candidate(
        "sgd 0.01 cosine + gradual unfreeze",
        **_merge(PLAIN, {"gradual_unfreeze": {"head_epochs": 1}}),
    ),
]


@dataclass
class Run:
    """One candidate on one (shots, seed)."""

    candidate: str
    shots: int
    seed: int
    best: float
    last: float
    seconds: float
    trace: list[tuple[float, float]]  # (seconds since the run's start, val accuracy) per epoch

    def time_to(self, target: float) -> float:
        """Seconds until the first epoch with accuracy >= ``target`` (``inf`` if never)."""
        return next((t for t, acc in self.trace if acc >= target - 1e-12), math.inf)


# -- signals ----------------------------------------------------------------------------------
@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGINT/SIGTERM raise :class:`BenchInterrupted` (strop's ``fit`` installs its own handler
    while it runs and returns ``interrupted``, which :func:`_run_strop` turns into the same)."""

    def handler(signum: int, frame: Any) -> None:
        raise BenchInterrupted(signal.Signals(signum).name)

    from strop.train.signals import handling_signals

    with handling_signals(handler):
        yield


# -- data -------------------------------------------------------------------------------------
def _digits(out: Path, per_class: int | None) -> Path:
    from strop.data import write_digits

    return write_digits(out / "data" / f"digits-{per_class or 'all'}", per_class=per_class)


def _source_folder(digits: Path) -> Path:
    dst = digits.parent / f"{digits.name}-source-0-4"
    marker = dst / ".complete"
    if not marker.exists():
        shutil.rmtree(dst, ignore_errors=True)
        for d in SOURCE_DIGITS:
            shutil.copytree(digits / d, dst / d)
        marker.write_text("ok")
    return dst


def target_split(digits: Path, shots: int, seed: int) -> Path:
    """``train/<d>``: ``shots`` images per digit 5-9 drawn by ``seed``; ``val/<d>``: the rest."""
    dst = digits.parent / f"{digits.name}-target-5-9-{shots}shots-seed{seed}"
    marker = dst / ".complete"
    if marker.exists():
        return dst
    shutil.rmtree(dst, ignore_errors=True)
    g = torch.Generator().manual_seed(seed)
    for d in TARGET_DIGITS:
        files = sorted((digits / d).glob("*.png"))
        if shots >= len(files):
            raise ValueError(
                f"target_split: shots={shots} leaves no validation images of digit {d} "
                f"({len(files)} images)"
            )
        for k, i in enumerate(torch.randperm(len(files), generator=g).tolist()):
            part = "train" if k < shots else "val"
            (dst / part / d).mkdir(parents=True, exist_ok=True)
            shutil.copy2(files[i], dst / part / d / files[i].name)
    marker.write_text("ok")
    return dst


def source_weights(out: Path, digits: Path, *, image_size: int, epochs: int, threads: int) -> Path:
    """Train the source resnet18 on digits 0-4 (``strop demo``'s recipe) once; its backbone as .pth."""
    from strop.train import config_from_dict, fit

    path = out / f"source-resnet18-{digits.name}-{image_size}px-{epochs}ep.pth"
    if path.exists():
        return path
    cfg = config_from_dict(
        {
            "data": {
                "root": str(_source_folder(digits)),
                "image_size": image_size,
                "batch_size": 32,
                "val_fraction": 0.2,
                "augment": "crop",
                "num_workers": 0,
            },
            "loss": {"name": "cross_entropy", "label_smoothing": 0.1},
            "model": {"name": "resnet18"},
            "epochs": epochs,
            "precision": "fp32",
            "progress": False,
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
            "schedule": {"name": "cosine", "warmup_epochs": 1},
            "seed": 0,
            "output": str(out / "runs" / path.stem),
        }
    )
    with quiet():
        res = fit(cfg, log=lambda m: None)
    if res.interrupted:
        raise BenchInterrupted(res.interrupted)
    state = torch.load(
        res.run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True
    )["model"]
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, path)
    shutil.rmtree(res.run_dir, ignore_errors=True)
    print(
        f"source resnet18 on digits 0-4: val accuracy {res.best_metric:.3f} ({image_size}px, {epochs} epochs)",
        flush=True,
    )
    return path


def _tensors(root: Path, image_size: int) -> tuple[Any, Any]:
    """The target's train/val as tensors: exactly the pixels strop's image_folder gives (no augment)."""
    from strop.data import image_folder, materialize

    with quiet():
        tr, va, classes = image_folder(root, image_size=image_size)
    assert classes == TARGET_DIGITS, classes
    return materialize(tr), materialize(va)


# -- candidates ---------------------------------------------------------------------------------
def _resnet18_from(weights: Path, num_classes: int) -> torch.nn.Module:
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes)
    missing, unexpected = model.load_state_dict(
        torch.load(weights, map_location="cpu", weights_only=True), strict=False
    )
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected, (missing, unexpected)
    return model


def _accuracy(model: torch.nn.Module, loader: Any) -> float:
    model.eval()
    right = total = 0
    with torch.no_grad():
        for x, y in loader:
            right += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return right / total


def _run_plain(
    cand: Candidate,
    data: tuple[Any, Any],
    weights: Path,
    *,
    epochs: int,
    seed: int,
    batch_size: int,
) -> tuple[list[tuple[float, float]], float]:
    """New head, full fine-tune, SGD + momentum, per-step cosine: what one writes by hand."""
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    train, val = data
    model = _resnet18_from(weights, len(TARGET_DIGITS))
    o = cand.config
    opt = torch.optim.SGD(
        model.parameters(), lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"]
    )
    loader = DataLoader(
        train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    val_loader = DataLoader(val, batch_size=256)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(loader))
    trace = []
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        trace.append((time.perf_counter() - t0, _accuracy(model, val_loader)))
    return trace, time.perf_counter() - t0


def _run_fastai(
    cand: Candidate,
    data: tuple[Any, Any],
    weights: Path,
    *,
    epochs: int,
    seed: int,
    batch_size: int,
) -> tuple[list[tuple[float, float]], float]:
    """``vision_learner(..., resnet18, pretrained=False)`` + source body + ``fine_tune`` defaults."""
    from fastai.callback import progress, schedule  # noqa: F401  (add Learner.no_bar, .fine_tune)
    from fastai.callback.core import Callback
    from fastai.data.core import DataLoaders
    from fastai.learner import Recorder
    from fastai.losses import CrossEntropyLossFlat
    from fastai.metrics import accuracy
    from fastai.torch_core import set_seed
    from fastai.vision.learner import vision_learner
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision.models import resnet18

    t0 = time.perf_counter()
    set_seed(seed)
    train, val = data
    trace: list[tuple[float, float]] = []

    class Clock(Callback):
        order = Recorder.order + 1  # after the Recorder has the epoch's metrics

        def after_epoch(self) -> None:
            trace.append((time.perf_counter() - t0, float(self.learn.recorder.values[-1][-1])))

    dls = DataLoaders(
        DataLoader(
            train,
            batch_size=batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        ),
        DataLoader(val, batch_size=256),
        device=torch.device("cpu"),
    )
    learn = vision_learner(
        dls,
        resnet18,
        n_out=len(TARGET_DIGITS),
        pretrained=False,
        loss_func=CrossEntropyLossFlat(),
        metrics=accuracy,
        cbs=[Clock()],
    )
    body = _resnet18_from(weights, len(TARGET_DIGITS))
    learn.model[0].load_state_dict(nn.Sequential(*list(body.children())[:-2]).state_dict())
    with learn.no_bar(), learn.no_logging(), quiet():
        learn.fine_tune(epochs - 1)  # + its one frozen epoch = `epochs` epochs
    return trace, time.perf_counter() - t0


def strop_config(
    cand: Candidate,
    root: Path,
    weights: Path,
    *,
    image_size: int,
    epochs: int,
    seed: int,
    output: Path,
) -> dict[str, Any]:
    """The plain config dict a strop candidate runs (``None`` values drop the key)."""
    cfg = _merge(
        BASE,
        {
            "data": {"root": str(root), "image_size": image_size},
            "model": {"weights": str(weights)},
            "epochs": epochs,
            "seed": seed,
            "output": str(output),
        },
    )
    cfg = _merge(cfg, cand.config)
    return {k: v for k, v in cfg.items() if v is not None}


def _run_strop(
    cand: Candidate,
    root: Path,
    weights: Path,
    *,
    image_size: int,
    epochs: int,
    seed: int,
    output: Path,
) -> tuple[list[tuple[float, float]], float, Any]:
    from strop.train import config_from_dict, fit

    t0 = time.perf_counter()
    trace: list[tuple[float, float]] = []

    class Clock:
        def on_epoch_end(self, state: Any, logs: dict[str, float]) -> None:
            trace.append((time.perf_counter() - t0, float(logs["val_accuracy"])))

    cfg = config_from_dict(
        strop_config(
            cand, root, weights, image_size=image_size, epochs=epochs, seed=seed, output=output
        )
    )  # a candidate may set its own epochs
    with quiet():
        res = fit(cfg, callbacks=[Clock()], exist_ok=True, log=lambda m: None)  # a rerun replaces
    seconds = time.perf_counter() - t0
    if res.interrupted:
        raise BenchInterrupted(res.interrupted)
    if len(trace) != cfg.epochs:
        raise RuntimeError(f"{cand.name}: strop ran {len(trace)} of {cfg.epochs} epochs")
    return trace, seconds, res


# -- the benchmark ------------------------------------------------------------------------------
def run(
    candidates: Sequence[Candidate],
    *,
    shots: Sequence[int],
    seeds: Sequence[int],
    epochs: int,
    image_size: int,
    out: Path,
    source_epochs: int = 8,
    per_class: int | None = None,
    batch_size: int = 32,
    threads: int = 1,
    keep_runs: bool = False,
    log: Callable[[str], None] = print,
) -> list[Run]:
    """Every candidate on every (shots, seed); raises :class:`BenchInterrupted` on SIGINT/SIGTERM.

    strop's run folders are ``out/runs/<shots>shots-seed<seed>-<name>``, deleted after each run
    (checkpoints are 45 MB) unless ``keep_runs``.
    """
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    with _stop_on_signals():
        digits = _digits(out, per_class)
        weights = source_weights(
            out, digits, image_size=image_size, epochs=source_epochs, threads=threads
        )
        for n in shots:
            for seed in seeds:
                root = target_split(digits, n, seed)
                data = (
                    _tensors(root, image_size)
                    if any(c.kind != "strop" for c in candidates)
                    else None
                )
                for cand in candidates:
                    kw: dict[str, Any] = {"epochs": epochs, "seed": seed}
                    if cand.kind == "strop":
                        run_dir = out / "runs" / run_dir_name(n, seed, cand.name)
                        shutil.rmtree(run_dir, ignore_errors=True)
                        trace, seconds, _ = _run_strop(
                            cand, root, weights, image_size=image_size, output=run_dir, **kw
                        )
                        if not keep_runs:
                            shutil.rmtree(run_dir, ignore_errors=True)
                    elif cand.kind == "plain":
                        trace, seconds = _run_plain(
                            cand, data, weights, batch_size=batch_size, **kw
                        )
                    elif cand.kind == "fastai":
                        trace, seconds = _run_fastai(
                            cand, data, weights, batch_size=batch_size, **kw
                        )
                    else:
                        raise ValueError(
                            f"candidate {cand.name!r}: kind must be strop, plain or fastai; "
                            f"got {cand.kind!r}"
                        )
                    r = Run(
                        cand.name, n, seed, max(a for _, a in trace), trace[-1][1], seconds, trace
                    )
                    runs.append(r)
                    log(
                        f"  {n:>3} shots  seed {seed}  {cand.name:<44} best {r.best:.3f}  last {r.last:.3f}  "
                        f"{r.seconds:6.1f} s"
                    )
    return runs


def run_dir_name(shots: int, seed: int, candidate: str) -> str:
    """The folder (under ``out/runs``) of a strop candidate's run."""
    return f"{shots}shots-seed{seed}-{_slug(candidate)}"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def _spread(values: Sequence[float], fmt: str) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, fmt)
    return f"{format(med, fmt)} [{format(min(values), fmt)}, {format(max(values), fmt)}]"


def summarize(runs: Sequence[Run], reference: str = FASTAI) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)``: per shot count and candidate, medians [min, max] over seeds.

    ``reference`` (fastai) sets the accuracy target of "time to ref's best" and the denominator of
    the wall-time ratio (per seed); when it did not run, the first candidate is the reference.
    """
    names = list(dict.fromkeys(r.candidate for r in runs))
    if reference not in names:
        reference = names[0]
    header = [
        "shots",
        "candidate",
        "best val acc",
        "last val acc",
        "wall s",
        f"wall / {reference}",
        f"time to {reference}'s best (s)",
    ]
    rows = []
    for n in sorted({r.shots for r in runs}):
        at = [r for r in runs if r.shots == n]
        ref = {r.seed: r for r in at if r.candidate == reference}
        target = statistics.median(r.best for r in ref.values())
        for name in names:
            rs = [r for r in at if r.candidate == name]
            ratios = [r.seconds / ref[r.seed].seconds for r in rs if r.seed in ref]
            reach = [r.time_to(target) for r in rs]
            got = [t for t in reach if math.isfinite(t)]
            if len(got) == len(reach):
                reached = _spread(got, ".0f")
            elif got:
                reached = f"{statistics.median(got):.0f} ({len(got)}/{len(reach)} seeds reach {target:.3f})"
            else:
                reached = f"never ({target:.3f})"
            rows.append(
                [
                    str(n),
                    name,
                    _spread([r.best for r in rs], ".3f"),
                    _spread([r.last for r in rs], ".3f"),
                    _spread([r.seconds for r in rs], ".0f"),
                    _spread(ratios, ".2f") if ratios else "n/a",
                    reached,
                ]
            )
    return header, rows


def _report(runs: Sequence[Run], settings: dict[str, Any]) -> str:
    header, rows = summarize(runs)
    info = machine()
    lines = [
        "## Fine-tuning recipes vs fastai (benchmarks/recipes.py)",
        "",
        "Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()) + ".",
        "Machine: "
        + "; ".join(f"{k} {v}" for k, v in info.items())
        + f"; load average {load_average()}.",
        "Medians over seeds, [min, max] in brackets; wall-time ratios are per seed, in one process.",
        "",
        markdown_table(header, rows),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 5 shots, 1 seed, 3 epochs, 16px, 40 images per digit",
    )
    p.add_argument(
        "--ablation", action="store_true", help="the one-factor experiments (ABLATIONS) instead"
    )
    p.add_argument("--shots", type=int, nargs="+", default=[5, 20, 50])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--source-epochs", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", nargs="+", help="candidates whose name contains one of these strings")
    p.add_argument(
        "--strop",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help='an extra strop candidate, e.g. \'mine={"optimizer": {"lr": 0.02}}\'',
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path(tempfile.gettempdir()) / "strop-bench-recipes",
        help="data, source weights, run folders (reused between runs)",
    )
    p.add_argument("--markdown", type=Path, help="write the table here (default OUT/recipes.md)")
    p.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="no training: the table of earlier runs' JSON files (e.g. one process per seed)",
    )
    a = p.parse_args(argv)
    if a.from_json:
        runs = [
            Run(**{**r, "trace": [tuple(t) for t in r["trace"]]})
            for f in a.from_json
            for r in json.loads(f.read_text())
        ]
        text = _report(runs, {"from": ", ".join(str(f) for f in a.from_json)})
        print(text)
        if a.markdown:
            a.markdown.write_text(text + "\n")
        return text
    per_class = None
    if a.quick:
        a.shots, a.seeds, a.epochs, a.image_size, a.source_epochs, per_class = (
            [5],
            [0],
            3,
            16,
            2,
            40,
        )
    cands = list(ABLATIONS if a.ablation else CANDIDATES)
    for spec in a.strop:
        name, sep, raw = spec.partition("=")
        if not sep:
            p.error(f"--strop: expected NAME=JSON; got {spec!r}")
        cands.append(strop_candidate(name, **json.loads(raw)))
    if a.only:
        cands = [c for c in cands if any(s in c.name for s in a.only)]
        if not cands:
            p.error(f"--only {a.only}: no candidate matches")
    settings = {
        "shots": a.shots,
        "seeds": a.seeds,
        "epochs": a.epochs,
        "image size": a.image_size,
        "source epochs": a.source_epochs,
        "batch": 32,
        "torch threads": a.threads,
        "images per digit": per_class or "all",
    }
    print("recipes benchmark: " + ", ".join(f"{k} {v}" for k, v in settings.items()), flush=True)
    try:
        runs = run(
            cands,
            shots=a.shots,
            seeds=a.seeds,
            epochs=a.epochs,
            image_size=a.image_size,
            out=a.out,
            source_epochs=a.source_epochs,
            per_class=per_class,
            threads=a.threads,
        )
    except BenchInterrupted as stop:
        print(
            f"\nrecipes benchmark interrupted by {stop}: no results reported",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(143 if str(stop) == "SIGTERM" else 130) from None
    text = _report(runs, settings)
    print("\n" + text)
    md = a.markdown or a.out / ("ablation.md" if a.ablation else "recipes.md")
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(text + "\n")
    (md.with_suffix(".json")).write_text(json.dumps([asdict(r) for r in runs], indent=1))
    print(f"\nwritten: {md} and {md.with_suffix('.json')}")
    return text


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
