"""Numerical faults in training: NaN/inf gradients and losses under both ``nonfinite`` policies, a
NaN model and ``best.pt``, and fp16 overflow handled by the GradScaler (on the CPU).

Faults are injected into a real run (mobilenet_v3_small on 16×16 digits, ~2 s): a gradient hook
that turns one parameter's gradient into NaN, a forward pre-hook that feeds a NaN image, weights
overwritten with NaN. Nothing in strop is mocked except where a metric must be forced.
"""

import math

import pytest
import torch

import strop.finetune
import strop.train.trainer as trainer_mod
from strop.cli import main
from strop.train import NonFiniteLossError, config_from_dict, fit, load_checkpoint
from strop.train.report import read_metrics

STEPS_PER_EPOCH = 6  # 45 training images, batch 8


def _config(root, out, **over):
    base = {
        "data": {
            "root": str(root),
            "image_size": 16,
            "batch_size": 8,
            "val_fraction": 0.25,
            "num_workers": 0,
        },
        "model": {"name": "mobilenet_v3_small"},
        "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 1e-4},
        "precision": "fp32",
        "memory_format": "contiguous",
        "feature_cache": "off",
        "epochs": 2,
        "seed": 0,
        "progress": False,
        "output": str(out),
    }
    base.update(over)
    return config_from_dict(base)


def _quiet(msg):
    pass


def _nonfinite(state_dict):
    """Names of the floating-point tensors holding a NaN or inf."""
    return [
        k for k, t in state_dict.items() if t.is_floating_point() and not torch.isfinite(t).all()
    ]


@pytest.fixture
def inject(monkeypatch):
    """``inject(kind, at)`` makes the next built model misbehave at training batch ``at`` (1-based):
    ``"grad"``: NaN gradient of ``classifier.3.bias`` only (the loss stays finite);
    ``"input"``: a NaN image batch (loss NaN, and BatchNorm sees NaN in its forward)."""
    real = strop.finetune.build_model

    def arm(kind, at):
        def build(*args, **kwargs):
            model = real(*args, **kwargs)
            count = {"batches": 0}

            def pre(module, inputs):
                if module.training:
                    count["batches"] += 1
                    if kind == "input" and count["batches"] == at:
                        return (inputs[0] * float("nan"),)
                return None

            def grad_hook(grad):
                return grad * float("nan") if count["batches"] == at else grad

            model.register_forward_pre_hook(pre)
            if kind == "grad":
                model.classifier[3].bias.register_hook(grad_hook)
            return model

        monkeypatch.setattr(strop.finetune, "build_model", build)

    return arm


def test_nan_gradient_stop_names_batch_and_parameter(digits_root, tmp_path, inject):
    inject("grad", at=3)
    out = tmp_path / "run"
    with pytest.raises(
        NonFiniteLossError,
        match=r"non-finite gradient in parameter 'classifier\.3\.bias' "
        r"at epoch 0, batch 2 \(step 2\); nothing was saved",
    ):
        fit(_config(digits_root, out, nonfinite="stop", checkpoint_every_steps=1), log=_quiet)
    saved = load_checkpoint(out / "checkpoints" / "last.pt")
    assert saved["state"]["step"] == 2 and _nonfinite(saved["model"]) == []  # the last good step
    assert not (out / "checkpoints" / "best.pt").exists()


def test_nan_gradient_stop_is_a_one_line_cli_error(digits_root, tmp_path, inject, capsys):
    inject("grad", at=3)
    cfg = tmp_path / "cfg.yaml"
    import yaml

    cfg.write_text(
        yaml.safe_dump(_config(digits_root, tmp_path / "run", nonfinite="stop").to_dict())
    )
    rc = main(["train", str(cfg)])
    err = capsys.readouterr().err
    assert rc not in (0, 130)
    assert (
        "strop train: error: non-finite gradient in parameter 'classifier.3.bias' at epoch 0, batch 2"
        in err
    )
    assert "Traceback" not in err


