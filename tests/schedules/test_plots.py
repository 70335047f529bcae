import pytest

from strop.plots import plot_lr_find, plot_lr_schedules
from strop.schedules import LRFindResult, preview


def test_plot_lr_schedules_draws_one_line_per_schedule(tmp_path):
    curves = {
        name: preview(name, epochs=5, steps_per_epoch=4)
        for name in ("cosine", "onecycle", "linear")
    }
    fig = plot_lr_schedules(curves, tmp_path / "s.png", steps_per_epoch=4, log_y=True)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["cosine", "onecycle", "linear"]
    assert ax.get_lines()[0].get_xdata()[-1] == pytest.approx(19 / 4)  # x in epochs
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "learning rate"
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="plot_lr_schedules: schedules must hold at least one"):
        plot_lr_schedules({})


def test_plot_lr_find_marks_the_suggestion(tmp_path):
    lrs = [10 ** (-4 + i / 10) for i in range(30)]
    losses = [1.0 - i / 40 for i in range(30)]
    result = LRFindResult(
        lrs, losses, losses, suggestion=lrs[10], suggestions={"steepest": lrs[10], "valley": lrs[8]}
    )
    fig = plot_lr_find(result, tmp_path / "f.png")
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels[0] == "smoothed loss"
    assert f"steepest: {lrs[10]:.2e}" in labels and f"valley: {lrs[8]:.2e}" in labels
    assert ax.get_xscale() == "log" and "suggestion" in ax.get_title()
    assert (tmp_path / "f.png").exists()
    # the result's own shortcut draws the same figure
    assert [line.get_label() for line in result.plot().axes[0].get_lines()] == labels
