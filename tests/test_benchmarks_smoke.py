"""The benchmark scripts import and run on tiny settings (no timing assertions: CI is not a lab)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module", autouse=True)
def _bench_path():
    sys.path.insert(0, str(BENCH))
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: one thread per test process
    yield
    torch.set_num_threads(n)
    sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def tiny_digits(tmp_path_factory):
    from strop.data import write_digits

    return write_digits(tmp_path_factory.mktemp("digits"), digits=[0, 1, 2], per_class=12, size=16)


@pytest.fixture(scope="module")
def tiny_data(tiny_digits):
    from common import in_memory

    return in_memory(tiny_digits, size=16, n=64, val=8)


def test_round_order_rotates_and_reverses_so_neighbours_change():
    from common import round_order

    items = ["a", "b", "c", "d"]
    orders = [round_order(items, r) for r in range(4)]
    assert orders == [list("abcd"), list("badc"), list("cdab"), list("dcba")]
    assert all(sorted(o) == items for o in orders)  # every candidate once a round
    assert sorted(o[0] for o in orders) == items  # and each runs first once in 4 rounds
    # over the rounds each candidate is preceded by more than one other (a rotation alone
    # would give every candidate the same predecessor, round after round)
    before = {x: {o[i - 1] for o in orders for i in range(1, len(o)) if o[i] == x} for x in items}
    assert all(len(v) >= 2 for v in before.values())
    assert [round_order(["a", "b"], r) for r in range(3)] == [["a", "b"], ["b", "a"], ["a", "b"]]
    assert round_order([], 3) == []


def test_step_flops_counts_a_linear_layer_exactly():
    import roofline

    # forward 2·N·in·out; backward computes only the weight gradient (the input needs none): as much again
    model = nn.Linear(8, 4, bias=False)
    x, y = torch.randn(5, 8), torch.tensor([0, 1, 2, 3, 0])
    assert roofline.step_flops(model, x, y) == 2 * (2 * 5 * 8 * 4)
    model.weight.requires_grad_(False)  # a frozen layer: forward only
    assert roofline.step_flops(model, x.requires_grad_(), y) == 2 * (2 * 5 * 8 * 4)
    assert roofline.matmul_gflops(32, torch.float32, repeats=1) > 0


def test_in_memory_data_repeats_to_the_requested_size(tiny_data):
    train, val, ncls = tiny_data
    assert ncls == 3
    assert train.tensors[0].shape == (64, 3, 16, 16)
    assert train.deterministic and len(val) == 3  # 1 of 12 per class held out (10%, rounded)
    # the first images come back cyclically, unchanged
    n_real = 36 - 3
    assert torch.equal(train.tensors[0][n_real], train.tensors[0][0])


def test_run_fit_collects_earlier_garbage_before_the_fit(tiny_data, tmp_path, monkeypatch):
    # a reference cycle left by an earlier fit is gone before the next fit starts (outside its
    # timing), not collected by a full collection inside it
    import weakref

    import common

    import strop.train

    class Node:
        pass

    real_fit, seen = strop.train.fit, []

    def recording_fit(*args, **kwargs):
        seen.append(gone() is None)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(strop.train, "fit", recording_fit)
    config = {
        "data": {"root": "(in-memory)", "image_size": 16, "batch_size": 16, "num_workers": 0},
        "model": {"name": "resnet18"},
        "epochs": 1,
        "output": str(tmp_path / "r"),
        "precision": "fp32",
        "memory_format": "contiguous",
    }
    common.gc.disable()  # no automatic collection may free it first
    try:
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle: only the cyclic collector frees it
        gone = weakref.ref(a)
        del a, b
        assert gone() is not None
        common.run_fit(config, data=tiny_data)
    finally:
        common.gc.enable()
    assert seen == [True]


def test_digits_folder_adds_jittered_copies(tmp_path):
    from common import digits_folder

    root = digits_folder(tmp_path, size=8, total=1800)
    assert sum(1 for _ in root.rglob("*.png")) == 1800


def test_training_candidates_run_and_report(tiny_data, tmp_path):
    import training

    hand = training.hand_loop(tiny_data, fast=True, frozen=False)
    assert len(hand.times) == 2 and all(t > 0 for t in hand.times)
    frozen = training.strop_fit(
        tiny_data, size=16, frozen=True, feature_cache="auto", out=tmp_path / "s"
    )
    assert frozen.extra["choices"]["feature_cache"] is True
    assert len(frozen.times) == 2 and frozen.extra["extract_images_per_s"] > 0
    pl = training.lightning_fit(tiny_data, frozen=False, channels_last=True, out=tmp_path / "pl")
    assert len(pl.times) == 2


def test_training_table_has_every_candidate(tiny_digits, tmp_path, monkeypatch):
    import common
    import training

    monkeypatch.setattr(training, "digits_folder", lambda root, size: tiny_digits)
    md, res = training.run(
        sizes=(16,),
        modes=("full",),
        steps={16: 1},
        warmup=1,
        rounds=1,
        names=("tutorial", "best", "strop"),
        roof_gflops=100.0,
        data_root=tmp_path,
    )
    assert set(res[(16, "full")]) == {"tutorial", "best", "strop"}
    for label in ("tutorial loop", "best hand loop", "strop fit (auto)"):
        assert label in md
    assert res[(16, "full")]["strop"].extra["flops"] > 0
    assert common.median(res[(16, "full")]["best"].times) > 0


def test_feature_cache_benchmark_gives_the_same_heads_within_rounding(tiny_digits):
    import feature_cache

    md, out = feature_cache.run(size=16, epochs=1, rounds=1, folder=tiny_digits)
    assert out["auto"]["cached"] and not out["off"]["cached"]
    # Not bit-identity: the cached features come from the extraction pass's batches, the uncached
    # run's from the training batches, and a CPU's convolution kernels may round differently per
    # batch shape (3.9e-8 apart on an AVX2-only CPU, 0 on AVX-512). The features then agree to a
    # few float32 ulps (6e-8 relative each) and the head, linear in them and trained a few SGD
    # steps, to the same relative order: 1e-5 of the head's scale leaves ~100x margin, and a run
    # with another seed lands 0.11 away (head entries up to 0.1), so the check is not vacuous.
    assert out["head_max_abs_diff"] <= 1e-5 * out["head_max_abs"]
    assert out["head_max_abs"] > 0
    assert "feature_cache: auto (cached)" in md
    # the headline is the round's own ratio: uncached seconds over cached, from the same round
    (off,), (auto,) = out["off"]["seconds_each"], out["auto"]["seconds_each"]
    assert out["speedup_per_round"] == [off / auto] and out["speedup"] == off / auto


def test_the_feature_cache_headline_pairs_each_round():
    import feature_cache

    # a slow spell in round 2 slows both of its runs: paired, it cancels; medians would not
    ratios = feature_cache.per_round_ratios([10.0, 20.0, 30.0], [2.0, 4.0, 10.0])
    assert ratios == [5.0, 5.0, 3.0]
    # ratios 5, 3, 10: their median is 5, where the ratio of the medians (20 / 2) would be 10
    paired = feature_cache.per_round_ratios([10.0, 30.0, 20.0], [2.0, 10.0, 2.0])
    assert feature_cache.median(paired) == 5.0
    with pytest.raises(ValueError, match="one cached and one uncached time per round; got 2"):
        feature_cache.per_round_ratios([1.0, 2.0], [1.0])


def test_data_pipeline_benchmark_runs_every_variant(tmp_path):
    import data_pipeline

    md, res = data_pipeline.run(size=16, per_class=8, rounds=1, data_root=tmp_path)
    for v in data_pipeline.VARIANTS:
        assert res[v]["epoch2"], v  # epoch 2 was timed
        assert data_pipeline.LABELS[v] in md
    # the loaders alone: decoding 32 PNGs a batch costs more than slicing decoded tensors
    (folder,), (tensors,) = res["loaders_ms"]["none"], res["loaders_ms"]["memory_tensors"]
    assert folder > tensors > 0
    assert "the loaders alone" in md


def test_run_writes_markdown_and_keeps_the_analysis(tmp_path, monkeypatch):
    import roofline
    import run

    monkeypatch.setattr(
        roofline, "roofs", lambda quick=False: {"fp32 matmul": 1.0, "bf16 matmul": 2.0}
    )
    out = tmp_path / "B.md"
    out.write_text(f"old tables\n{run.MARKER}\nkeep this analysis\n")
    report = run.main(["--only", "roof", "--output", str(out)])
    text = out.read_text()
    assert "old tables" not in text and "keep this analysis" in text
    assert "| bf16 matmul | 2 |" in report and "load average at end" in report
    with pytest.raises(SystemExit):
        run.main(["--only", "trainig", "--output", ""])


def test_the_roof_is_the_fastest_kernel_of_the_precision_auto_trains_in(monkeypatch):
    import run

    roofs = {
        "fp32 matmul": 87.0,
        "bf16 matmul": 900.0,
        "fp32 conv3x3 NCHW": 167.0,
        "fp32 conv3x3 channels_last": 191.0,
        "bf16 conv3x3 channels_last": 20.0,
    }
    monkeypatch.setattr(run, "ROOF_DTYPE", "fp32")
    assert run.roof_of(roofs) == 191.0  # the convolution outran the matmul
    monkeypatch.setattr(run, "ROOF_DTYPE", "bf16")
    assert run.roof_of(roofs) == 900.0


def test_gpu_script_smoke_runs_on_cpu_and_prints_every_candidate():
    import gpu

    md = gpu.main(["--device", "cpu", "--quick"])
    for label in (
        "hand fp32",
        "hand fp16 + GradScaler",
        "hand bf16",
        "hand bf16 + channels_last",
        "strop fit (auto, compile: False)",
    ):
        assert f"| {label} |" in md
    assert "CPU" in md and "not in the table" in md


def test_gpu_peak_table_matches_device_names():
    import gpu

    assert (
        gpu.peak_tflops("NVIDIA H200") == 989.0
        and gpu.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    )
    assert gpu.peak_tflops("NVIDIA L4") == 121.0 and gpu.peak_tflops("Some NPU") is None


def test_startup_benchmark_measures_every_process_and_its_ratios():
    import startup

    md, fig = startup.run(rounds=1)
    for key in (*startup.SIMPLE, "strop", "hand"):
        assert len(fig[key]["wall"]) == 1 and fig[key]["median"] > 0, key
        assert fig[key]["median_cpu"] > 0, key
    for who in ("strop", "hand"):  # phases in order, each after the process started
        wall = fig[who]["phases"]["wall"]
        assert 0 < wall["imported"] <= wall["built"] <= wall["first_step"] == fig[who]["median"]
    # an import of strop.train includes torch's: never faster than python alone
    assert fig["import_train"]["median"] > fig["python"]["median"]
    assert fig["ratio_first_step"] == fig["strop"]["median"] / fig["hand"]["median"]
    assert fig["ratio_import"] == fig["import_train"]["median"] / fig["import_torch"]["median"]
    top = fig["importtime"]["top"]
    # torch and torchvision's folder module (which pulls in torch._dynamo) cost about the same
    # (1.4 s each in one CI run): which one comes first depends on the run, so the test asks
    # for torch among the largest, in descending order, each imported by a strop module
    assert top and "torch" in [t["module"] for t in top[:3]]
    assert all(t["by"].startswith("strop") for t in top)
    assert [t["seconds"] for t in top] == sorted((t["seconds"] for t in top), reverse=True)
    assert 0 < top[0]["seconds"] <= fig["importtime"]["total"]
    assert "strop / hand to the first step" in md and fig["cpu features"] in md


def test_run_has_a_startup_part(monkeypatch):
    import run
    import startup

    calls = []
    monkeypatch.setattr(
        startup, "run", lambda rounds, progress: (calls.append(rounds), ("startup table", {}))[1]
    )
    report = run.main(["--only", "startup", "--quick", "--output", ""])
    assert calls == [2] and "## Start-up" in report and "startup table" in report
