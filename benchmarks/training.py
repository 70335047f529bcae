"""Training throughput: ``strop``'s ``fit`` next to hand-written loops and Lightning's Trainer.

Run ``python benchmarks/training.py [--quick]``. For resnet18 (random init, 10 classes, batch 32,
SGD momentum 0.9) at each image size, full fine-tuning and frozen backbone, these candidates train
on the same in-memory tensors (a ``TensorDataset`` of the bundled digits, resized and normalised,
read through a ``DataLoader`` with ``num_workers=0``):

- ``tutorial loop``: the tutorial's loop — fp32, NCHW, ``model.train()`` throughout;
- ``best hand loop``: the fastest fixed setting on this CPU, with frozen BN in eval mode: bf16
  autocast + channels_last model and inputs where the CPU has native bf16 (AVX512-BF16 or AMX);
  elsewhere fp32, NCHW for full training below 128 px and channels_last for a frozen backbone or
  from 128 px (``hand_format``; on an AVX2-only CPU bf16 is emulated and 10-25× slower; fp32
  channels_last was 0.94× NCHW for full training at 64 px, 1.07-1.19× at 128-224 px, and
  1.2-1.6× for a frozen backbone: ``benchmarks/auto_choices.py [--frozen] [--size N]`` measures
  every fixed choice);
- ``strop fit``: ``strop.train.fit`` with ``precision: auto``, ``memory_format: auto`` (and for
  the frozen backbone ``feature_cache: auto``, i.e. cached, and ``off``);
- ``Lightning``: ``lightning.Trainer(precision="bf16-mixed")`` (``"32-true"`` on a CPU without
  native bf16), once as a user gets it (NCHW) and once with the model and inputs in channels_last
  (on a bf16 CPU the same arithmetic as the best loop, so the difference is the framework).

What is timed: the wall time of each training step, data loading included, from one batch's end to
the next (strop: its ``on_batch_end`` callback hook; Lightning: ``on_train_batch_end``); start-up,
model building, validation and checkpointing are outside. The first ``warmup`` steps of every run
are dropped. Candidates run interleaved, round by round, in one process; the table reports
``batch / median step time`` over all rounds, and the range of per-round medians.

strop reads its data from a folder in real use; here ``strop.train.trainer._load_data`` is
replaced by one returning the same tensors as the other candidates, so that the comparison is of
the training step (the data pipeline has its own benchmark, ``data_pipeline.py``).
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import (
    Timer,
    digits_folder,
    in_memory,
    markdown_table,
    median,
    quiet,
    round_order,
    run_fit,
)
from roofline import step_flops
from torch import nn
from torch.utils.data import DataLoader

from strop.precision import FP32_CHANNELS_LAST_MIN_SIZE, resolve

__all__ = ["Result", "main", "run"]

BATCH = 32
#: the CPU computes bf16 natively (AVX512-BF16 or AMX), which is where strop's ``precision: auto``
#: picks it: the best hand loop and Lightning use bf16 there (auto_choices.py checks the choice)
NATIVE_BF16 = resolve("auto", "cpu").name == "bf16"
#: the best hand loop's precision on this CPU (strop's names; Lightning's below)
HAND_PRECISION = "bf16" if NATIVE_BF16 else "fp32"
PL_PRECISION = "bf16-mixed" if NATIVE_BF16 else "32-true"
CANDIDATES = ("tutorial", "best", "strop", "strop_nocache", "lightning", "lightning_cl")
LABELS = {
    "tutorial": "tutorial loop (fp32, NCHW)",
    "best": "best hand loop (bf16 + channels_last)"
    if NATIVE_BF16
    else f"best hand loop (fp32; channels_last when frozen or from {FP32_CHANNELS_LAST_MIN_SIZE} px)",
    "strop": "strop fit (auto)",
    "strop_nocache": "strop fit (auto, feature_cache: off)",
    "lightning": f"Lightning ({PL_PRECISION})",
    "lightning_cl": f"Lightning ({PL_PRECISION} + channels_last)",
}


@dataclass
class Result:
    """Step times of one candidate in one setting, over all rounds (warm-up dropped)."""

    name: str
    times: list[float] = field(default_factory=list)
    round_medians: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return BATCH / median(self.times)


def _resnet18(num_classes: int, frozen: bool) -> nn.Module:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=num_classes)
    if frozen:
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("fc.")
    return model


def _frozen_bn_eval(model: nn.Module) -> None:
    # a frozen backbone's BatchNorm uses its stored statistics (strop's and Lightning's BaseFinetuning rule)
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not name.startswith("fc"):
            m.eval()


def _loader(ds: Any) -> DataLoader:
    return DataLoader(
        ds,
        batch_size=BATCH,
        shuffle=True,
        num_workers=0,
        generator=torch.Generator().manual_seed(0),
    )


def hand_format(frozen: bool, size: int | None = None) -> torch.memory_format:
    """The best hand loop's memory format: channels_last with native bf16, a frozen backbone
    (fp32 NHWC convolutions are the faster forward on a CPU), or images of ``size`` from
    ``FP32_CHANNELS_LAST_MIN_SIZE`` up (full fp32 training measured 1.07-1.19x faster in NHWC
    at 128-224 px on an AVX2 CPU, ``auto_choices.py --precisions fp32 --size N``); NCHW for full
    fp32 training of smaller images."""
    large = size is not None and size >= FP32_CHANNELS_LAST_MIN_SIZE
    return torch.channels_last if NATIVE_BF16 or frozen or large else torch.contiguous_format


def hand_setup(data: tuple[Any, Any, int], *, fast: bool, frozen: bool) -> tuple[nn.Module, Any]:
    """The hand loop's model and optimizer. ``fast``: ``hand_format`` (and frozen BN in eval mode)."""
    train, _, ncls = data
    fmt = hand_format(frozen, min(train.tensors[0].shape[-2:])) if fast else torch.contiguous_format
    model = _resnet18(ncls, frozen).to(memory_format=fmt)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    model.train()
    if frozen and fast:
        _frozen_bn_eval(model)
    return model, opt


