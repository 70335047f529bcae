import csv

import pytest

from strop.cli import main
from strop.cli.lr_plot import parse_schedule
from strop.schedules import preview


def test_parse_schedule():
    assert parse_schedule("cosine") == ("cosine", {})
    assert parse_schedule("multistep:milestones=[10, 20],gamma=0.5") == (
        "multistep",
        {"milestones": [10, 20], "gamma": 0.5},
    )
    assert parse_schedule("onecycle:max_lr=0.1,three_phase=true") == (
        "onecycle",
        {"max_lr": 0.1, "three_phase": True},
    )
    with pytest.raises(
        ValueError, match="lr-plot: an option of 'cosine' must be KEY=VALUE; got 'T_max'"
    ):
        parse_schedule("cosine:T_max")


def test_draws_several_schedules_and_writes_csv(tmp_path, capsys):
    png, table = tmp_path / "lr.png", tmp_path / "sub" / "lr.csv"
    argv = [
        "lr-plot", "cosine", "onecycle:max_lr=0.2,pct_start=0.25", "-s", "multistep:milestones=[2,4]",
        "--epochs", "6", "--steps-per-epoch", "5", "--warmup-epochs", "1", "--base-lr", "0.1",
        "--out", str(png), "--csv", str(table),
    ]  # fmt: skip
    assert main(argv) == 0
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    with table.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == [
        "step",
        "epoch",
        "cosine",
        "onecycle:max_lr=0.2,pct_start=0.25",
        "multistep:milestones=[2,4]",
    ]
    assert len(rows) == 1 + 30 and rows[7][:2] == ["6", "1"]
    expected = preview(
        {"name": "onecycle", "max_lr": 0.2, "pct_start": 0.25, "warmup_epochs": 1},
        epochs=6,
        steps_per_epoch=5,
    )
    assert [float(r[3]) for r in rows[1:]] == pytest.approx(expected, rel=1e-9)
    assert f"plot: {png}" in capsys.readouterr().out


def test_common_options_and_errors(tmp_path, capsys):
    out = tmp_path / "a.png"
    assert (
        main(
            [
                "lr-plot",
                "cosine",
                "--opt",
                "eta_min=0.01",
                "--epochs",
                "4",
                "--out",
                str(out),
                "--log",
            ]
        )
        == 0
    )
    assert out.exists()
    assert main(["lr-plot", "cosin", "--epochs", "4", "--out", str(out)]) == 2
    assert "did you mean 'cosine'" in capsys.readouterr().err
    assert main(["lr-plot", "--epochs", "4", "--out", str(out)]) == 2
    assert "name at least one SCHEDULE" in capsys.readouterr().err
