"""The recipe options end to end through ``fit`` (and the CLI): each changes what it should, and
resume stays exact with EMA, Mixup and the balanced sampler on."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from strop.train import fit
from strop.train import trainer as trainer_mod
from strop.train.checkpoint import load_checkpoint


def _record_steps(monkeypatch):
    """The model's weights after every optimizer step of the next fit (a copy per step)."""
    steps: list[dict[str, torch.Tensor]] = []
    original = trainer_mod.after_step

    def recording(run, state, **kwargs):
        steps.append({k: v.detach().clone() for k, v in run.model.state_dict().items()})
        original(run, state, **kwargs)

    monkeypatch.setattr(trainer_mod, "after_step", recording)
    return steps


def _val_outputs(run_dir, checkpoint="best"):
    """Logits and labels of a run's checkpoint over its validation split, computed here."""
    from strop.train.inference import load_run_model
    from strop.train.setup import load_datasets

    model, config, _ = load_run_model(run_dir, checkpoint)
    _, val_ds, _, _ = load_datasets(config)
    xs, ys = zip(*[val_ds[i] for i in range(len(val_ds))], strict=True)
    with torch.no_grad():
        return model(torch.stack(xs)).float(), torch.tensor(ys)


def _imbalanced_digits(src, dst, keep):
    """A copy of a digits folder with only the first ``keep[c]`` images of class ``c``."""
    for c, n in keep.items():
        (dst / c).mkdir(parents=True)
        for f in sorted((src / c).iterdir())[:n]:
            shutil.copy(f, dst / c / f.name)
    return dst


def test_optimizer_by_name_and_label_smoothing(tiny_config, digits_root, tmp_path):
    cfg = tiny_config(
        digits_root,
        tmp_path / "r",
        epochs=1,
        label_smoothing=0.2,
        optimizer={
            "name": "rmsprop",
            "lr": 1e-3,
            "alpha": 0.8,
            "centered": True,
            "momentum": 0.5,
            "eps": 1e-7,
        },
    )
    res = fit(cfg)
    opt = load_checkpoint(res.run_dir / "checkpoints" / "last.pt")["optimizer"]
    group = opt["param_groups"][0]
    assert (group["alpha"], group["centered"], group["momentum"], group["eps"]) == (
        0.8,
        True,
        0.5,
        1e-7,
    )
    assert {"square_avg", "grad_avg", "momentum_buffer"} <= set(next(iter(opt["state"].values())))
    # val_loss is the smoothed cross-entropy: (1 - e)·CE + e·mean_c(-log p_c)
    logits, y = _val_outputs(res.run_dir)
    logp = logits.log_softmax(1)
    expected = (0.8 * F.nll_loss(logp, y) + 0.2 * (-logp.mean(1)).mean()).item()
    assert res.history[-1]["val_loss"] == pytest.approx(expected, rel=1e-4)
    assert expected != pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-3)


