"""compile: false | true | auto — the decision rule on injected timings, the cache folder, the
logged fallback. No test runs a real torch.compile: a cold inductor compile of even a 2-layer
model took ~105 s on the 2-core test machine (6.8 s with a warm cache), too slow for the suite."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from strop.train import autocompile as ac
from strop.train import fit
from strop.train.checkpoint import load_checkpoint


def test_cache_dir_honours_strop_cache_then_xdg_then_home():
    assert ac.cache_dir({"STROP_CACHE": "/c", "XDG_CACHE_HOME": "/x"}) == Path("/c/inductor")
    assert ac.cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/strop/inductor")
    assert ac.cache_dir({}) == Path.home() / ".cache" / "strop" / "inductor"


@pytest.mark.parametrize(
    ("eager", "steps", "cost", "speedup", "expected", "saving"),
    [
        # saving = steps × eager × (1 − 1/speedup), computed by hand
        (0.1, 1000, 15.0, 1.25, True, 20.0),  # 1000 × 0.1 × 0.2 = 20 > 15
        (0.1, 1000, 25.0, 1.25, False, 20.0),  # 20 < 25
        (0.5, 10, 1.0, 2.0, True, 2.5),  # 10 × 0.5 × 0.5 = 2.5 > 1
        (0.5, 10, 3.0, 2.0, False, 2.5),
    ],
)
def test_auto_compiles_exactly_when_the_saving_beats_the_compile(
    eager, steps, cost, speedup, expected, saving
):
    d = ac.decide(eager, steps, cost, speedup=speedup)
    assert d.compile is expected
    assert d.numbers["estimated_saving_s"] == pytest.approx(saving)
    assert d.numbers["eager_step_s"] == eager and d.numbers["planned_steps"] == steps
    assert d.reason.startswith("auto: compiled" if expected else "auto: eager")


def test_compile_cost_estimate_counts_leaf_modules_and_a_warm_cache():
    two_layer = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))  # 3 leaf modules
    assert ac.estimate_compile_seconds(two_layer, warm=False) == pytest.approx(
        3 * ac.COLD_SECONDS_PER_MODULE
    )
    assert ac.estimate_compile_seconds(two_layer, warm=True) == pytest.approx(
        3 * ac.COLD_SECONDS_PER_MODULE * ac.WARM_FRACTION
    )


def test_config_accepts_auto_and_names_the_choices(tiny_config, digits_root, tmp_path):
    assert tiny_config(digits_root, tmp_path, compile="auto").compile == "auto"
    assert tiny_config(digits_root, tmp_path, compile=True).compile is True
    with pytest.raises(ValueError, match="compile"):
        tiny_config(digits_root, tmp_path, compile="sometimes")


def _model(out):
    return load_checkpoint(out / "checkpoints" / "last.pt")["model"]


def test_auto_on_a_long_run_compiles_and_a_failing_compile_falls_back_unchanged(
    tiny_config, digits_root, tmp_path, monkeypatch
):
    """A slow probe (injected: 1000 s per step) makes auto compile; the compiler fails (as it does
    without a C++ toolchain); the run trains eagerly, logs it, and — the probe having put back
    BatchNorm statistics, gradients and the RNG — ends with exactly the weights of compile: false."""
    monkeypatch.setenv("STROP_CACHE", str(tmp_path / "cache"))
    ref = tmp_path / "ref"
    fit(tiny_config(digits_root, ref, epochs=1), log=lambda m: None)

    real_probe = ac._probe
    probed = []

    def slow_probe(run, batch):
        probed.append(real_probe(run, batch))  # the real probe runs (and must change nothing)
        return 1000.0

    def broken_compiler(module):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(ac, "_probe", slow_probe)
    monkeypatch.setattr(ac, "expected_speedup", lambda device: (1.15, "as on an AMX CPU"))
    monkeypatch.setattr(torch, "compile", broken_compiler)
    lines = []
    out = tmp_path / "auto"
    res = fit(tiny_config(digits_root, out, epochs=1, compile="auto"), log=lines.append)
    choices = json.loads((out / "run.json").read_text())
    assert probed and probed[0] > 0
    assert res.choices["compile"] is False and choices["compile"] is False
    assert "no C++ compiler found" in choices["compile_fallback"]
    assert choices["compile_numbers"]["eager_step_s"] == 1000.0
    assert choices["compile_numbers"]["cache_dir"] == str(tmp_path / "cache" / "inductor")
    assert choices["compile_reason"].startswith("auto: compiled")
    assert any(
        m.startswith("compile: failed (RuntimeError") and "training eagerly" in m for m in lines
    )
    a, b = _model(ref), _model(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_auto_on_a_short_run_stays_eager_without_trying(
    tiny_config, digits_root, tmp_path, monkeypatch
):
    monkeypatch.setenv("STROP_CACHE", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(torch, "compile", lambda m: calls.append(m) or m)
    monkeypatch.setattr(ac, "_probe", lambda run, batch: 1e-4)
    out = tmp_path / "short"
    fit(tiny_config(digits_root, out, epochs=1, compile="auto"), log=lambda m: None)
    choices = json.loads((out / "run.json").read_text())
    assert calls == [] and choices["compile"] is False and "compile_fallback" not in choices
    # 1 epoch of ceil(45 / 16) = 3 batches at 1e-4 s cannot repay any compile
    assert choices["compile_numbers"]["planned_steps"] == 3
    assert choices["compile_reason"].startswith("auto: eager")


def test_compile_true_compiles_at_once_and_times_it(
    tiny_config, digits_root, tmp_path, monkeypatch
):
    monkeypatch.setenv("STROP_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_compile(module):  # stands in for torch.compile: returns a callable module
        calls.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    out = tmp_path / "true"
    fit(tiny_config(digits_root, out, epochs=1, compile=True), log=lambda m: None)
    choices = json.loads((out / "run.json").read_text())
    assert len(calls) == 1 and choices["compile"] is True
    assert choices["compile_numbers"]["compile_s"] >= 0


@pytest.mark.parametrize(
    ("device", "flags", "speedup"),
    [
        ("cuda", frozenset(), ac.EXPECTED_SPEEDUP),
        ("cpu", frozenset({"avx2", "avx512_bf16", "amx_bf16"}), ac.EXPECTED_SPEEDUP),
        ("cpu", frozenset({"avx2", "avx512_bf16"}), 1.0),
        ("cpu", frozenset({"avx2"}), 1.0),
    ],
)
def test_the_speedup_prior_follows_the_device(monkeypatch, device, flags, speedup):
    import strop.precision as precision

    monkeypatch.setattr(precision, "_cpu_flags", lambda: flags)
    assert ac.expected_speedup(torch.device(device))[0] == speedup


def test_auto_never_compiles_where_the_prior_is_no_speedup():
    # a run of a million 1-second steps saves nothing at 1.0x: eager, whatever the length
    d = ac.decide(1.0, 1_000_000, 30.0, speedup=1.0)
    assert d.compile is False and d.numbers["estimated_saving_s"] == 0.0
