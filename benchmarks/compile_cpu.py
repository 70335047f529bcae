"""Does torch.compile pay on this CPU? resnet18 at 224 px, bf16 autocast + channels_last, batch 16,
one thread: the median eager step, the median compiled step and the compile cost (first two
compiled steps), in one process, eager measured before and after. Prints what a 100/500/2000-step
fit would take each way. ``python benchmarks/compile_cpu.py`` (about 2 minutes; no GPU used).

Measured on an AMD EPYC without AMX (AVX512-BF16): compiled 0.86x eager after a 49 s compile, the
reason ``compile: auto`` never compiles on such a CPU (docs/config.md).
"""

import statistics
import time

import torch
import torchvision


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)

    def make():
        m = torchvision.models.resnet18(num_classes=10).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
        return m, opt

    x = torch.randn(16, 3, 224, 224).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,))

    def step(m, opt):
        with torch.autocast("cpu", dtype=torch.bfloat16):
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
