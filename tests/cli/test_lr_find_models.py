"""``strop lr-find`` on models whose output is not a plain tensor: a segmentation model's
``{"out": ...}`` dict and inception_v3's ``InceptionOutputs(logits, aux_logits)`` in train mode."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from strop.cli import main
from strop.data import write_digits, write_shapes
from strop.finetune import build_model
from strop.schedules import lr_find

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.slow
def test_lr_find_on_the_segmentation_config(tmp_path, capsys):
    root = write_shapes(tmp_path / "shapes", n=12, size=32, num_classes=2, seed=0)
    plot = tmp_path / "lr.png"
    rc = main(
        [
            "lr-find",
            str(CONFIGS / "shapes-segmentation.yaml"),
            "--set",
            f"data.root={root}",
            "--set",
            "data.image_size=32",
            "--set",
            "data.batch_size=4",
            "--set",
            "precision=fp32",
            "--set",
            f"output={tmp_path / 'run'}",
            "--num-iter",
            "4",
            "--out",
            str(plot),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "suggested lr (minimum)" in captured.out and plot.stat().st_size > 0


@pytest.mark.slow
def test_lr_find_on_inception_v3_through_the_cli(tmp_path, capsys):
    root = write_digits(tmp_path / "digits", digits=[0, 1], per_class=4, seed=0, size=16)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"data: {{root: {root}, image_size: 299, batch_size: 2, val_fraction: 0.25, num_workers: 0}}\n"
        "model: {name: inception_v3}\noptimizer: {name: sgd, lr: 0.01}\nprecision: fp32\n"
        f"output: {tmp_path / 'run'}\n"
    )
    rc = main(["lr-find", str(cfg), "--num-iter", "2", "--out", str(tmp_path / "lr.png")])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "suggested lr (minimum)" in captured.out


@pytest.mark.slow
def test_lr_find_loss_counts_inception_aux_head_as_training_does():
    """The first recorded loss (taken before any step) is CE(main) + 0.4 · CE(aux), computed here by
    hand from the train-mode outputs on the same batch with the same dropout draws."""
    torch.manual_seed(0)
    model = build_model("inception_v3", num_classes=3)
    x, y = torch.randn(2, 3, 299, 299), torch.tensor([0, 2])
    model.train()
    torch.manual_seed(1)
    with torch.no_grad():
        out = model(x)
    expected = F.cross_entropy(out.logits, y) + 0.4 * F.cross_entropy(out.aux_logits, y)
    main_only = F.cross_entropy(out.logits, y)
    assert abs(float(expected - main_only)) > 1e-3  # the aux head moves the number: a real check
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    torch.manual_seed(1)
    result = lr_find(
        model, [(x, y)], torch.nn.CrossEntropyLoss(), opt, num_iter=2, start_lr=1e-7, end_lr=1e-6
    )
    assert result.raw_losses[0] == pytest.approx(float(expected), rel=1e-5)
