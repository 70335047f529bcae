"""End-to-end runs of ``fit`` on tiny bundled data (real models, real data, a few seconds each)."""

import json
import math

import pytest
import torch

from strop.train import NonFiniteLossError, fit, load_checkpoint
from strop.train.report import read_metrics


def _weights(run_dir, which="last"):
    return load_checkpoint(run_dir / "checkpoints" / f"{which}.pt")["model"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_classification_run_writes_the_run_folder(tiny_config, digits_root, tmp_path):
    res = fit(
        tiny_config(
            digits_root, tmp_path / "run", schedule={"name": "warmup_cosine", "warmup_epochs": 1}
        )
    )
    run = res.run_dir
    for rel in (
        "config.yaml",
        "run.json",
        "metrics.csv",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
        "plots/loss.png",
        "plots/metrics.png",
        "plots/lr.png",
    ):
        assert (run / rel).is_file(), rel
    epochs, steps = read_metrics(run / "metrics.csv")
    assert [e["epoch"] for e in epochs] == [1.0, 2.0]
    assert len(steps) == 2 * math.ceil(45 / 16)  # 60 images, 25% validation, batch 16
    assert all(0.0 <= e["val_accuracy"] <= 1.0 and math.isfinite(e["val_loss"]) for e in epochs)
    assert res.best_metric == max(e["val_accuracy"] for e in epochs)
    choices = json.loads((run / "run.json").read_text())
    assert choices["precision"] == "fp32" and choices["feature_cache"] is False
    # warmup (3 steps from 0) then cosine to 0, per optimizer step: the LR each step used
    lrs = [s["lr"] for s in steps]
    assert lrs[:3] == pytest.approx([0.0, 0.05 / 3, 0.1 / 3])
    assert lrs[3] == pytest.approx(0.05) and lrs[3] > lrs[4] > lrs[5] > 0


@pytest.mark.slow
def test_bf16_autocast_run_trains(tiny_config, digits_root, tmp_path):
    res = fit(
        tiny_config(digits_root, tmp_path / "bf16", precision="bf16", memory_format="channels_last")
    )
    assert res.choices["precision"] == "bf16" and res.choices["memory_format"] == "channels_last"
    assert all(math.isfinite(h["train_loss"]) for h in res.history)
    assert all(
        p.dtype == torch.float32 for p in _weights(res.run_dir).values() if p.is_floating_point()
    )


@pytest.mark.slow
def test_resume_after_epoch_equals_uninterrupted(tiny_config, digits_root, tmp_path):
    sched = {"name": "onecycle", "max_lr": 0.05}
    full = fit(tiny_config(digits_root, tmp_path / "full", schedule=sched))

    class StopAfterFirstEpoch:
        def on_epoch_end(self, state, logs):
            state.should_stop = True

    part = tiny_config(digits_root, tmp_path / "part", schedule=sched)
    first = fit(part, callbacks=[StopAfterFirstEpoch()])
    assert len(first.history) == 1
    resumed = fit(part, resume=True)
    assert [h["epoch"] for h in resumed.history] == [1.0, 2.0]
    _assert_same_weights(_weights(full.run_dir), _weights(resumed.run_dir))


@pytest.mark.slow
def test_mid_epoch_interrupt_saves_and_resumes_exactly(tiny_config, digits_root, tmp_path):
    full = fit(tiny_config(digits_root, tmp_path / "full"))

    class SigintAtBatch2:
        def on_batch_end(self, state, logs):
            if state.epoch == 1 and state.batch_in_epoch == 2:
                state.should_stop, state.interrupted = True, "SIGINT"

    part = tiny_config(digits_root, tmp_path / "part")
    first = fit(part, callbacks=[SigintAtBatch2()])
    assert first.interrupted == "SIGINT"
    saved = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")["state"]
    assert (saved["epoch"], saved["batch_in_epoch"]) == (1, 2)
    resumed = fit(part, resume=True)
    _assert_same_weights(_weights(full.run_dir), _weights(resumed.run_dir))


@pytest.mark.slow
def test_feature_cache_gives_the_uncached_head(tiny_config, digits_root, tmp_path):
    over = {"model": {"name": "resnet18", "freeze": "backbone"}, "epochs": 1}
    cached = fit(tiny_config(digits_root, tmp_path / "cached", feature_cache="auto", **over))
    plain = fit(tiny_config(digits_root, tmp_path / "plain", feature_cache="off", **over))
    assert cached.choices["feature_cache"] is True and plain.choices["feature_cache"] is False
    a, b = _weights(cached.run_dir), _weights(plain.run_dir)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert cached.final["val_accuracy"] == pytest.approx(plain.final["val_accuracy"])


@pytest.mark.slow
def test_feature_cache_falls_back_with_reason(tiny_config, digits_root, tmp_path):
    res = fit(
        tiny_config(
            digits_root,
            tmp_path / "aug",
            data={"augment": True},
            epochs=1,
            model={"name": "resnet18", "freeze": "backbone"},
        )
    )
    assert res.choices["feature_cache"] is False
    assert "augmentation" in res.choices["feature_cache_reason"]


@pytest.mark.slow
def test_segmentation_run(tiny_config, shapes_root, tmp_path):
    res = fit(
        tiny_config(
            shapes_root,
            tmp_path / "seg",
            task="segmentation",
            epochs=1,
            model={"name": "lraspp_mobilenet_v3_large"},
            loss={"dice": 1.0, "bce": 1.0},
            optimizer={"name": "adamw", "lr": 0.003},
            data={"batch_size": 4},
        )
    )
    h = res.final
    assert 0.0 <= h["val_dice"] <= 1.0 and 0.0 <= h["val_iou"] <= h["val_dice"] + 1e-9
    assert res.monitor == "val_dice"
    _, steps = read_metrics(res.run_dir / "metrics.csv")
    for row in steps:  # the combined loss's parts are logged, and they add up to the logged loss
        assert row["loss"] == pytest.approx(row["loss_dice"] + row["loss_bce"], rel=1e-5)


class _NaNOnSecondBatch(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, input, target):
        self.calls += 1
        loss = torch.nn.functional.cross_entropy(input, target)
        return loss * float("nan") if self.calls == 2 else loss


@pytest.mark.slow
def test_nonfinite_loss_skip_and_stop(tiny_config, digits_root, tmp_path, monkeypatch):
    import strop.losses

    monkeypatch.setattr(strop.losses, "build", lambda spec: _NaNOnSecondBatch())
    res = fit(tiny_config(digits_root, tmp_path / "skip", epochs=1))
    assert res.final["nonfinite_batches"] == 1.0
    assert all(
        torch.isfinite(t).all()
        for t in _weights(res.run_dir, "best").values()
        if t.is_floating_point()
    )
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at epoch 0, batch 1"):
        fit(tiny_config(digits_root, tmp_path / "stop", epochs=1, nonfinite="stop"))


def test_num_classes_mismatch_and_missing_data(tiny_config, digits_root, tmp_path):
    with pytest.raises(
        ValueError, match=r"data.num_classes is 5 but .* holds 3 classes \(0, 1, 2\)"
    ):
        fit(tiny_config(digits_root, tmp_path / "x", data={"num_classes": 5}))
    with pytest.raises((ValueError, FileNotFoundError), match="nowhere"):
        fit(tiny_config(tmp_path / "nowhere", tmp_path / "y"))
    with pytest.raises(FileNotFoundError, match="--resume: no checkpoint"):
        fit(tiny_config(digits_root, tmp_path / "z"), resume=True)


@pytest.mark.slow
def test_gradual_unfreezing_trains_head_then_all_and_resumes(tiny_config, digits_root, tmp_path):
    over = {
        "model": {"name": "resnet18", "freeze": "backbone"},
        "epochs": 2,
        "gradual_unfreeze": {"head_epochs": 1, "lr_mult": 0.1},
        "schedule": {"name": "cosine"},
    }
    full = fit(tiny_config(digits_root, tmp_path / "full", **over))
    assert full.choices["feature_cache"] is False  # the backbone will train: no cache
    ck = load_checkpoint(full.run_dir / "checkpoints" / "last.pt")
    groups = ck["optimizer"]["param_groups"]
    assert len(groups) >= 2  # the unfrozen backbone joined as its own group at epoch 2

    class StopAfterFirstEpoch:
        def on_epoch_end(self, state, logs):
            state.should_stop = True

    part = tiny_config(digits_root, tmp_path / "part", **over)
    fit(part, callbacks=[StopAfterFirstEpoch()])
    resumed = fit(part, resume=True)
    _assert_same_weights(_weights(full.run_dir), _weights(resumed.run_dir))


@pytest.mark.parametrize(
    ("over", "match"),
    [
        (
            {"monitor": "val_acc"},
            r"monitor 'val_acc' is not a metric this run logs; did you mean 'val_accuracy'\?",
        ),
        (
            {"monitor": "val_top5"},
            r"monitor 'val_top5' is not a metric this run logs",
        ),  # only 3 classes
        (
            {"data": {"val_fraction": 0.0}},
            r"no validation images under .* \(data.val_fraction is 0.0 and there is no val/ folder\)",
        ),
        ({"device": "gpu"}, r"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got 'gpu'"),
    ],
)
def test_config_mistakes_fail_before_training(tiny_config, digits_root, tmp_path, over, match):
    with pytest.raises(ValueError, match=match):
        fit(tiny_config(digits_root, tmp_path / "bad", **over))
    assert not (tmp_path / "bad" / "checkpoints").exists()


@pytest.mark.slow
def test_interrupt_mid_accumulation_saves_at_the_next_step(tiny_config, digits_root, tmp_path):
    class SigintAtBatch1:
        def on_batch_end(self, state, logs):
            if state.batch_in_epoch == 1:
                state.should_stop, state.interrupted = True, "SIGINT"

    cfg = tiny_config(digits_root, tmp_path / "acc", accumulation_steps=2, data={"batch_size": 8})
    first = fit(cfg, callbacks=[SigintAtBatch1()])
    assert first.interrupted == "SIGINT"
    saved = load_checkpoint(tmp_path / "acc" / "checkpoints" / "last.pt")["state"]
    assert (saved["batch_in_epoch"], saved["step"]) == (2, 1)  # the accumulation group was finished
    full = fit(
        tiny_config(digits_root, tmp_path / "accfull", accumulation_steps=2, data={"batch_size": 8})
    )
    _assert_same_weights(_weights(full.run_dir), _weights(fit(cfg, resume=True).run_dir))


@pytest.mark.slow
def test_resume_with_more_epochs_replans_the_schedule(tiny_config, digits_root, tmp_path):
    sched = {"name": "onecycle", "max_lr": 0.05}
    fit(tiny_config(digits_root, tmp_path / "r", epochs=1, schedule=sched))
    longer = fit(tiny_config(digits_root, tmp_path / "r", epochs=3, schedule=sched), resume=True)
    assert [h["epoch"] for h in longer.history] == [
        1.0,
        2.0,
        3.0,
    ]  # onecycle would raise past its old horizon
    _, steps = read_metrics(tmp_path / "r" / "metrics.csv")
    assert len(steps) == 3 * 3 and steps[-1]["lr"] < max(s["lr"] for s in steps)


@pytest.mark.slow
def test_gradual_unfreezing_without_freeze_uses_lr_mult(tiny_config, digits_root, tmp_path):
    res = fit(
        tiny_config(
            digits_root,
            tmp_path / "gu",
            epochs=2,
            gradual_unfreeze={"head_epochs": 1, "lr_mult": 0.1},
        )
    )
    groups = load_checkpoint(res.run_dir / "checkpoints" / "last.pt")["optimizer"]["param_groups"]
    lrs = sorted({round(g["lr"], 6) for g in groups})
    assert lrs == [0.005, 0.05]  # the backbone joined at lr × lr_mult, the head kept lr
    # every group's LR is visible: lr (largest) and lr_min (smallest) per step and per epoch
    epochs, steps = read_metrics(res.run_dir / "metrics.csv")
    first = [s for s in steps if s["epoch"] == 1]
    second = [s for s in steps if s["epoch"] == 2]
    assert all(s["lr_min"] == s["lr"] == 0.05 for s in first)  # head only
    assert all(s["lr_min"] == pytest.approx(0.005) and s["lr"] == 0.05 for s in second)
    assert epochs[-1]["lr_min"] == pytest.approx(0.005)
    # run.json counts what trains in each phase (head only, then the whole resnet18)
    import json

    by_epoch = json.loads((res.run_dir / "run.json").read_text())["trainable_params_by_epoch"]
    total = sum(
        t.numel()
        for k, t in load_checkpoint(res.run_dir / "checkpoints" / "last.pt")["model"].items()
        if "running" not in k and "num_batches" not in k
    )
    assert by_epoch == {"1": 512 * 3 + 3, "2": total}


@pytest.mark.slow
def test_resume_with_workers_and_random_augmentation_is_exact(tiny_config, digits_root, tmp_path):
    over = {"data": {"num_workers": 1, "augment": "crop"}}
    full = fit(tiny_config(digits_root, tmp_path / "full", **over))

    class StopAfterFirstEpoch:
        def on_epoch_end(self, state, logs):
            state.should_stop = True

    part = tiny_config(digits_root, tmp_path / "part", **over)
    fit(part, callbacks=[StopAfterFirstEpoch()])
    _assert_same_weights(_weights(full.run_dir), _weights(fit(part, resume=True).run_dir))


def test_trust_pickle_in_the_config_reaches_the_weights_loader(tiny_config, digits_root, tmp_path):
    import argparse

    from strop.finetune import UnsafeWeightsError, build_model
    from strop.train.trainer import build_engine_parts

    # a legacy checkpoint: the weights plus a pickled argparse.Namespace, which weights_only refuses
    state = build_model("resnet18", num_classes=3).state_dict()
    legacy = tmp_path / "legacy.pth"
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1)}, legacy)
    refused = tiny_config(
        digits_root, tmp_path / "a", model={"name": "resnet18", "weights": str(legacy)}
    )
    with pytest.raises(UnsafeWeightsError):
        build_engine_parts(refused, 3, torch.device("cpu"), None)
    trusted = tiny_config(
        digits_root,
        tmp_path / "b",
        model={"name": "resnet18", "weights": str(legacy), "trust_pickle": True},
    )
    model, _, _ = build_engine_parts(trusted, 3, torch.device("cpu"), None)
    # the backbone comes from the file; the head is new (model.keep_head defaults to false)
    assert torch.equal(model.state_dict()["conv1.weight"], state["conv1.weight"])
    assert not torch.equal(model.state_dict()["fc.weight"], state["fc.weight"])