def test_ema_follows_the_formula_and_is_validated(tiny_config, digits_root, tmp_path, monkeypatch):
    steps = _record_steps(monkeypatch)
    decay = 0.9
    res = fit(tiny_config(digits_root, tmp_path / "r", ema={"decay": decay, "warmup": True}))
    ck = load_checkpoint(res.run_dir / "checkpoints" / "last.pt")
    averaged = ck["ema"]["averaged"]
    assert ck["ema"]["updates"] == len(steps) == res.history[-1]["epoch"] * 3  # 45 images / 16
    name = "fc.weight"
    # timm ModelEmaV3 warmup, transcribed: d_k = min(decay, 1 - (1 + (k - 1)) ** (-2/3)); d_1 = 0
    expected = steps[0][name].clone()
    for k, w in enumerate(steps[1:], start=2):
        d = min(decay, 1 - k ** (-2 / 3))
        expected = d * expected + (1 - d) * w[name]
    torch.testing.assert_close(averaged[f"module.{name}"], expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(expected, steps[-1][name])  # the average is not the last weights
    for row in res.history:
        assert 0.0 <= row["val_accuracy_ema"] <= 1.0 and row["val_loss_ema"] > 0
    with open(res.run_dir / "metrics.csv") as fh:
        assert "val_accuracy_ema" in next(csv.reader(fh))
    # the weights eval/predict/export use are the better of raw and EMA, and run.json says which
    weights = json.loads((res.run_dir / "run.json").read_text())["weights"]
    best_raw = max(r["val_accuracy"] for r in res.history)
    best_ema = max(r["val_accuracy_ema"] for r in res.history)
    assert weights["candidates"]["raw"]["metric"] == best_raw
    assert weights["candidates"]["ema"]["metric"] == best_ema
    assert weights["used"] == ("ema" if best_ema > best_raw else "raw")
    from strop.train.inference import checkpoint_path, export_weights

    chosen = load_checkpoint(res.run_dir / weights["checkpoint"])["model"]
    assert checkpoint_path(res.run_dir) == res.run_dir / weights["checkpoint"]
    exported = torch.load(export_weights(res.run_dir, fmt="pt"), weights_only=True)
    assert all(torch.equal(exported[k], chosen[k]) for k in chosen)


def test_ema_validation_uses_the_averaged_weights(tiny_config, digits_root, tmp_path):
    res = fit(tiny_config(digits_root, tmp_path / "r", ema={"decay": 0.5, "warmup": False}))
    best_ema = res.run_dir / "checkpoints" / "best_ema.pt"
    ck = load_checkpoint(best_ema)
    from strop.train.inference import load_run_model
    from strop.train.setup import load_datasets

    model, config, _ = load_run_model(res.run_dir, "best_ema")
    _, val_ds, _, _ = load_datasets(config)
    xs, ys = zip(*[val_ds[i] for i in range(len(val_ds))], strict=True)
    with torch.no_grad():
        acc = (model(torch.stack(xs)).argmax(1) == torch.tensor(ys)).float().mean().item()
    assert ck["metrics"]["val_accuracy_ema"] == pytest.approx(acc)


def test_mixup_soft_targets_reach_the_loss(tiny_config, digits_root, tmp_path, monkeypatch):
    import strop.losses

    seen: list[torch.Tensor] = []
    build = strop.losses.build

    def recording_build(spec):
        loss = build(spec)

        def wrapped(input, target):
            seen.append(target.detach().clone())
            return loss(input, target)

        return wrapped

    monkeypatch.setattr(strop.losses, "build", recording_build)
    res = fit(
        tiny_config(
            digits_root,
            tmp_path / "r",
            epochs=1,
            mixup={"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "prob": 1.0},
        )
    )
    train = [t for t in seen if t.is_floating_point()]
    assert len(train) == 3  # every training batch; validation gets the class ids
    for t in train:
        assert t.shape[1] == 3 and torch.allclose(t.sum(1), torch.ones(len(t)))
    assert any(((t > 0) & (t < 1)).any() for t in train)  # really mixed, not one-hot
    assert all(not t.is_floating_point() for t in seen[3:])
    assert res.choices["train_accuracy"].startswith("against the argmax")
    assert res.choices["feature_cache"] is False


def test_balanced_sampler_and_auto_class_weights(tiny_config, digits_root, tmp_path):
    from strop.train.distributed import init_from_env
    from strop.train.setup import build_run

    root = _imbalanced_digits(digits_root, tmp_path / "data", {"0": 20, "1": 6, "2": 6})
    cfg = tiny_config(
        root,
        tmp_path / "r",
        epochs=1,
        data={"sampler": "balanced", "val_fraction": 0.34},
        loss={"name": "cross_entropy", "weight": "auto"},
    )
    run = build_run(cfg, init_from_env(torch.device("cpu")), torch.device("cpu"), lambda m: None)
    train_labels = torch.tensor(run.loader.dataset.targets)
    counts = torch.bincount(train_labels, minlength=3).double()
    assert counts.tolist() == [13, 4, 4]  # 2/3 of each class trains (stratified split)
    drawn = torch.zeros(3)
    for epoch in range(40):
        run.sampler.set_position(epoch)
        for _, y in run.loader:
            drawn += torch.bincount(y, minlength=3)
    share = drawn / drawn.sum()
    assert torch.allclose(share, torch.full((3,), 1 / 3), atol=0.04), share  # shuffled: 13/21 zeros
    # weight: auto = N / (C · n_c), scikit-learn's "balanced"
    expected = (counts.sum() / (3 * counts)).tolist()
    res = fit(cfg)
    assert res.choices["class_weights"] == pytest.approx(expected, rel=1e-5)
    logits, y = _val_outputs(res.run_dir)
    assert res.history[-1]["val_loss"] == pytest.approx(
        F.cross_entropy(logits, y, weight=torch.tensor(expected, dtype=torch.float32)).item(),
        rel=1e-4,
    )


def test_swa_averages_the_epoch_end_weights(tiny_config, digits_root, tmp_path, monkeypatch):
    steps = _record_steps(monkeypatch)
    res = fit(
        tiny_config(
            digits_root,
            tmp_path / "r",
            epochs=3,
            swa={"start_epoch": 1, "lr": 0.01},
            schedule={"name": "cosine", "interval": "step"},
        )
    )
    swa = load_checkpoint(res.run_dir / "checkpoints" / "swa.pt")["model"]
    ends = [steps[3 * e + 2] for e in (1, 2)]  # 3 steps an epoch; epochs 1 and 2 are averaged
    for name in ("fc.weight", "conv1.weight", "layer4.1.bn2.weight"):
        torch.testing.assert_close(swa[name], (ends[0][name] + ends[1][name]) / 2)
    # BatchNorm statistics were recomputed for the averaged weights (update_bn), not averaged
    mean = (ends[0]["bn1.running_mean"] + ends[1]["bn1.running_mean"]) / 2
    assert not torch.allclose(swa["bn1.running_mean"], mean)
    with open(res.run_dir / "metrics.csv") as fh:
        lrs = [(int(r["epoch"]), float(r["lr"])) for r in csv.DictReader(fh) if r["kind"] == "step"]
    assert all(lr == pytest.approx(0.01) for e, lr in lrs if e >= 2)  # SWALR holds swa.lr
    assert any(lr != pytest.approx(0.01) for e, lr in lrs if e == 1)  # the cosine before it
    choices = json.loads((res.run_dir / "run.json").read_text())
    assert choices["swa"]["epochs_averaged"] == 2 and "swa" in choices["weights"]["candidates"]


def test_tta_and_diagnostics_through_the_cli(tiny_config, digits_root, tmp_path, capsys):
    from strop.cli import main
    from strop.data import load_image_tensor
    from strop.train.inference import load_run_model

    # a small LR: no probability underflows to 0, so the TTA loss has a finite reference
    res = fit(tiny_config(digits_root, tmp_path / "r", epochs=1, optimizer={"lr": 0.005}))
    diag = res.run_dir / "diagnostics"
    with open(diag / "per_class.csv") as fh:
        rows = {r["class"]: r for r in csv.DictReader(fh)}
    logits, y = _val_outputs(res.run_dir)
    for c in range(3):
        assert int(rows[str(c)]["support"]) == int((y == c).sum())
        recall = float(((logits.argmax(1) == c) & (y == c)).sum() / (y == c).sum())
        assert float(rows[str(c)]["recall"]) == pytest.approx(recall, abs=1e-4)
    assert (diag / "confusion_matrix.png").stat().st_size > 0 and (
        diag / "top_losses.png"
    ).is_file()

    image = sorted((digits_root / "1").iterdir())[0]
    assert main(["predict", str(res.run_dir), str(image), "--tta"]) == 0
    row = next(iter(csv.DictReader(capsys.readouterr().out.splitlines())))
    model, config, _ = load_run_model(res.run_dir)
    x = load_image_tensor(image, image_size=config.data.image_size)[None]
    with torch.no_grad():
        probs = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
    assert float(row["probability"]) == pytest.approx(float(probs.max()), abs=1e-5)
    assert row["class"] == ["0", "1", "2"][int(probs.argmax())]

    shutil.rmtree(diag)
    assert main(["eval", str(res.run_dir), "--tta"]) == 0
    out = capsys.readouterr()
    metrics = json.loads(out.out)
    assert metrics["val_accuracy_tta_gain"] == pytest.approx(
        metrics["val_accuracy_tta"] - metrics["val_accuracy"]
    )
    from strop.train.setup import load_datasets

    val_ds = load_datasets(config)[1]
    with torch.no_grad():
        xs = torch.stack([val_ds[i][0] for i in range(len(val_ds))])
        mean_p = (model(xs).softmax(1) + model(xs.flip(-1)).softmax(1)) / 2
    assert metrics["val_accuracy_tta"] == pytest.approx(
        float((mean_p.argmax(1) == y).float().mean())
    )
    assert metrics["val_loss_tta"] == pytest.approx(float(F.nll_loss(mean_p.log(), y)), rel=1e-4)
    assert "confusion_matrix.png" in out.err and (diag / "per_class.md").is_file()


def test_segmentation_diagnostics_and_pixel_class_weights(tiny_config, tmp_path):
    from strop.data import write_shapes
    from strop.data.samplers import pixel_counts
    from strop.train.setup import load_datasets

    root = write_shapes(tmp_path / "shapes", n=12, size=32, seed=0, num_classes=3)
    cfg = tiny_config(
        root,
        tmp_path / "r",
        task="segmentation",
        epochs=1,
        model={"name": "lraspp_mobilenet_v3_large"},
        optimizer={"name": "adamw", "lr": 0.003},
        data={"batch_size": 4, "augment": "standard", "color_jitter": 0.2},
        loss={"name": "cross_entropy", "weight": "auto"},
    )
    res = fit(cfg)
    train_ds, val_ds, _, n = load_datasets(cfg)
    counts = pixel_counts((train_ds.load(i)[1] for i in range(len(train_ds))), n).double()
    assert res.choices["class_weights"] == pytest.approx(
        (counts.sum() / (n * counts)).tolist(), rel=1e-5
    )
    with open(res.run_dir / "diagnostics" / "per_class.csv") as fh:
        rows = list(csv.DictReader(fh))
    val_pixels = pixel_counts((val_ds.load(i)[1] for i in range(len(val_ds))), n)
    assert [int(r["pixels"]) for r in rows[:n]] == val_pixels.tolist()
    assert (res.run_dir / "diagnostics" / "overlays.png").is_file()


def test_augment_preset_is_applied(tiny_config, digits_root, tmp_path):
    from torchvision.transforms import v2

    from strop.train.setup import load_datasets

    cfg = tiny_config(
        digits_root, tmp_path / "r", data={"augment": "trivialaugment", "random_erasing": 0.5}
    )
    train_ds, val_ds, _, _ = load_datasets(cfg)
    kinds = [type(t) for t in train_ds._augment.transforms]
    assert kinds == [
        v2.RandomResizedCrop,
        v2.RandomHorizontalFlip,
        v2.TrivialAugmentWide,
        v2.RandomErasing,
    ]
    assert val_ds._augment is None and not train_ds.deterministic
    flip_only = tiny_config(digits_root, tmp_path / "f", data={"augment": "flip"})
    ds = load_datasets(flip_only)[0]
    views = []
    for seed in range(12):
        torch.manual_seed(seed)
        views.append(ds[0][0])
    base = views[0]
    # the flip preset gives the image or its mirror, both within 12 draws
    assert all(torch.equal(v, base) or torch.equal(v, base.flip(-1)) for v in views)
    assert any(torch.equal(v, base.flip(-1)) for v in views) and any(
        torch.equal(v, base) for v in views
    )
    no_flip = load_datasets(
        tiny_config(digits_root, tmp_path / "n", data={"augment": "flip", "hflip": False})
    )[0]
    assert no_flip._augment is None and no_flip.deterministic
    # through fit: random augmentation turns the feature cache off, and config.yaml records it
    res = fit(
        tiny_config(
            digits_root,
            tmp_path / "fit",
            epochs=1,
            model={"freeze": "backbone"},
            data={"augment": "trivialaugment"},
        )
    )
    assert res.choices["feature_cache"] is False
    assert "augmentation is random" in res.choices["feature_cache_reason"]


def test_fine_tune_recipe_resolves_and_user_keys_win(tiny_config, digits_root, tmp_path):
    import yaml

    from strop.train.recipes import FINE_TUNE

    cfg = tiny_config(
        digits_root,
        tmp_path / "r",
        epochs=2,
        recipe="fine_tune",
        optimizer={"name": "adamw", "lr": 1e-3},
    )
    assert cfg.optimizer.lr == 1e-3  # the user's
    assert cfg.optimizer.head_lr_mult == FINE_TUNE["optimizer"]["head_lr_mult"]  # the preset's
    assert cfg.data.batch_size == 16  # the user's (tiny_config), not the preset's
    assert cfg.gradual_unfreeze.lr_mult == FINE_TUNE["gradual_unfreeze"]["lr_mult"]
    res = fit(cfg)
    written = yaml.safe_load((res.run_dir / "config.yaml").read_text())
    assert written["recipe"] == "fine_tune" and written["ema"] is None  # the preset has no EMA
    assert (
        written["gradual_unfreeze"]["head_epochs"] == FINE_TUNE["gradual_unfreeze"]["head_epochs"]
    )
    assert written["schedule"]["name"] == FINE_TUNE["schedule"]["name"]
    assert "val_accuracy_ema" not in res.history[-1]
    other = tiny_config(
        digits_root,
        tmp_path / "o",
        recipe="fine_tune",
        gradual_unfreeze=None,
        ema={"decay": 0.9},
        optimizer={"name": "sgd"},
    )
    assert other.gradual_unfreeze is None and other.ema.decay == 0.9
    assert other.optimizer.name == "sgd" and other.optimizer.head_lr_mult == 1.0


def _weights_and_ema(run_dir):
    ck = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    return ck["model"], ck["ema"]["averaged"], ck["mixer"]["rng_state"]


@pytest.mark.parametrize("where", ["mid_epoch", "epoch_end"])
def test_resume_is_exact_with_ema_mixup_and_balanced_sampler(
    tiny_config, digits_root, tmp_path, where
):
    over = dict(
        epochs=2,
        ema={"decay": 0.9},
        mixup={"mixup_alpha": 0.4, "cutmix_alpha": 1.0},
        data={"sampler": "balanced", "augment": "standard"},
        schedule={"name": "cosine"},
    )
    full = fit(tiny_config(digits_root, tmp_path / "full", **over))

    class Stop:
        def on_batch_end(self, state, logs):
            if where == "mid_epoch" and state.epoch == 1 and state.batch_in_epoch == 1:
                state.should_stop, state.interrupted = True, "SIGINT"

        def on_epoch_end(self, state, logs):
            if where == "epoch_end":
                state.should_stop = True

    part = tiny_config(digits_root, tmp_path / "part", **over)
    first = fit(part, callbacks=[Stop()])
    assert first.interrupted == ("SIGINT" if where == "mid_epoch" else None)
    resumed = fit(part, resume=True)
    a, b = _weights_and_ema(full.run_dir), _weights_and_ema(resumed.run_dir)
    for x, y in zip(a[:2], b[:2], strict=True):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert torch.equal(a[2], b[2])
    assert [r["val_accuracy_ema"] for r in full.history] == [
        r["val_accuracy_ema"] for r in resumed.history
    ]


@pytest.mark.parametrize(
    ("direction", "raw", "ema", "swa", "used"),
    [
        ("max", 0.8, 0.9, 0.85, "ema"),
        ("max", 0.9, 0.8, 0.85, "raw"),
        ("max", 0.8, 0.85, 0.9, "swa"),
        ("max", 0.9, 0.9, None, "raw"),  # a tie keeps the raw weights
        ("min", 0.3, 0.2, None, "ema"),
        ("min", 0.2, 0.3, 0.25, "raw"),
    ],
)
def test_the_better_weights_are_used_and_eval_loads_them(tmp_path, direction, raw, ema, swa, used):
    from types import SimpleNamespace

    from strop.train.inference import checkpoint_path
    from strop.train.recipe_run import _choose_weights

    run = SimpleNamespace(
        config=SimpleNamespace(monitor_metric="m", monitor_direction=direction),
        ema=SimpleNamespace(best_metric=ema, best_epoch=2),
    )
    state = SimpleNamespace(best_metric=raw, best_epoch=3, epoch=4)
    weights = _choose_weights(run, state, swa)
    assert weights["used"] == used
    assert (
        weights["checkpoint"]
        == {
            "raw": "checkpoints/best.pt",
            "ema": "checkpoints/best_ema.pt",
            "swa": "checkpoints/swa.pt",
        }[used]
    )
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / weights["checkpoint"]).write_bytes(b"")
    (tmp_path / "run.json").write_text(json.dumps({"weights": weights}))
    assert checkpoint_path(tmp_path) == tmp_path / weights["checkpoint"]
    assert checkpoint_path(tmp_path, "last") == tmp_path / "checkpoints" / "last.pt"
