"""Step time of torch optimizers per implementation (for-loop, foreach, fused) on resnet18's
parameters, in one process so the ratios are comparable on a loaded machine.

    OMP_NUM_THREADS=1 python benchmarks/optimizer_impl.py [--threads 1] [--steps 30]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torchvision


def step_time(make, params, steps: int, repeats: int) -> float:
    opt = make(params)
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    for _ in range(3):  # warm-up (state allocation)
        opt.step()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.step()
        best = min(best, (time.perf_counter() - t0) / steps)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = [
        p.detach().clone().requires_grad_(True) for p in torchvision.models.resnet18().parameters()
    ]
    n = sum(p.numel() for p in params)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{args.threads} thread(s), resnet18: {len(params)} tensors, {n / 1e6:.1f} M parameters"
    )
    cases = {
        "AdamW": lambda impl: lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.05, **impl),
        "SGD": lambda impl: (
            lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, weight_decay=1e-4, **impl)
        ),
    }
    impls = {"for_loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    for name, make in cases.items():
        times = {k: step_time(make(v), params, args.steps, args.repeats) for k, v in impls.items()}
        base = times["for_loop"]
        line = ", ".join(f"{k} {t * 1e3:.2f} ms ({base / t:.2f}x)" for k, t in times.items())
        print(f"{name}: {line}")


if __name__ == "__main__":
    main()