@pytest.mark.slow
def test_feature_cache_checkpoints_hold_the_head_and_resume_exactly(
    tiny_config, digits_root, tmp_path
):
    """Under the feature cache the frozen backbone is stored once (frozen-<sha>.pt) and last.pt
    holds the head; best.pt stays self-contained; resuming reaches the uninterrupted run's weights."""
    over = {"model": {"name": "resnet18", "freeze": "backbone"}, "feature_cache": "auto"}
    full = fit(tiny_config(digits_root, tmp_path / "full", epochs=2, **over))
    ck = full.run_dir / "checkpoints"
    frozen = list(ck.glob("frozen-*.pt"))
    assert full.choices["feature_cache"] is True and len(frozen) == 1
    assert (ck / "last.pt").stat().st_size * 50 < frozen[0].stat().st_size
    best = torch.load(ck / "best.pt", weights_only=True)  # read without strop: a whole model
    assert "model_shared" not in best and best["model"].keys() == _weights(full.run_dir).keys()
    fit(tiny_config(digits_root, tmp_path / "part", epochs=1, **over))
    resumed = fit(tiny_config(digits_root, tmp_path / "part", epochs=2, **over), resume=True)
    a, b = _weights(full.run_dir), _weights(resumed.run_dir)
    assert len(a) == len(b) > 100  # the whole resnet18 state comes back, not the head alone
    _assert_same_weights(a, b)


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        # the chapter's frozen backbone: its convolutions only run forward -> NHWC on a CPU
        ({"model": {"freeze": "backbone"}, "feature_cache": "off"}, "channels_last"),
        # the feature cache runs the same frozen backbone once, forward only
        ({"model": {"freeze": "backbone"}}, "channels_last"),
        # unfrozen after one epoch: the convolutions run backward too -> fp32 NCHW
        (
            {"model": {"freeze": "backbone"}, "gradual_unfreeze": {"head_epochs": 1}},
            "contiguous_format",
        ),
        # fastai's train_bn: the frozen stages' BatchNorm trains, so backward crosses the convs
        ({"model": {"freeze": "backbone", "train_bn": True}}, "contiguous_format"),
        ({}, "contiguous_format"),  # full fine-tuning in fp32 at 32 px
        # full fp32 fine-tuning of images from 128 px up: NHWC (1.19x at 224 px on AVX2)
        ({"data": {"image_size": 128, "batch_size": 30}}, "channels_last"),
    ],
)
def test_auto_memory_format_follows_what_trains(tiny_config, digits_root, tmp_path, over, expected):
    # a CPU rule: on a CUDA host "auto" would train there
    res = fit(
        tiny_config(
            digits_root, tmp_path / "run", memory_format="auto", epochs=1, device="cpu", **over
        )
    )
    choices = json.loads((res.run_dir / "run.json").read_text())
    assert choices["precision"] == "fp32"
    assert choices["memory_format"] == expected


def test_lr_find_resolves_the_memory_format_from_the_image_size(
    tiny_config, digits_root, tmp_path, monkeypatch
):
    import strop.precision
    from strop.train.inference import lr_find_config

    seen, real = [], strop.precision.resolve_memory_format

    def recording(*args, **kwargs):
        seen.append(kwargs.get("image_size"))
        fmt = real(*args, **kwargs)
        seen.append(fmt)
        return fmt

    monkeypatch.setattr(strop.precision, "resolve_memory_format", recording)
    cfg = tiny_config(
        digits_root, tmp_path / "lr", memory_format="auto", device="cpu", data={"image_size": 128}
    )
    lr_find_config(cfg, num_iter=2)
    assert seen == [128, torch.channels_last]  # fp32 on a CPU at 128 px, as fit() decides