def test_nan_gradient_skip_counts_it_leaves_the_weights_and_continues(
    digits_root, tmp_path, inject
):
    inject("grad", at=3)
    params = {}

    class Snapshot:
        def on_batch_end(self, state, logs):
            params[state.step] = {
                k: v.detach().clone() for k, v in model_ref["m"].named_parameters()
            }

    model_ref = {}
    real_build = strop.finetune.build_model  # the injecting builder

    def keep(*a, **k):
        model_ref["m"] = real_build(*a, **k)
        return model_ref["m"]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(strop.finetune, "build_model", keep)
        res = fit(_config(digits_root, tmp_path / "run"), callbacks=[Snapshot()], log=_quiet)
    assert [h["nonfinite_batches"] for h in res.history] == [1.0, 1.0]  # cumulative, in metrics.csv
    epochs, _ = read_metrics(res.run_dir / "metrics.csv")
    assert [e["nonfinite_batches"] for e in epochs] == [1.0, 1.0]
    for k in params[3]:  # step 3 was skipped: no parameter moved (not even by weight decay)
        assert torch.equal(params[3][k], params[2][k]), k
    assert any(not torch.equal(params[4][k], params[3][k]) for k in params[4])  # step 4 trained
    assert (
        len(res.history) == 2
        and _nonfinite(load_checkpoint(res.run_dir / "checkpoints" / "last.pt")["model"]) == []
    )


def test_nan_input_skip_does_not_poison_batchnorm(digits_root, tmp_path, inject):
    """Skipping the step is not enough: the NaN forward already ran BatchNorm's running stats."""
    inject("input", at=3)
    res = fit(_config(digits_root, tmp_path / "run"), log=_quiet)
    assert res.final["nonfinite_batches"] == 1.0
    bad = _nonfinite(load_checkpoint(res.run_dir / "checkpoints" / "last.pt")["model"])
    assert bad == [], f"{len(bad)} tensors are NaN, e.g. {bad[:3]}"
    assert all(math.isfinite(h["val_loss"]) for h in res.history)
    assert (res.run_dir / "checkpoints" / "best.pt").exists()


def test_a_nan_model_is_never_saved_as_best(digits_root, tmp_path, monkeypatch):
    """Epoch 2 ends with NaN weights and a (forced) record metric: best.pt stays at epoch 1."""

    class PoisonAtTheEnd:
        def __init__(self):
            self.model = None

        def on_batch_end(self, state, logs):
            if state.step == 2 * STEPS_PER_EPOCH:
                with torch.no_grad():
                    next(iter(self.model.parameters())).fill_(float("nan"))

    poison = PoisonAtTheEnd()
    real_build, real_eval = strop.finetune.build_model, trainer_mod.evaluate

    def build(*a, **k):
        poison.model = real_build(*a, **k)
        return poison.model

    def evaluate(engine, loader, **kw):
        logs = real_eval(engine, loader, **kw)
        if _nonfinite(engine.model.state_dict()):
            logs["val_accuracy"] = 1.0  # a record: only the NaN check can refuse it
        return logs

    monkeypatch.setattr(strop.finetune, "build_model", build)
    monkeypatch.setattr(trainer_mod, "evaluate", evaluate)
    res = fit(_config(digits_root, tmp_path / "run"), callbacks=[poison], log=_quiet)
    assert res.history[-1]["val_accuracy"] == 1.0 and res.history[0]["val_accuracy"] < 1.0
    best = load_checkpoint(res.run_dir / "checkpoints" / "best.pt")
    assert best["epoch"] == 1 and res.best_epoch == 1
    assert _nonfinite(best["model"]) == []
    assert _nonfinite(load_checkpoint(res.run_dir / "checkpoints" / "last.pt")["model"]) != []


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_fp16_overflow_steps_are_skipped_counted_and_training_continues(
    digits_root, tmp_path, policy
):
    """fp16 on the CPU: the scaler starts at 2**16, the first steps overflow and are skipped; each
    skip halves the scale (torch's backoff 0.5). An overflow is the scaler's business, not a fault
    for ``nonfinite`` (``stop`` must not stop)."""
    logs = []
    res = fit(
        _config(digits_root, tmp_path / "run", precision="fp16", nonfinite=policy), log=logs.append
    )
    skipped = int(res.final["skipped_steps"])
    assert 0 < skipped < 2 * STEPS_PER_EPOCH  # overflowed at first, trained afterwards
    epochs, steps = read_metrics(res.run_dir / "metrics.csv")
    assert [int(e["skipped_steps"]) for e in epochs] == [
        int(h["skipped_steps"]) for h in res.history
    ]
    assert len(steps) == 2 * STEPS_PER_EPOCH and len(res.history) == 2
    ck = load_checkpoint(res.run_dir / "checkpoints" / "last.pt")
    assert ck["state"]["skipped_steps"] == ck["amp"]["skipped_steps"] == skipped
    assert ck["amp"]["scaler"]["scale"] == 2.0**16 * 0.5**skipped  # no growth within 2000 steps
    assert _nonfinite(ck["model"]) == [] and res.final["nonfinite_batches"] == 0.0
    assert f"fp16 scaler skipped {skipped} optimizer step(s)" in "\n".join(logs)
