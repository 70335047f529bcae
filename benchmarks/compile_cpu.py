"""Does torch.compile pay on this CPU? resnet18 (full training step, SGD momentum), one thread:
the median eager step, the median compiled step and the compile cost (first two compiled steps),
in one process, eager measured before and after. Prints what a 100/500/2000-step fit would take
each way.

``python benchmarks/compile_cpu.py [--precision auto|fp32|bf16] [--memory-format
auto|contiguous|channels_last] [--size 224] [--batch 16]`` (about 2-4 minutes; no GPU used).
``auto`` resolves as ``strop`` does on this CPU (``strop.precision.resolve`` and
``resolve_memory_format``): bf16 + channels_last where the CPU has native bf16, else fp32,
contiguous below 128 px and channels_last from 128 px, so the default measures the step
``compile: auto`` would be deciding about. (The AVX2 figure below was measured in fp32 NCHW,
before fp32 training from 128 px went channels_last.)

Measured on AMD EPYC CPUs without AMX (docs/config.md, BENCHMARKS.md): with AVX512-BF16, bf16 +
channels_last at 224 px, compiled 0.86× eager after a 49 s compile; with AVX2 only, fp32 at 224 px:
see BENCHMARKS.md. These are why ``compile: auto`` never compiles on a CPU without AMX.
"""

import argparse
import contextlib
import statistics
import time

import torch
import torchvision

from strop.precision import cpu_flags, resolve, resolve_memory_format


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument(
        "--memory-format", default="auto", choices=("auto", "contiguous", "channels_last")
    )
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    prec = resolve(args.precision, "cpu")
    fmt = resolve_memory_format(args.memory_format, "cpu", prec, image_size=args.size)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    flags = sorted(f for f in cpu_flags() if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16"))
    print(
        f"resnet18 {args.size}px batch {args.batch}, {prec.name}, "
        f"{'channels_last' if fmt == torch.channels_last else 'contiguous'}, 1 thread; "
        f"cpu flags: {', '.join(flags)}; torch {torch.__version__}"
    )

    def make():
        m = torchvision.models.resnet18(num_classes=10).to(memory_format=fmt)
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
        return m, opt

    x = torch.randn(args.batch, 3, args.size, args.size).to(memory_format=fmt)
    y = torch.randint(0, 10, (args.batch,))

    def autocast():
        if prec.autocast_enabled:
            return torch.autocast("cpu", dtype=prec.dtype)
        return contextlib.nullcontext()

    def step(m, opt):
        with autocast():
            loss = torch.nn.functional.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def timed(fn, n):
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    m, opt = make()
    step(m, opt)
    eager = timed(lambda: step(m, opt), 6)
    mc, optc = make()
    cm = torch.compile(mc)
    t0 = time.perf_counter()
    step(cm, optc)
    step(cm, optc)
    first = time.perf_counter() - t0
    comp = timed(lambda: step(cm, optc), 6)
    eager2 = timed(lambda: step(m, opt), 6)
    e = (eager + eager2) / 2
    print(
        f"eager {e:.3f} s/step (runs {eager:.3f}, {eager2:.3f}); compiled {comp:.3f} s/step -> {e / comp:.2f}x; first two compiled steps {first:.1f} s (compile)"
    )
    for steps in (100, 500, 2000):
        print(
            f"  a {steps}-step fit: eager {steps * e:.0f} s, compiled {first + (steps - 2) * comp:.0f} s -> {steps * e / (first + (steps - 2) * comp):.2f}x"
        )


if __name__ == "__main__":
    main()
