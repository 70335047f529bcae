"""The GPU path in one short script: hand loops in each precision / memory format / compile, and
strop's ``fit``, in img/s and % of the device's datasheet peak. Prints a markdown table.

Run ``python benchmarks/gpu.py`` on a CUDA machine (under 5 minutes: resnet18, batch 64, 224 px,
a few dozen steps each), or ``python benchmarks/gpu.py --device cpu --quick`` for a smoke run of
the same code paths in seconds (16 px, batch 4, 2 steps; fp16 through the CPU GradScaler, no compile).

Candidates (resnet18, random init, 10 classes, SGD momentum 0.9, synthetic inputs already on the
device, so data loading is not timed):

- ``hand fp32``, ``hand fp16 + GradScaler``, ``hand bf16``, ``hand bf16 + channels_last``,
  ``hand bf16 + channels_last + compile`` (skipped with ``--no-compile``/``--quick``);
- ``strop fit``: ``precision: auto``, ``memory_format: auto``, ``compile`` as ``--strop-compile``
  (default ``auto``), on the same tensors in memory.

Timing: wall time per step with ``torch.cuda.synchronize()`` at each step's end; the first
``warmup`` steps (and compilation) are dropped; median over the rest. % of peak = achieved
FLOP/s (``FlopCounterMode`` on one step) / the device's **datasheet** dense bf16/fp16 tensor
peak from ``PEAK_TFLOPS`` (matched by device name; "—" when the device is not in the table).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import markdown_table, median, run_fit
from roofline import step_flops
from torch import nn

__all__ = ["PEAK_TFLOPS", "main", "peak_tflops", "run"]

# datasheet dense (no sparsity) bf16/fp16 tensor-core TFLOP/s, by a name fragment
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
    "V100": 125.0,
    "T4": 65.0,
}


def peak_tflops(name: str) -> float | None:
    """The datasheet peak of the device called ``name`` (first matching fragment), or None."""
    for key, value in PEAK_TFLOPS.items():
        if key.lower() in name.lower():
            return value
    return None


def _model(device: torch.device, channels_last: bool) -> nn.Module:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return resnet18(weights=None, num_classes=10).to(device, memory_format=fmt)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hand_loop(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    dtype: torch.dtype | None,
    channels_last: bool = False,
    compile: bool = False,
) -> list[float]:
    """Seconds per step of a hand-written loop: autocast ``dtype`` (None: fp32), a GradScaler for
    fp16, optionally channels_last and ``torch.compile``."""
    device = x.device
    model = _model(device, channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    step_model = torch.compile(model) if compile else model
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(step_model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def strop_steps(
    x: torch.Tensor, y: torch.Tensor, *, steps: int, compile: Any, out: Path
) -> tuple[list[float], dict[str, Any]]:
    """Seconds per step of ``strop.train.fit`` (one epoch of ``steps`` batches), and its choices."""
    from torch.utils.data import TensorDataset

    device = x.device
    xs, ys = x.cpu().repeat(steps, 1, 1, 1), y.cpu().repeat(steps)
    train, val = TensorDataset(xs, ys), TensorDataset(xs[: len(x)], ys[: len(y)])
    for ds in (train, val):
        ds.deterministic = True  # type: ignore[attr-defined]
    times: list[float] = []
    last = [0.0]

    class Stamp:
        def on_epoch_start(self, state: Any) -> None:
            _sync(device)
            last[0] = time.perf_counter()

        def on_batch_end(self, state: Any, logs: dict[str, float]) -> None:
            _sync(device)
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now

    result, _, _ = run_fit(
        {
            "data": {
                "root": "(in-memory tensors)",
                "image_size": x.shape[-1],
                "batch_size": len(x),
                "num_workers": 0,
            },
            "model": {"name": "resnet18"},
            "device": str(device),
            "compile": compile,
            "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
            "epochs": 1,
            "output": str(out),
        },
        data=(train, val, 10),
        callbacks=[Stamp()],
    )
    return times, result.choices


def run(
    *,
    device: str = "cuda",
    size: int = 224,
    batch: int = 64,
    steps: int = 30,
    warmup: int = 5,
    compile: bool = True,
    strop_compile: Any = "auto",
    progress: Callable[[str], None] = lambda m: None,
) -> tuple[str, dict[str, Any]]:
    """Every candidate once; returns ``(markdown, {label: img/s})``."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "gpu.py: --device cuda but torch.cuda.is_available() is False; use --device cpu --quick"
        )
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    peak = peak_tflops(name) if dev.type == "cuda" else None
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    flops = step_flops(_model(dev, False), x[:1], y[:1]) * batch
    cands: list[tuple[str, Callable[[], list[float]]]] = [
        ("hand fp32", lambda: hand_loop(x, y, steps=steps, dtype=None)),
        ("hand fp16 + GradScaler", lambda: hand_loop(x, y, steps=steps, dtype=torch.float16)),
        ("hand bf16", lambda: hand_loop(x, y, steps=steps, dtype=torch.bfloat16)),
        (
            "hand bf16 + channels_last",
            lambda: hand_loop(x, y, steps=steps, dtype=torch.bfloat16, channels_last=True),
        ),
    ]
    if compile:
        cands.append(
            (
                "hand bf16 + channels_last + compile",
                lambda: hand_loop(
                    x, y, steps=steps, dtype=torch.bfloat16, channels_last=True, compile=True
                ),
            )
        )
    rows, figures = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        choices: dict[str, Any] = {}

        def strop() -> list[float]:
            times, ch = strop_steps(x, y, steps=steps, compile=strop_compile, out=Path(tmp) / "s")
            choices.update(ch)
            return times

        for label, fn in [*cands, (f"strop fit (auto, compile: {strop_compile})", strop)]:
            progress(f"  {label}")
            t = median(fn()[warmup:])
            ips, tflops = batch / t, flops / t / 1e12
            figures[label] = ips
            rows.append(
                [
                    label,
                    f"{ips:.1f}",
                    f"{tflops:.2f}",
                    f"{100 * tflops / peak:.1f}%" if peak else "—",
                ]
            )
    best_hand = max(v for k, v in figures.items() if k.startswith("hand"))
    for row in rows:
        row.append(f"{figures[row[0]] / best_hand:.2f}")
    md = markdown_table(
        ["candidate", "img/s", "TFLOP/s", "% of datasheet peak", "× best hand"], rows
    )
    md += (
        f"\n\n- {name}; resnet18 {size} px, batch {batch}, {steps} steps ({warmup} dropped); "
        f"{flops / 1e9:.1f} GFLOP per step; peak: "
        + (f"{peak:.0f} TFLOP/s dense bf16/fp16 (datasheet figure)" if peak else "not in the table")
        + f"; strop chose precision={choices.get('precision')}, "
        f"memory_format={choices.get('memory_format')}, compile={choices.get('compile')} "
        f"({choices.get('compile_reason', '')})"
    )
    return md, figures


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 16 px, batch 4, 2 steps, no compile"
    )
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--strop-compile", default="auto", choices=["auto", "true", "false"])
    args = parser.parse_args(argv)
    sc = {"auto": "auto", "true": True, "false": False}[args.strop_compile]
    if args.quick:
        md, _ = run(
            device=args.device,
            size=16,
            batch=4,
            steps=2,
            warmup=1,
            compile=False,
            strop_compile=False if args.strop_compile == "auto" else sc,
        )
    else:
        md, _ = run(
            device=args.device,
            compile=not args.no_compile,
            strop_compile=sc,
            progress=lambda m: print(m, file=sys.stderr),
        )
    return md


if __name__ == "__main__":
    from strop._interrupt import run_script

    sys.exit(run_script(lambda: print(main(sys.argv[1:])), name="benchmarks/gpu.py"))
