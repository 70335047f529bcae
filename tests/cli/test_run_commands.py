"""strop train / eval / predict / lr-find on a tiny bundled run, through the CLI entry point."""

import csv
import json

import pytest
import yaml

from strop.cli import main
from strop.data import write_digits


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    root = write_digits(base / "digits", digits=[0, 1, 2], per_class=12, seed=0, size=16)
    cfg = base / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "root": str(root),
                    "image_size": 32,
                    "batch_size": 12,
                    "val_fraction": 0.25,
                    "num_workers": 0,
                },
                # a run that learns (BatchNorm momentum 0.5 for 3 steps), so per-image losses differ and
                # eval's numbers match the logged ones only when it batches and averages as the run did
                "model": {"name": "resnet18", "bn_momentum": 0.5},
                "optimizer": {"name": "adam", "lr": 0.001},
                "precision": "fp32",
                "epochs": 1,
                "progress": False,
                "output": str(base / "run"),
            }
        )
    )
    assert main(["train", str(cfg), "--set", "epochs=1"]) == 0
    return base, root, cfg


@pytest.mark.slow
def test_eval_prints_the_val_metrics(tiny_run, capsys):
    base, _, _ = tiny_run
    capsys.readouterr()
    assert main(["eval", str(base / "run")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {"val_loss", "val_accuracy"} and 0.0 <= metrics["val_accuracy"] <= 1.0
    # exactly the numbers the run logged for its best epoch (same split, weights, batches)
    from strop.train import load_checkpoint

    best_epoch = load_checkpoint(base / "run" / "checkpoints" / "best.pt")["epoch"]
    with (base / "run" / "metrics.csv").open() as fh:
        row = next(
            r for r in csv.DictReader(fh) if r["kind"] == "epoch" and int(r["epoch"]) == best_epoch
        )
    assert metrics == {
        "val_loss": float(row["val_loss"]),
        "val_accuracy": float(row["val_accuracy"]),
    }


@pytest.mark.slow
def test_predict_writes_class_and_probability(tiny_run, tmp_path):
    base, root, _ = tiny_run
    out = tmp_path / "preds.csv"
    assert main(["predict", str(base / "run"), str(root / "1"), "--out", str(out)]) == 0
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12 and {r["class"] for r in rows} <= {"0", "1", "2"}
    assert all(0.0 < float(r["probability"]) <= 1.0 for r in rows)


def test_predict_missing_image_is_a_clear_error(tiny_run, capsys):
    base, _, _ = tiny_run
    assert main(["predict", str(base / "run"), str(base / "nope.png")]) == 2
    assert "image not found" in capsys.readouterr().err


def test_eval_missing_run_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert "run folder not found" in capsys.readouterr().err


@pytest.mark.slow
def test_lr_find_writes_plot_and_suggestions(tiny_run, tmp_path, capsys):
    _, _, cfg = tiny_run
    plot = tmp_path / "lr.png"
    assert main(["lr-find", str(cfg), "--num-iter", "8", "--out", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "suggested lr (steepest)" in out and plot.stat().st_size > 0
