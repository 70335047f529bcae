"""benchmarks/auto_choices.py's bookkeeping: candidates, what auto picked, ratios, the verdict.

The fits are replaced by a fake ``run_fit`` with known step times (no timing in CI)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def ac():
    sys.path.insert(0, str(BENCH))
    import auto_choices

    yield auto_choices
    sys.path.remove(str(BENCH))


def test_candidates_cover_every_fixed_choice_then_auto(ac):
    plain = ac.candidates()
    assert [c.label for c in plain] == [
        "fp32, contiguous, compile false",
        "fp32, channels_last, compile false",
        "bf16, contiguous, compile false",
        "bf16, channels_last, compile false",
        "auto",
    ]
    with_compile = ac.candidates(compile=True)
    assert len(with_compile) == 9 and len(set(with_compile)) == 9
    assert with_compile[-1] == ac.Choice("auto", "auto", "auto")
    assert sum(c.compile is True for c in with_compile) == 4
    fp32 = ac.candidates(precisions=["fp32"])
    assert [c.label for c in fp32] == [
        "fp32, contiguous, compile false",
        "fp32, channels_last, compile false",
        "auto",
    ]
    with pytest.raises(ValueError, match=r"precisions must be some of fp32, bf16; got \['fp16'\]"):
        ac.candidates(precisions=["fp16"])


def test_picked_maps_the_fit_choices(ac):
    got = ac.picked({"precision": "bf16", "memory_format": "channels_last", "compile": False})
    assert got == ac.Choice("bf16", "channels_last", False)
    got = ac.picked({"precision": "fp32", "memory_format": "contiguous_format", "compile": True})
    assert got == ac.Choice("fp32", "contiguous", True)
    with pytest.raises(ValueError, match="unexpected memory_format 'preserve_format'"):
        ac.picked({"precision": "fp32", "memory_format": "preserve_format", "compile": False})


def _outcome(ac, choice, step_s, choices=None):
    return ac.Outcome(
        choice, times=list(step_s), round_medians=[min(step_s), max(step_s)], choices=choices or {}
    )


def test_summarize_ratio_noise_and_verdict(ac):
    C = ac.Choice
    fixed = [
        _outcome(ac, C("fp32", "contiguous", False), [0.40, 0.40, 0.40]),  # 80 img/s
        _outcome(ac, C("bf16", "channels_last", False), [0.25, 0.20, 0.20]),  # 160 img/s: best
        _outcome(ac, C("fp32", "channels_last", False), [0.32]),  # 100 img/s
    ]
    auto = _outcome(
        ac,
        C("auto", "auto", False),
        [0.32, 0.32],
        {"precision": "fp32", "memory_format": "channels_last", "compile": False},
    )
    rows, verdict = ac.summarize([*fixed, auto])
    assert verdict["best"] == C("bf16", "channels_last", False)
    assert verdict["auto"] == C("fp32", "channels_last", False)
    assert verdict["ratio"] == pytest.approx(100 / 160)
    assert verdict["noise"] == pytest.approx(1.0)  # auto ran as fast as its fixed twin
    assert verdict["met"] is False
    assert rows[1] == ["bf16, channels_last, compile false", "160.0", "128.0–160.0", "1.00"]
    assert rows[-1][0] == "auto → fp32, channels_last, compile false" and rows[-1][3] == "0.62"

    auto_fast = _outcome(
        ac,
        C("auto", "auto", False),
        [0.21],
        {"precision": "bf16", "memory_format": "channels_last", "compile": False},
    )
    _, verdict = ac.summarize([*fixed, auto_fast])
    assert verdict["ratio"] == pytest.approx((32 / 0.21) / 160) and verdict["met"] is True
    assert verdict["noise"] == pytest.approx((32 / 0.21) / 160)

    untried = _outcome(
        ac,
        C("auto", "auto", False),
        [0.21],
        {"precision": "bf16", "memory_format": "contiguous_format", "compile": True},
    )
    assert ac.summarize([*fixed, untried])[1]["noise"] is None  # its twin was not measured
    with pytest.raises(ValueError, match="need one auto and at least one fixed outcome"):
        ac.summarize(fixed)


def test_run_interleaves_drops_warmup_and_reports(ac, monkeypatch, tmp_path):
    calls = []
    step = {"fp32": 0.4, "bf16": 0.2}

    def fake_run_fit(config, *, data=None, callbacks=()):
        prec = config["precision"]
        chose = "bf16" if prec == "auto" else prec
        fmt = "channels_last" if prec == "auto" else config["memory_format"]
        calls.append((prec, config["memory_format"]))
        base = step[chose] * (1.0 if fmt == "channels_last" else 1.25)
        times = {0: [9.0, 9.0] + [base] * 4}  # two slow warm-up steps, dropped
        choices = {
            "precision": chose,
            "compile": False,
            "memory_format": "channels_last" if fmt == "channels_last" else "contiguous_format",
            "precision_reason": "fake",
        }
        return SimpleNamespace(choices=choices), times, []

    monkeypatch.setattr(ac, "run_fit", fake_run_fit)
    md, outcomes, verdict = ac.run(size=8, steps=6, rounds=2, data=("train", "val", 10))
    assert len(calls) == 10
    first = [("fp32", "contiguous"), ("fp32", "channels_last"), ("bf16", "contiguous")]
    first += [("bf16", "channels_last"), ("auto", "auto")]
    # round 2: rotated by one, the rest reversed, so auto no longer follows bf16, channels_last
    assert calls[:5] == first and calls[5:] == [first[1], first[0], first[4], first[3], first[2]]
    assert all(len(o.times) == 8 and max(o.times) < 1 for o in outcomes)  # warm-up dropped
    assert verdict["best"] == ac.Choice("bf16", "channels_last", False)
    assert verdict["ratio"] == pytest.approx(1.0) and verdict["met"]
    assert "`auto` picked **bf16, channels_last, compile false**" in md
    assert "| bf16, contiguous, compile false | 128.0 | 128.0–128.0 | 0.80 |" in md