def hand_step(
    model: nn.Module,
    opt: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    fast: bool,
    frozen: bool = False,
) -> tuple[float, int]:
    """One step of the hand loop (``fast``: bf16 autocast + channels_last inputs where the CPU has
    native bf16) and the tutorial's bookkeeping, which strop logs too: ``(summed loss, correct
    predictions)``."""
    fmt = hand_format(frozen, min(x.shape[-2:])) if fast else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast and NATIVE_BF16):
        out = model(x)
        loss = F.cross_entropy(out, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item() * len(y), int((out.argmax(1) == y).sum())


def hand_loop(data: tuple[Any, Any, int], *, fast: bool, frozen: bool) -> Result:
    """One epoch of a hand-written loop. ``fast``: the best fixed setting (``hand_step``); else
    the tutorial's fp32 NCHW."""
    model, opt = hand_setup(data, fast=fast, frozen=frozen)
    timer = Timer()
    timer.start()
    for x, y in _loader(data[0]):
        hand_step(model, opt, x, y, fast=fast, frozen=frozen)
        timer.tick()
    return Result("best" if fast else "tutorial", timer.times)


def strop_fit(
    data: tuple[Any, Any, int], *, size: int, frozen: bool, feature_cache: str, out: Path
) -> Result:
    """One epoch of ``strop.train.fit`` on ``data`` (see the module docstring)."""
    train, val, _ = data
    result, times, stamps = run_fit(
        {
            "data": {
                "root": "(in-memory tensors)",
                "image_size": size,
                "batch_size": BATCH,
                "num_workers": 0,
            },
            "model": {"name": "resnet18", "freeze": "backbone" if frozen else None},
            "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
            "epochs": 1,
            "feature_cache": feature_cache,
            "output": str(out),
        },
        data=data,
    )
    extra: dict[str, Any] = {"choices": result.choices}
    if result.choices.get("feature_cache"):
        # the cache is built between the "precision" line and the "feature cache" line
        t0 = next(t for t, m in stamps if m.startswith("precision:"))
        t1 = next(t for t, m in stamps if m.startswith("feature cache: used"))
        extra["extract_images_per_s"] = (len(train) + len(val)) / (t1 - t0)
    return Result(
        "strop" if feature_cache == "auto" else "strop_nocache", times.get(0, []), extra=extra
    )


def lightning_fit(
    data: tuple[Any, Any, int], *, frozen: bool, channels_last: bool, out: Path
) -> Result:
    """One epoch of ``lightning.Trainer(precision=PL_PRECISION)`` on ``data``."""
    import lightning as L

    train, _, ncls = data
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = _resnet18(ncls, frozen).to(memory_format=fmt)

        def on_train_epoch_start(self) -> None:
            if frozen:
                _frozen_bn_eval(self.model)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.model(x.contiguous(memory_format=fmt)), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(
                [p for p in self.parameters() if p.requires_grad], lr=0.01, momentum=0.9
            )

    timer = Timer()

    class Stamp(L.Callback):
        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            timer.start()

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            timer.tick()

    with quiet():
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            precision=PL_PRECISION,
            max_epochs=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            callbacks=[Stamp()],
            default_root_dir=str(out),
        )
        trainer.fit(Module(), _loader(train))
    return Result("lightning_cl" if channels_last else "lightning", timer.times)


