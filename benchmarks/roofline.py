"""The hardware's roof: dense matmul (and 3×3 convolution) GFLOP/s in fp32 and bf16, and the FLOPs
of a training step counted by ``torch.utils.flop_counter.FlopCounterMode``.

Run ``python benchmarks/roofline.py [--quick]``. The roof is the best median over a few square
matmul sizes (``2·n³`` FLOPs each), measured on this process's torch threads. ``run.py`` divides
the training benchmark's achieved FLOP/s by the fastest kernel measured here in the precision
``auto`` trains in (bf16 with native bf16, else fp32).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from common import markdown_table, median
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["conv_gflops", "main", "matmul_gflops", "roofs", "step_flops"]


def _bench(fn: Callable[[], object], *, repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``fn()`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return median(times)


def matmul_gflops(n: int, dtype: torch.dtype, *, repeats: int = 5) -> float:
    """GFLOP/s of an ``n×n @ n×n`` matmul in ``dtype`` (median of ``repeats``)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    sec = _bench(lambda: torch.mm(a, b), repeats=repeats)
    return 2 * n**3 / sec / 1e9


def conv_gflops(
    dtype: torch.dtype,
    memory_format: torch.memory_format,
    *,
    batch: int = 32,
    hw: int = 28,
    channels: int = 128,
    repeats: int = 5,
) -> float:
    """GFLOP/s of a 3×3, stride-1 convolution (resnet18's layer2 shape at 224: 128 channels, 28×28)."""
    g = torch.Generator().manual_seed(0)
    x = (
        torch.randn(batch, channels, hw, hw, generator=g)
        .to(dtype)
        .contiguous(memory_format=memory_format)
    )
    w = (
        torch.randn(channels, channels, 3, 3, generator=g)
        .to(dtype)
        .contiguous(memory_format=memory_format)
    )
    sec = _bench(lambda: F.conv2d(x, w, padding=1), repeats=repeats)
    flops = 2 * batch * channels * channels * 9 * hw * hw
    return flops / sec / 1e9


def roofs(*, quick: bool = False) -> dict[str, float]:
    """``{"fp32 matmul": GFLOP/s, "bf16 matmul": ..., "fp32 conv NCHW": ..., ...}``.

    On a CPU without native bf16 (no AVX512-BF16 or AMX) bf16 is emulated at a few GFLOP/s, on one
    thread: its kernels are measured at the quick sizes only (the full ones take minutes there).
    """
    from strop.precision import resolve

    native_bf16 = resolve("auto", "cpu").name == "bf16"  # auto picks bf16 where it is native
    sizes = (1024,) if quick else (1024, 2048)
    reps = 3 if quick else 5
    batch = 8 if quick else 32
    bf16_sizes, bf16_reps, bf16_batch = (sizes, reps, batch) if native_bf16 else ((1024,), 2, 4)
    out = {
        "fp32 matmul": max(matmul_gflops(n, torch.float32, repeats=reps) for n in sizes),
        "bf16 matmul": max(matmul_gflops(n, torch.bfloat16, repeats=bf16_reps) for n in bf16_sizes),
    }
    for dtype, fmt, b, r in (
        (torch.float32, torch.contiguous_format, batch, reps),
        (torch.float32, torch.channels_last, batch, reps),
        (torch.bfloat16, torch.contiguous_format, bf16_batch, bf16_reps),
        (torch.bfloat16, torch.channels_last, bf16_batch, bf16_reps),
    ):
        name = "fp32" if dtype == torch.float32 else "bf16"
        layout = "NCHW" if fmt == torch.contiguous_format else "channels_last"
        out[f"{name} conv3x3 {layout}"] = conv_gflops(dtype, fmt, batch=b, repeats=r)
    return out


def step_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one training step (forward + loss + backward) of ``model`` on ``(x, y)``.

    Counted by ``FlopCounterMode`` (matmuls and convolutions, 2 per multiply-add); gradients of
    frozen parameters are not computed, so a frozen backbone counts its forward only.
    """
    was_training = model.training
    model.eval()  # BatchNorm's FLOPs are not counted either way; eval allows a batch of one
    with FlopCounterMode(display=False) as counter:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return int(counter.get_total_flops())


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    r = roofs(quick=args.quick)
    return markdown_table(["kernel", "GFLOP/s"], [[k, f"{v:,.0f}"] for k, v in r.items()])


if __name__ == "__main__":
    print(main(sys.argv[1:]))
