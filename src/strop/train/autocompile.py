"""``compile: false | true | auto``: whether to ``torch.compile`` the model, and a safe fallback.

``auto`` compiles when the run is long enough to repay the compile time. A short probe times a
few eager forward+backward passes on one real batch (BatchNorm statistics, gradients and the RNG
are put back, so the probe changes nothing the run computes); then::

    saved = planned_steps × eager_step_s × (1 − 1 / expected_speedup)
    compile  when  saved > estimated compile cost

The compile cost is estimated from the model's size (``COLD_SECONDS_PER_MODULE`` per leaf
module) and is cut to ``WARM_FRACTION`` of that when the persistent cache already holds compiled
graphs. ``expected_speedup`` is a conservative prior (``EXPECTED_SPEEDUP``), not a promise;
docs/config.md says where these constants come from. The decision and every number go into ``run.json``.

When compiling (``true``, or ``auto`` deciding so), the compile is done at once on the probe
batch, forward and backward, and timed; any failure there (no C++ compiler, an unsupported op)
is logged and the run trains eagerly. Compiled graphs are cached under :func:`cache_dir`, so a
second run of the same model does not pay again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "CompileDecision",
    "cache_dir",
    "decide",
    "estimate_compile_seconds",
    "expected_speedup",
    "maybe_compile",
]

COLD_SECONDS_PER_MODULE = 0.6
WARM_FRACTION = 0.25
EXPECTED_SPEEDUP = 1.15
PROBE_STEPS = 3


def cache_dir(environ: dict[str, str] | None = None) -> Path:
    """Where compiled graphs are kept: ``$STROP_CACHE/inductor``, else
    ``$XDG_CACHE_HOME/strop/inductor``, else ``~/.cache/strop/inductor``."""
    from strop._cache import user_cache_dir

    return user_cache_dir("inductor", environ)


@dataclass
class CompileDecision:
    """What ``compile`` resolved to and why, with the numbers (for ``run.json``)."""

    compile: bool
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)


def estimate_compile_seconds(model: nn.Module, *, warm: bool) -> float:
    """Estimated compile time of ``model`` (forward + backward graphs), see the module doc."""
    leaves = sum(1 for m in model.modules() if next(m.children(), None) is None)
    cold = COLD_SECONDS_PER_MODULE * max(leaves, 1)
    return cold * (WARM_FRACTION if warm else 1.0)


def decide(
    eager_step_s: float,
    planned_steps: int,
    compile_s: float,
    *,
    speedup: float = EXPECTED_SPEEDUP,
) -> CompileDecision:
    """``auto``'s rule: compile when the time saved over the planned steps exceeds the compile
    cost (see the module doc)."""
    saved = planned_steps * eager_step_s * (1.0 - 1.0 / speedup)
    numbers = {
        "eager_step_s": round(eager_step_s, 6),
        "planned_steps": planned_steps,
        "estimated_compile_s": round(compile_s, 3),
        "expected_speedup": speedup,
        "estimated_saving_s": round(saved, 3),
    }
    if saved > compile_s:
        why = (
            f"auto: compiled — {planned_steps} steps × {eager_step_s:.3f}s eager would save "
            f"~{saved:.0f}s at {speedup}×, more than the ~{compile_s:.0f}s compile"
        )
        return CompileDecision(True, why, numbers)
    why = (
        f"auto: eager — {planned_steps} steps × {eager_step_s:.3f}s eager would save only "
        f"~{saved:.0f}s at {speedup}×, less than the ~{compile_s:.0f}s compile"
    )
    return CompileDecision(False, why, numbers)


def _cache_is_warm(path: Path) -> bool:
    return path.is_dir() and any(path.rglob("*.py"))


def _one_pass(run: Any, module: nn.Module, batch: Any) -> None:
    with run.amp.autocast():
        loss, _ = run.task.forward_loss(module, run.loss_fn, batch, run.config.model.aux_weight)
    loss.backward()


def _restoring(run: Any, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` and put back what a training pass changes: buffers, gradients, RNG, mode."""
    buffers = list(run.model.buffers())
    saved = [b.detach().clone() for b in buffers]
    rng = torch.get_rng_state()
    try:
        return fn()
    finally:
        with torch.no_grad():
            for b, old in zip(buffers, saved, strict=True):
                b.copy_(old)
        torch.set_rng_state(rng)
        run.optimizer.zero_grad(set_to_none=True)


def _probe(run: Any, batch: Any, steps: int = PROBE_STEPS) -> float:
    """Median seconds of an eager forward+backward on ``batch`` (after one warm-up pass)."""

    def timed() -> float:
        run.module.train()
        times = []
        for i in range(steps + 1):
            t0 = time.perf_counter()
            _one_pass(run, run.module, batch)
            if i:
                times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]

    return _restoring(run, timed)


def expected_speedup(device: torch.device) -> tuple[float, str]:
    """The prior ``auto`` uses on ``device``, and why: ``EXPECTED_SPEEDUP`` on CUDA and on CPUs
    with AMX (where compiled bf16 steps were measured faster), 1.0 — never compile — on other
    CPUs, where a compiled resnet18 step was measured no faster than eager (docs/config.md)."""
    if device.type == "cuda":
        return EXPECTED_SPEEDUP, "CUDA"
    from strop.precision import cpu_flags

    if "amx_bf16" in cpu_flags():
        return EXPECTED_SPEEDUP, "CPU with AMX"
    return 1.0, "CPU without AMX: compiled steps measured no faster than eager there"


def maybe_compile(
    run: Any,
    log: Callable[[str], None],
    *,
    compiler: Callable[[nn.Module], nn.Module] | None = None,
    probe: Callable[[Any, Any], float] | None = None,
) -> None:
    """Resolve ``run.config.compile`` for a built run: set ``run.module`` (compiled or not) and
    ``run.choices`` (``compile``, ``compile_reason``, ``compile_numbers``, ``compile_fallback``)."""
    mode, choices = run.config.compile, run.choices
    if mode is False or mode == "false" or choices.get("feature_cache"):
        choices["compile_reason"] = (
            "off" if not choices.get("feature_cache") else "not with the feature cache"
        )
        return
    batch = run.task.to_device(next(iter(run.loader)), run.device, run.memory_format)
    folder = cache_dir()
    warm = _cache_is_warm(folder)
    if mode == "auto":
        eager = (probe or _probe)(run, batch)
        planned = run.config.epochs * run.batches_per_epoch  # forward+backward passes
        speedup, basis = expected_speedup(run.device)
        cost = estimate_compile_seconds(run.model, warm=warm)
        decision = decide(eager, planned, cost, speedup=speedup)
        decision.numbers["speedup_basis"] = basis
        if speedup <= 1.0:
            decision.reason += f" ({basis})"
    else:
        decision = CompileDecision(True, "compile: true", {})
    decision.numbers["cache_dir"], decision.numbers["cache_warm"] = str(folder), warm
    choices["compile_reason"], choices["compile_numbers"] = decision.reason, decision.numbers
    log(f"compile: {decision.reason}")
    if not decision.compile:
        return
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))
    compiled, t0 = None, time.perf_counter()
    try:
        compiled = (compiler or torch.compile)(run.module)
        _restoring(run, lambda: _one_pass(run, compiled, batch))  # compile now, timed
    except Exception as exc:  # compile support varies by platform; training must not stop
        choices["compile_fallback"] = f"{type(exc).__name__}: {exc}"[:500]
        log(f"compile: failed ({type(exc).__name__}: {exc}); training eagerly")
        return
    decision.numbers["compile_s"] = round(time.perf_counter() - t0, 3)
    run.module, choices["compile"] = compiled, True