def _candidates(
    frozen: bool, names: Sequence[str], size: int, out: Path
) -> dict[str, Callable[[Any], Result]]:
    table: dict[str, Callable[[Any], Result]] = {
        "tutorial": lambda d: hand_loop(d, fast=False, frozen=frozen),
        "best": lambda d: hand_loop(d, fast=True, frozen=frozen),
        "strop": lambda d: strop_fit(
            d, size=size, frozen=frozen, feature_cache="auto", out=out / "strop"
        ),
        "strop_nocache": lambda d: strop_fit(
            d, size=size, frozen=frozen, feature_cache="off", out=out / "strop_nc"
        ),
        "lightning": lambda d: lightning_fit(d, frozen=frozen, channels_last=False, out=out / "pl"),
        "lightning_cl": lambda d: lightning_fit(
            d, frozen=frozen, channels_last=True, out=out / "plcl"
        ),
    }
    chosen = [n for n in names if n in table and (frozen or n != "strop_nocache")]
    return {n: table[n] for n in chosen}


def finite_check_ms(size: int, num_classes: int = 10, repeats: int = 20) -> float:
    """Median ms of strop's per-step non-finite gradient check on resnet18's full gradients."""
    model = _resnet18(num_classes, frozen=False)
    x = torch.randn(2, 3, size, size)
    F.cross_entropy(model(x), torch.zeros(2, dtype=torch.long)).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    times = []
    for i in range(repeats + 3):
        t = time.perf_counter()
        bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
        if i >= 3:
            times.append(time.perf_counter() - t)
    return median(times) * 1e3


def run(
    *,
    sizes: Sequence[int] = (64, 224),
    modes: Sequence[str] = ("full", "frozen"),
    steps: dict[int, int] | None = None,
    warmup: int = 2,
    rounds: int = 2,
    names: Sequence[str] = CANDIDATES,
    roof_gflops: float | None = None,
    data_root: Path | None = None,
    progress: Callable[[str], None] = lambda msg: None,
) -> tuple[str, dict[tuple[int, str], dict[str, Result]]]:
    """Measure every candidate at every size and mode; returns ``(markdown, results)``.

    ``steps[size]`` timed steps per run (after ``warmup``); ``roof_gflops`` (the roof of the
    precision ``auto`` picks here, bf16 with native bf16, else fp32: its fastest dense kernel) adds the achieved
    fraction of it.
    """
    steps = steps or {64: 16, 224: 4}
    results: dict[tuple[int, str], dict[str, Result]] = {}
    flops: dict[tuple[int, str], int] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = data_root or tmp / "data"
        for size in sizes:
            n_steps = steps.get(size, 4) + warmup
            data = in_memory(digits_folder(root, size=size), size=size, n=n_steps * BATCH)
            for mode in modes:
                frozen = mode == "frozen"
                model = _resnet18(data[2], frozen)
                xs, ys = data[0].tensors
                x1, y1 = xs[:1], ys[:1]  # FLOPs are linear in the batch
                flops[(size, mode)] = step_flops(model, x1, y1) * BATCH
                cands = _candidates(frozen, names, size, tmp / f"runs{size}{mode}")
                res = {n: Result(n) for n in cands}
                order = list(cands)
                for r in range(rounds):
                    for name in round_order(order, r):
                        fn = cands[name]
                        progress(f"  {size}px {mode}: round {r + 1}/{rounds} {name}")
                        gc.collect()  # the earlier candidates' garbage, outside every timing
                        one = fn(data)
                        kept = one.times[warmup:]
                        res[name].times += kept
                        res[name].round_medians.append(median(kept))
                        res[name].extra.update(one.extra)
                for r_ in res.values():
                    r_.extra["flops"] = flops[(size, mode)]
                results[(size, mode)] = res
    return _table(results, flops, roof_gflops), results


