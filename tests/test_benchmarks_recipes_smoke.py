"""benchmarks/recipes.py on a tiny budget: strop's candidates only (fastai is a bench-only extra).

No timing or accuracy assertions (CI is not a lab, and 16-pixel digits after two epochs are near
chance): what is checked is the benchmark's bookkeeping against independent sources — strop's own
metrics.csv, hand-computed medians and ratios — and that an interrupted run reports nothing.
"""

from __future__ import annotations

import csv
import math
import os
import signal
import statistics
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def recipes():
    sys.path.insert(0, str(BENCH))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    import recipes as mod

    yield mod
    torch.set_num_threads(n)
    sys.path.remove(str(BENCH))


# the data and source model of --quick (trained once per module, shared by the tests below)
TINY = {
    "shots": [5],
    "seeds": [0],
    "epochs": 2,
    "image_size": 16,
    "source_epochs": 2,
    "per_class": 40,
}


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("recipes")


def _strop_candidates(mod):
    cands = [c for c in mod.CANDIDATES if c.kind == "strop"]
    assert {c.name for c in cands} >= {
        "strop frozen backbone (chapter)",
        "strop docs today",
        "strop best",
    }
    return cands


def test_strop_candidates_run_and_the_table_matches_strops_metrics_csv(recipes, out):
    cands = _strop_candidates(recipes)
    runs = recipes.run(cands, out=out, keep_runs=True, log=lambda m: None, **TINY)
    assert [r.candidate for r in runs] == [c.name for c in cands]
    for r in runs:
        # the benchmark's per-epoch trace against the val_accuracy strop logged itself
        with (out / "runs" / recipes.run_dir_name(5, 0, r.candidate) / "metrics.csv").open() as f:
            rows = list(csv.DictReader(f))
        logged = [float(row["val_accuracy"]) for row in rows if row.get("val_accuracy")]
        cand = next(c for c in cands if c.name == r.candidate)
        epochs = cand.config.get("epochs", TINY["epochs"])  # a candidate may fix its own epochs
        assert [a for _, a in r.trace] == pytest.approx(logged) and len(logged) == epochs
        assert r.best == max(logged) and r.last == logged[-1]
        times = [t for t, _ in r.trace]
        assert times == sorted(times) and 0 < times[-1] <= r.seconds
    # the docs' recipe really ran as documented: the run folder's resolved config says so
    import yaml

    cfg = yaml.safe_load(
        (out / "runs" / recipes.run_dir_name(5, 0, "strop docs today") / "config.yaml").read_text()
    )
    assert cfg["optimizer"]["name"] == "adamw" and cfg["optimizer"]["lr"] == 1e-4
    assert cfg["optimizer"]["head_lr_mult"] == 10.0 and cfg["gradual_unfreeze"]["lr_mult"] == 0.1
    assert cfg["model"]["weights"].endswith(".pth") and cfg["data"]["root"].endswith("5shots-seed0")
    # the split: 5 per digit for training, the other 35 of 40 for validation, no image in both
    root = Path(cfg["data"]["root"])
    for d in recipes.TARGET_DIGITS:
        train, val = ({p.name for p in (root / part / d).iterdir()} for part in ("train", "val"))
        assert len(train) == 5 and len(val) == 35 and not train & val


def _run(recipes, name, seed, seconds, accs):
    step = seconds / len(accs)
    trace = [((i + 1) * step, a) for i, a in enumerate(accs)]
    return recipes.Run(name, 20, seed, max(accs), accs[-1], seconds, trace)


