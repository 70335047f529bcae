import io

from strop.train.callbacks import CSVLogger, EarlyStopping, ProgressBar, call
from strop.train.loop import TrainState
from strop.train.report import plot_run, read_metrics


def test_early_stopping_counts_patience_and_round_trips():
    es = EarlyStopping("val_accuracy", "max", patience=2)
    s = TrainState()
    for v in (0.5, 0.6, 0.6, 0.59):
        es.on_epoch_end(s, {"val_accuracy": v})
    assert s.should_stop and es.best == 0.6
    es2 = EarlyStopping("val_loss", "min", patience=2)
    es2.load_state_dict(es.state_dict())
    assert es2.best == 0.6 and es2.bad_epochs == 2


def test_early_stopping_treats_nan_as_no_improvement():
    es = EarlyStopping("val_loss", "min", patience=1)
    s = TrainState()
    es.on_epoch_end(s, {"val_loss": float("nan")})
    assert s.should_stop


def test_csv_logger_rows_and_resume_truncation(tmp_path):
    path = tmp_path / "metrics.csv"
    log = CSVLogger(path, ["val_accuracy"])
    s = TrainState()
    call([log], "on_fit_start", s)
    for step in (1, 2):
        s.step = step
        log.on_batch_end(s, {"loss": 1.0 / step, "lr": 0.1, "images_per_s": 5.0})
    log.on_epoch_end(s, {"val_accuracy": 0.5, "loss": 0.4})
    s.epoch = 1
    s.step = 3
    log.on_batch_end(
        s, {"loss": 0.2, "lr": 0.05, "images_per_s": 5.0}
    )  # crashed before this epoch's checkpoint
    log.on_fit_end(s)
    epochs, steps = read_metrics(path)
    assert [e["epoch"] for e in epochs] == [1.0] and len(steps) == 3

    resumed = TrainState(epoch=1, step=2)  # the checkpoint was taken after epoch 1, step 2
    log2 = CSVLogger(path, ["val_accuracy"])
    log2.on_fit_start(resumed)
    log2.on_fit_end(resumed)
    epochs, steps = read_metrics(path)
    assert [s["step"] for s in steps] == [1.0, 2.0] and len(epochs) == 1
    assert plot_run(tmp_path)[0].name == "loss.png"
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "loss.png",
        "lr.png",
        "metrics.png",
    ]


def test_progress_bar_writes_to_injected_stream():
    out = io.StringIO()
    bar = ProgressBar(total_epochs=2, batches_per_epoch=3, file=out, mininterval=0)
    s = TrainState()
    bar.on_epoch_start(s)
    for _ in range(3):
        bar.on_batch_end(s, {"loss": 0.5, "lr": 0.01, "images_per_s": 100.0})
    bar.on_epoch_end(s, {"val_accuracy": 0.75})
    text = out.getvalue()
    assert "epoch 1/2" in text and "val_accuracy=0.7500" in text and "3/3" in text


def test_disabled_progress_bar_is_silent():
    out = io.StringIO()
    bar = ProgressBar(total_epochs=1, batches_per_epoch=1, file=out, enabled=False)
    s = TrainState()
    bar.on_epoch_start(s)
    bar.on_batch_end(s, {"loss": 0.5, "lr": 0.01, "images_per_s": 1.0})
    bar.on_epoch_end(s, {"val_accuracy": 0.5})
    assert out.getvalue() == ""