def _table(
    results: dict[tuple[int, str], dict[str, Result]],
    flops: dict[tuple[int, str], int],
    roof: float | None,
) -> str:
    header = [
        "size",
        "mode",
        "candidate",
        "img/s (median)",
        "per-round range",
        "× tutorial",
        "× best loop",
        "× Lightning",
        "GFLOP/s",
        f"% of {HAND_PRECISION} roof",
    ]
    rows = []
    for (size, mode), res in results.items():
        ref = {k: res[k].images_per_s for k in ("tutorial", "best", "lightning_cl") if k in res}
        for name, r in res.items():
            ips = r.images_per_s
            rng = (
                f"{BATCH / max(r.round_medians):.1f}–{BATCH / min(r.round_medians):.1f}"
                if r.round_medians
                else ""
            )
            cached = bool(r.extra.get("choices", {}).get("feature_cache"))
            label = LABELS[name] + (" — head on cached features" if cached else "")
            gfs = flops[(size, mode)] / median(r.times) / 1e9 if not cached else float("nan")
            rows.append(
                [
                    f"{size}",
                    mode,
                    label,
                    f"{ips:.1f}",
                    rng,
                    f"{ips / ref['tutorial']:.2f}" if "tutorial" in ref else "",
                    f"{ips / ref['best']:.2f}" if "best" in ref else "",
                    f"{ips / ref['lightning_cl']:.2f}" if "lightning_cl" in ref else "",
                    "—" if cached else f"{gfs:.0f}",
                    "—" if cached or not roof else f"{100 * gfs / roof:.0f}%",
                ]
            )
            if cached and "extract_images_per_s" in r.extra:
                rows.append(
                    [
                        f"{size}",
                        mode,
                        "  ↳ strop one-time feature extraction (forward, eval)",
                        f"{r.extra['extract_images_per_s']:.1f}",
                        "",
                        "",
                        "",
                        "",
                        "",
                        "",
                    ]
                )
    notes = [
        f"- training-step FLOPs (FlopCounterMode, batch {BATCH}): "
        + ", ".join(f"{s}px {m}: {f / 1e9:.1f} GFLOP" for (s, m), f in flops.items())
    ]
    for (size, mode), res in results.items():
        ch = res.get("strop", Result("strop")).extra.get("choices")
        if ch:
            notes.append(
                f"- strop at {size}px {mode} chose precision={ch['precision']}, "
                f"memory_format={ch['memory_format']}, feature_cache={ch['feature_cache']} "
                f"({ch.get('feature_cache_reason', '')})"
            )
            break
    return markdown_table(header, rows) + "\n\n" + "\n".join(notes)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64px only, one round, fewer steps")
    args = parser.parse_args(argv)
    if args.quick:
        md, _ = run(
            sizes=(64,), steps={64: 8}, rounds=1, progress=lambda m: print(m, file=sys.stderr)
        )
    else:
        md, _ = run(progress=lambda m: print(m, file=sys.stderr))
    return md


if __name__ == "__main__":
    from strop._interrupt import run_script

    # a signal during one of the fits stops the whole script (exit 130/143), nothing reported
    sys.exit(run_script(lambda: print(main(sys.argv[1:])), name="benchmarks/training.py"))