def test_summary_medians_ratios_and_time_to_reference_by_hand(recipes):
    fa, mine = recipes.FASTAI, "mine"
    runs = [
        _run(recipes, fa, 0, 100.0, [0.5, 0.8, 0.7]),
        _run(recipes, mine, 0, 30.0, [0.6, 0.9, 0.9]),  # reaches 0.8 at its 2nd epoch: 20 s
        _run(recipes, fa, 1, 200.0, [0.6, 0.9]),
        _run(recipes, mine, 1, 50.0, [0.85, 0.7]),  # at its 1st epoch: 25 s
        _run(recipes, fa, 2, 120.0, [0.85, 0.7]),
        _run(recipes, mine, 2, 90.0, [0.5, 0.75]),  # never reaches 0.85
    ]
    header, rows = recipes.summarize(runs)
    assert header[5] == f"wall / {fa}"
    by = {r[1]: r for r in rows}
    target = statistics.median([0.8, 0.9, 0.85])  # fastai's median best: 0.85
    assert (
        by[fa][2] == "0.850 [0.800, 0.900]" and by[fa][3] == "0.700 [0.700, 0.900]"
    )  # lasts 0.7, 0.9, 0.7
    assert by[mine][2] == "0.850 [0.750, 0.900]"
    # per-seed ratios 0.30, 0.25, 0.75 -> median 0.30
    assert by[mine][5] == "0.30 [0.25, 0.75]"
    # fastai itself: never above 0.8 (seed 0); seed 1 at its 2nd epoch, 200 s; seed 2 at its 1st, 60 s
    assert by[fa][6] == f"130 (2/3 seeds reach {target:.3f})"  # median of 200 s and 60 s
    assert by[mine][6] == f"{statistics.median([20.0, 25.0]):.0f} (2/3 seeds reach {target:.3f})"
    assert recipes.Run(mine, 5, 0, 0.5, 0.5, 1.0, [(1.0, 0.5)]).time_to(0.6) == math.inf


def test_merge_keeps_nested_defaults_and_none_drops_a_key(recipes, tmp_path):
    cand = recipes.strop_candidate(
        "x", optimizer={"lr": 0.5}, gradual_unfreeze=None, data={"augment": "crop"}
    )
    cfg = recipes.strop_config(
        cand, tmp_path, tmp_path / "w.pth", image_size=16, epochs=2, seed=1, output=tmp_path / "o"
    )
    assert cfg["optimizer"] == {"lr": 0.5} and "gradual_unfreeze" not in cfg
    assert cfg["data"] == {
        "batch_size": 32,
        "cache": "memory",
        "num_workers": 0,
        "root": str(tmp_path),
        "image_size": 16,
        "augment": "crop",
    }
    from strop.train import config_from_dict

    assert config_from_dict(cfg).optimizer.lr == 0.5  # what the benchmark builds is a valid config
    assert recipes.BASE["data"] == {
        "batch_size": 32,
        "cache": "memory",
        "num_workers": 0,
    }  # not mutated


def test_sigint_during_a_strop_run_stops_the_benchmark_and_reports_nothing(
    recipes, out, tmp_path, monkeypatch
):
    import strop.train

    real_fit = strop.train.fit

    class SigintAtFirstBatch:
        def on_batch_end(self, state, logs):
            os.kill(os.getpid(), signal.SIGINT)

    def fit(config, *, callbacks=(), log=None, **kw):
        extra = (
            [SigintAtFirstBatch()] if "shots-seed" in config.output else []
        )  # not the source run
        return real_fit(config, callbacks=[*callbacks, *extra], log=log, **kw)

    monkeypatch.setattr(strop.train, "fit", fit)
    md = tmp_path / "table.md"
    with pytest.raises(SystemExit) as exc:
        recipes.main(
            ["--quick", "--only", "strop docs today", "--out", str(out), "--markdown", str(md)]
        )
    assert exc.value.code == 130
    assert not md.exists() and not md.with_suffix(".json").exists()


def test_a_signal_outside_strop_raises_bench_interrupted(recipes):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(recipes.BenchInterrupted, match="SIGTERM"), recipes._stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs at the next bytecode boundary
            pass
    assert signal.getsignal(signal.SIGTERM) is before  # the benchmark's handler is gone again
