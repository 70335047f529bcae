"""benchmarks/optimizer_impl.py runs (tiny parameters; no timing assertion: CI is not a lab)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "optimizer_impl.py"


def test_step_time_runs_every_implementation():
    spec = importlib.util.spec_from_file_location("optimizer_impl", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    params = [torch.randn(8, 8, requires_grad=True), torch.randn(8, requires_grad=True)]
    for impl in ({"foreach": False}, {"foreach": True}, {"fused": True}):
        t = bench.step_time(
            lambda ps, impl=impl: torch.optim.AdamW(ps, lr=1e-3, **impl), params, steps=2, repeats=1
        )
        assert math.isfinite(t) and t > 0
