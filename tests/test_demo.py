"""strop demo: its plumbing on a miniature budget, the source cache, signals, the numbers -> words.

The real numbers (minutes of CPU) are in the README; here every training is a few tiny steps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from strop.data.bundled import GLYPH_CHARS, glyph_class_name, write_glyphs
from strop.demo import (
    RECIPES,
    DemoInterrupted,
    DemoPlan,
    cache_dir,
    conclusion,
    format_table,
    run_demo,
    summarize,
    verdicts,
)

SRC = str(Path(__file__).resolve().parents[1] / "src")


# --- numbers -> table, verdicts, conclusion ------------------------------------------------------


def _made_up(
    ft_small: list[float], scratch_small: list[float]
) -> dict[str, dict[int, list[float]]]:
    return {
        "frozen-pretrained": {5: [0.80, 0.82, 0.84], 30: [0.90, 0.91, 0.92]},
        "fine-tune": {5: ft_small, 30: [0.95, 0.96, 0.97]},
        "frozen-random": {5: [0.60, 0.62, 0.64], 30: [0.85, 0.86, 0.87]},
        "scratch": {5: scratch_small, 30: [0.95, 0.96, 0.97]},
    }


def test_summary_is_mean_and_sample_sd_per_cell():
    s = summarize(_made_up([0.70, 0.80, 0.90], [0.5, 0.5, 0.5]))
    assert s.sizes == [5, 30]
    assert s.mean["fine-tune"][5] == pytest.approx(0.80)
    # sample sd of 0.7, 0.8, 0.9 is 0.1 (n - 1 in the denominator), by hand
    assert s.sd["fine-tune"][5] == pytest.approx(0.1)
    assert s.sd["scratch"][5] == 0.0
    table = format_table(s)
    assert "| recipe | 5 per class | 30 per class |" in table
    assert (
        "| recommended fine-tuning (recipe: fine_tune) | 0.800 ± 0.100 | 0.960 ± 0.010 |" in table
    )


def test_conclusion_flips_with_the_numbers():
    win = summarize(_made_up([0.85, 0.86, 0.87], [0.50, 0.55, 0.60]))
    line = conclusion(win)
    assert line.startswith("Transfer learning pays off where labels are scarce")
    # the rival quoted is the strongest non-pretrained recipe at 5 per class: frozen random 62.0%
    assert "86.0% against 62.0% for frozen random (+24.0 points, more than the seed spread)" in line
    # at 30 per class fine-tuning ties from scratch: the advantage fades, and the line says so
    assert line.endswith("the advantage fades with more labels (+0.0 points at 30 per class).")

    lose = summarize(_made_up([0.50, 0.55, 0.60], [0.70, 0.71, 0.72]))
    line = conclusion(lose)
    assert line.startswith("Transfer learning did not pay off here")
    assert "55.0% against 71.0% for from scratch (-16.0 points, behind)" in line

    # ahead on the mean but not by more than the spread counts as no win
    close = summarize(_made_up([0.60, 0.75, 0.90], [0.60, 0.70, 0.80]))
    assert conclusion(close).endswith("(+5.0 points, ahead by no more than the seed spread).")

    alone = summarize({"frozen-pretrained": {5: [0.8]}})
    assert conclusion(alone).startswith("No conclusion: the comparison needs fine-tuning")


def test_verdicts_say_plainly_where_fine_tuning_does_not_win():
    s = summarize(_made_up([0.85, 0.86, 0.87], [0.84, 0.86, 0.88]))
    lines = verdicts(s)
    assert (
        "  5 per class: fine-tuning is ahead of, but within the seed spread of, from scratch: +0.0 points"
        not in lines
    )  # margin is exactly 0 here: that is a loss, not "ahead"
    assert any(
        li.startswith("  5 per class: fine-tuning does NOT beat from scratch") for li in lines
    )
    assert any(
        li.startswith("  5 per class: fine-tuning beats frozen random: +24.0 points")
        for li in lines
    )


# --- the glyph source data --------------------------------------------------------------------


def test_glyphs_are_letters_and_symbols_made_like_the_digit_scans(tmp_path):
    root = write_glyphs(tmp_path / "g", chars="AB&", per_class=3, seed=1, size=8)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert classes == [
        "0026-ampersand",
        "0041-latin-capital-letter-a",
        "0042-latin-capital-letter-b",
    ]
    levels = np.rint(np.arange(17) * 255 / 16)  # the 17 values an 8x8 count of 4x4 blocks can take
    for c in classes:
        files = sorted((root / c).glob("*.png"))
        assert len(files) == 3
        for f in files:
            px = np.asarray(Image.open(f))
            assert px.shape == (8, 8) and px.dtype == np.uint8
            assert np.isin(px, levels).all()
            # the shape is scaled to fill >= 85% of the 32 px box along its long side: it touches
            # at least 7 of the 8 block rows or columns
            rows, cols = np.flatnonzero(px.any(axis=1)), np.flatnonzero(px.any(axis=0))
            assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 >= 7
    assert (
        not any(ch.isdigit() for ch in GLYPH_CHARS)
        and len(set(GLYPH_CHARS)) == len(GLYPH_CHARS) == 53
    )


def test_glyphs_are_deterministic_and_seeded(tmp_path):
    def pixels(root: Path) -> list[bytes]:
        return [np.asarray(Image.open(f)).tobytes() for f in sorted(root.rglob("*.png"))]

    a = pixels(write_glyphs(tmp_path / "a", chars="xy", per_class=2, seed=3, size=16))
    b = pixels(write_glyphs(tmp_path / "b", chars="xy", per_class=2, seed=3, size=16))
    c = pixels(write_glyphs(tmp_path / "c", chars="xy", per_class=2, seed=4, size=16))
    assert a == b and a != c


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"chars": "A"}, "chars must hold at least 2 distinct"),
        ({"chars": "AA"}, "chars must hold at least 2 distinct"),
        ({"chars": "A B"}, "chars must hold at least 2 distinct"),
        ({"per_class": 0}, "per_class must be > 0"),
        ({"size": 4}, "size must be >= 8"),
    ],
)
def test_glyph_bad_input_names_the_argument(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=f"write_glyphs: {match}"):
        write_glyphs(tmp_path / "x", **kwargs)


def test_glyph_class_names_survive_case_insensitive_file_systems():
    names = [glyph_class_name(ch) for ch in GLYPH_CHARS]
    assert len({n.lower() for n in names}) == len(names)
    assert glyph_class_name("a") == "0061-latin-small-letter-a"


# --- cache folder ---------------------------------------------------------------------------------


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("STROP_CACHE", str(tmp_path / "s"))
    assert cache_dir() == tmp_path / "s" / "demo"
    monkeypatch.delenv("STROP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "strop" / "demo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "strop" / "demo"


# --- the whole demo, miniature --------------------------------------------------------------------


@pytest.mark.slow
def test_quick_demo_end_to_end_then_the_source_comes_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STROP_CACHE", str(tmp_path / "cache"))
    plan = DemoPlan.quick()
    logs: list[str] = []
    out: list[str] = []
    s = run_demo(tmp_path / "one", plan=plan, progress=False, log=logs.append, report=out.append)

    assert s.recipes == list(RECIPES) and s.sizes == [2]
    assert not any("cached" in line for line in logs)
    weights = sorted((tmp_path / "cache" / "demo").glob(f"{plan.model}-glyphs-*.pth"))
    assert len(weights) == 1
    cells = json.loads((tmp_path / "one" / "results.json").read_text())["cells"]
    assert sorted(c["recipe"] for c in cells.values()) == sorted(RECIPES)
    for c in cells.values():
        # the reported accuracy is the run's own last epoch on the held-out digits
        epochs = [
            row
            for row in (Path(c["run_dir"]) / "metrics.csv").read_text().splitlines()
            if row.startswith("epoch,")
        ]
        assert len(epochs) == plan.epochs(2) == len(c["curve"])
        assert c["accuracy"] == c["curve"][-1]
    trainable = {c["recipe"]: c["trainable_params"] for c in cells.values()}
    # the frozen recipes train the new fc only: shufflenet_v2_x0_5's 1024 features x 10 digits + bias
    assert trainable["frozen-pretrained"] == trainable["frozen-random"] == 1024 * 10 + 10
    # recipe: fine_tune starts with the head alone (gradual unfreezing); scratch trains everything
    assert trainable["fine-tune"] == trainable["frozen-pretrained"]
    assert trainable["scratch"] > 300_000
    for name in ("accuracy-vs-shots", "learning-curves", "bars", "confusion"):
        assert (tmp_path / "one" / "plots" / f"demo-{name}.png").is_file()
    assert any(line.startswith("| recipe | 2 per class |") for line in out)
    assert out[-1] == conclusion(s)

    # a second demo (another folder) reuses the source model and says so
    logs.clear()
    mtime = weights[0].stat().st_mtime_ns
    t = time.perf_counter()
    run_demo(
        tmp_path / "two",
        plan=DemoPlan(**{**plan.__dict__, "recipes": ("frozen-pretrained",)}),
        progress=False,
        log=logs.append,
        report=out.append,
    )
    assert any(line.startswith("source model: cached, skipping its training") for line in logs)
    assert weights[0].stat().st_mtime_ns == mtime
    assert not any("from scratch on 53 characters" in line for line in logs)
    assert time.perf_counter() - t < 120


@pytest.mark.slow
def test_confusion_matrix_counts_match_an_independent_evaluation(tmp_path, monkeypatch):
    """The confusion matrix of the best run, recomputed here from its saved weights."""
    import torch

    from strop.data import image_folder
    from strop.demo import CellResult, plot_confusion
    from strop.train import config_from_dict, fit
    from strop.train.inference import load_run_model

    root = tmp_path / "split"
    rng = np.random.default_rng(0)
    for part, n in (("train", 3), ("val", 4)):
        for d in range(10):
            (root / part / str(d)).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(
                    root / part / str(d) / f"{i}.png"
                )
    res = fit(
        config_from_dict(
            {
                "data": {"root": str(root), "image_size": 16, "batch_size": 10, "num_workers": 0},
                "model": {"name": "resnet18"},
                "epochs": 1,
                "precision": "fp32",
                "progress": False,
                "output": str(tmp_path / "run"),
            }
        ),
        log=lambda m: None,
    )
    cell = CellResult(
        "scratch",
        3,
        0,
        res.final["val_accuracy"],
        [res.final["val_accuracy"]],
        1.0,
        1.0,
        1,
        str(res.run_dir),
    )
    _, acc = plot_confusion(cell, root, DemoPlan(image_size=16), tmp_path / "cm.png")
    # fit's own evaluation of the same weights on the same images
    assert acc == pytest.approx(res.final["val_accuracy"], abs=1e-6)
    model, _, _ = load_run_model(res.run_dir, "last")
    _, val_ds, _ = image_folder(root, image_size=16)
    x = torch.stack([val_ds[i][0] for i in range(len(val_ds))])
    y = torch.tensor([val_ds[i][1] for i in range(len(val_ds))])
    with torch.no_grad():
        assert acc == pytest.approx((model(x).argmax(1) == y).float().mean().item())


def test_demo_rejects_unknown_task_and_recipe(tmp_path):
    with pytest.raises(
        ValueError, match="run_demo: task must be 'classification' or 'segmentation'; got 'x'"
    ):
        run_demo(tmp_path, task="x")
    with pytest.raises(ValueError, match=r"run_demo: unknown recipe\(s\) \['nope'\]"):
        run_demo(tmp_path, plan=DemoPlan(recipes=("nope",)))


def test_interrupt_exit_codes_follow_the_shell_convention():
    assert DemoInterrupted("SIGINT", "x").exit_code == 130
    assert DemoInterrupted("SIGTERM", "x").exit_code == 143


# --- signals, with a real process -----------------------------------------------------------------

# the real command in a child process; its --quick plan gets longer runs so that the signal lands
# inside a training loop (fit's own handler) rather than between two runs (the demo's handler)
_CHILD = """
import dataclasses, sys
import strop.demo as demo
quick = demo.DemoPlan.quick
demo.DemoPlan.quick = classmethod(lambda cls: dataclasses.replace(quick(), target_steps=60, source_epochs=3))
from strop.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _start_demo(tmp_path: Path) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": SRC,
        "STROP_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            _CHILD,
            "demo",
            "--quick",
            "--no-progress",
            "--out",
            str(tmp_path / "out"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _training(run_dir: Path) -> bool:
    """True once ``run_dir``'s fit has logged an optimizer step (it is inside its training loop)."""
    log = run_dir / "metrics.csv"
    return log.is_file() and any(line.startswith("step,") for line in log.read_text().splitlines())


def _wait_for(predicate, proc: subprocess.Popen[str], timeout: float = 240.0) -> None:
    t = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(
                f"the demo ended (rc {proc.returncode}) before the signal: {proc.communicate()}"
            )
        if time.monotonic() - t > timeout:
            proc.kill()
            pytest.fail("the demo never reached the point to signal")
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_during_a_target_run_stops_the_whole_demo(tmp_path):
    proc = _start_demo(tmp_path)
    runs = tmp_path / "out" / "runs" / "2-per-class"
    _wait_for(lambda: _training(runs / "fine-tune-seed0"), proc)  # the second recipe is training
    started = {d.name for d in runs.iterdir()}
    assert started == {"frozen-pretrained-seed0", "fine-tune-seed0"}
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert {d.name for d in runs.iterdir()} == started  # no further recipe was trained
    assert stdout == ""  # no table, no conclusion: nothing is reported as a result
    assert "interrupted by SIGTERM" in stderr and "again to continue" in stderr
    # the finished first recipe is kept for the next run; the cut one is not recorded
    cells = json.loads((tmp_path / "out" / "results.json").read_text())["cells"]
    assert [c["recipe"] for c in cells.values()] == ["frozen-pretrained"]

    # running the same command again continues: the source model is cached by then
    proc = _start_demo(tmp_path)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "source model: cached, skipping its training" in stderr
    assert "1 of 4 target runs already finished" in stderr
    assert "| recipe | 2 per class |" in stdout


@pytest.mark.slow
def test_sigint_during_the_source_training_exits_130_and_keeps_its_state(tmp_path):
    proc = _start_demo(tmp_path)
    demo_cache = tmp_path / "cache" / "demo"
    _wait_for(lambda: any(_training(d) for d in demo_cache.glob("source-run-*")), proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stdout == "" and "interrupted by SIGINT while training the source model" in stderr
    assert not list(demo_cache.glob("*.pth"))  # a cut source model is never saved as the model
    assert not (tmp_path / "out" / "runs").exists()  # and no target run started from it
    assert len(list(demo_cache.glob("source-run-*/checkpoints/last.pt"))) == 1  # resumable
