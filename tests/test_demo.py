"""The demo's plumbing on a miniature budget (the real numbers are in the README and the issue note)."""

import pytest

from strop.demo import format_table, run_demo


@pytest.mark.slow
def test_demo_runs_four_recipes_and_writes_the_comparison(tmp_path):
    lines = []
    rows = run_demo(tmp_path, shots=4, per_class=12, image_size=16, source_epochs=2, target_epochs=2, precision="fp32",
                    progress=False, log=lines.append)
    assert [r.recipe.split(" ")[0] for r in rows] == ["frozen", "frozen", "from", "full"]
    assert all(0.0 <= r.value <= 1.0 and r.seconds > 0 for r in rows)
    # frozen recipes train the head only: 512*5 + 5 parameters of resnet18's new fc
    assert rows[0].trainable_params == rows[1].trainable_params == 512 * 5 + 5
    assert rows[2].trainable_params == rows[3].trainable_params > 11_000_000
    assert (tmp_path / "comparison.png").is_file() and (tmp_path / "resnet18-digits-0-4.pth").is_file()
    assert "| frozen pretrained backbone (tutorial) |" in format_table(rows)


def test_demo_rejects_unknown_task(tmp_path):
    with pytest.raises(ValueError, match="run_demo: task must be 'classification' or 'segmentation'; got 'x'"):
        run_demo(tmp_path, task="x")
