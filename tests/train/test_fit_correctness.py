"""``fit`` against independent computations, not against another run of itself.

Each test names the bug it catches. The trainer internals the tests must reach are named once in
``_train_seams.py``; everything else is public behaviour (``fit``, the run folder,
``strop.finetune.build_model``, torch's own optimizer hooks).
"""

from __future__ import annotations

import copy
import csv
import importlib
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _configs import merged, tiny_config
from _train_seams import BUILD_MODEL, EVALUATE_TARGET

from strop.data import image_folder
from strop.train import fit, load_checkpoint

# a small fast run whose weights move every step (dropout off unless asked)
_FAST = {
    "data": {"val_fraction": 0.2},
    "model": {"name": "mobilenet_v3_small", "dropout": 0.0},
    "optimizer": {"lr": 0.01, "momentum": 0.0},
    "feature_cache": "off",
}


def _config(root, out, **over):
    """:func:`tiny_config` with :data:`_FAST` and then ``over`` applied."""
    return tiny_config(root, out, **merged(_FAST, over))


def _quiet(msg):
    pass


def _rows(run_dir, kind):
    with open(Path(run_dir) / "metrics.csv", newline="") as fh:
        return [{k: v for k, v in r.items()} for r in csv.DictReader(fh) if r["kind"] == kind]


def _weights(run_dir, which="last"):
    return load_checkpoint(Path(run_dir) / "checkpoints" / f"{which}.pt")["model"]


@pytest.fixture
def captured_models(monkeypatch):
    """Every model ``fit`` builds through ``strop.finetune.build_model``, in order."""
    module = importlib.import_module(BUILD_MODEL[0])
    real = getattr(module, BUILD_MODEL[1])
    models = []

    def build(*args, **kwargs):
        models.append(real(*args, **kwargs))
        return models[-1]

    monkeypatch.setattr(module, BUILD_MODEL[1], build)
    return models


@pytest.fixture
def scripted_metrics(monkeypatch):
    """``script([{...}, {...}])``: epoch e's validation metrics are the e-th dict."""

    def script(epochs):
        it = iter(epochs)
        monkeypatch.setattr(EVALUATE_TARGET, lambda *a, **k: dict(next(it)))

    return script


class _StopAfterSteps:
    def __init__(self, steps):
        self.steps = steps

    def on_batch_end(self, state, logs):
        if state.step >= self.steps:
            state.should_stop = True


class _SnapshotEachEpoch:
    """The weights of ``models[0]`` at each epoch end (what best.pt should hold for that epoch)."""

    def __init__(self, models):
        self.models, self.epochs = models, []

    def on_epoch_end(self, state, logs):
        self.epochs.append(copy.deepcopy(self.models[0].state_dict()))


# --------------------------------------------------------------- best.pt / early stopping direction


@pytest.mark.slow
@pytest.mark.parametrize(
    ("over", "metric", "values", "best_epoch"),
    [
        ({}, "val_accuracy", [0.5, 0.8, 0.6], 2),  # max
        ({"monitor": "val_loss"}, "val_loss", [0.9, 0.3, 0.6], 2),  # min
        ({"monitor_mode": "min"}, "val_accuracy", [0.5, 0.8, 0.4], 3),  # min on accuracy
    ],
)
def test_best_pt_follows_the_monitor_direction(
    digits_root, tmp_path, scripted_metrics, captured_models, over, metric, values, best_epoch
):
    # caught by: `value > best` flipped in the best rule, monitor_mode ignored
    other = "val_loss" if metric == "val_accuracy" else "val_accuracy"
    scripted_metrics([{metric: v, other: 0.5} for v in values])
    snaps = _SnapshotEachEpoch(captured_models)
    res = fit(
        _config(digits_root, tmp_path / "run", epochs=3, **over), callbacks=[snaps], log=_quiet
    )
    assert (res.best_epoch, res.best_metric) == (best_epoch, values[best_epoch - 1])
    best = load_checkpoint(res.run_dir / "checkpoints" / "best.pt")
    assert best["epoch"] == best_epoch and best["metrics"][metric] == values[best_epoch - 1]
    for k, v in best["model"].items():
        assert torch.equal(v, snaps.epochs[best_epoch - 1][k]), k
    later = [e for e in range(3) if e != best_epoch - 1]
    assert any(not torch.equal(best["model"][k], snaps.epochs[later[-1]][k]) for k in best["model"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("over", "values", "epochs_run"),
    [
        (
            {},
            [("val_accuracy", v) for v in (0.5, 0.6, 0.7, 0.8)],
            4,
        ),  # rising accuracy: never stops
        (
            {},
            [("val_accuracy", v) for v in (0.8, 0.7, 0.6, 0.5)],
            2,
        ),  # falling accuracy: patience 1
        ({"monitor": "val_loss"}, [("val_loss", v) for v in (0.8, 0.7, 0.6, 0.5)], 4),
        ({"monitor": "val_loss"}, [("val_loss", v) for v in (0.5, 0.6, 0.7, 0.8)], 2),
    ],
)
def test_early_stopping_follows_the_monitor_direction(
    digits_root, tmp_path, scripted_metrics, over, values, epochs_run
):
    # caught by: EarlyStopping built with the wrong mode, or its comparison flipped
    scripted_metrics([{"val_loss": 0.5, "val_accuracy": 0.5, k: v} for k, v in values])
    res = fit(
        _config(digits_root, tmp_path / "run", epochs=4, early_stopping={"patience": 1}, **over),
        log=_quiet,
    )
    assert len(res.history) == epochs_run


# ----------------------------------------------------------------------------- plateau inside fit


def _reference_plateau_lrs(values, mode, lr, **kw):
    """torch's ReduceLROnPlateau fed by hand in ``mode``: the LR each epoch trains with."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, **kw)
    lrs = []
    for v in values:
        lrs.append(opt.param_groups[0]["lr"])
        sched.step(v)
    return lrs, opt.param_groups[0]["lr"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("over", "metric", "values", "mode", "expected"),
    [
        ({}, "val_accuracy", [0.5, 0.6, 0.7, 0.8], "max", [0.01] * 4),  # rising: no cut
        ({}, "val_accuracy", [0.5, 0.5, 0.5, 0.5], "max", [0.01, 0.01, 0.01, 0.005]),  # flat: cut
        (
            {"monitor": "val_loss"},
            "val_loss",
            [0.8, 0.7, 0.6, 0.5],
            "min",
            [0.01] * 4,
        ),  # falling loss
    ],
)
def test_plateau_schedule_in_fit_follows_the_monitor(
    digits_root, tmp_path, scripted_metrics, over, metric, values, mode, expected
):
    # caught by: ReduceLROnPlateau left in torch's default mode "min" for val_accuracy (issue 11)
    other = "val_loss" if metric == "val_accuracy" else "val_accuracy"
    scripted_metrics([{metric: v, other: 0.5} for v in values])
    res = fit(
        _config(
            digits_root,
            tmp_path / "run",
            epochs=4,
            schedule={"name": "plateau", "patience": 1, "factor": 0.5},
            **over,
        ),
        log=_quiet,
    )
    ref, ref_after = _reference_plateau_lrs(values, mode, 0.01, patience=1, factor=0.5)
    assert ref == pytest.approx(expected)  # the hand values agree with torch's own rule
    steps = _rows(res.run_dir, "step")
    per_epoch = [
        sorted({float(r["lr"]) for r in steps if int(r["epoch"]) == e}) for e in (1, 2, 3, 4)
    ]
    assert per_epoch == [[pytest.approx(v)] for v in expected]
    last = load_checkpoint(res.run_dir / "checkpoints" / "last.pt")["optimizer"]["param_groups"]
    assert [g["lr"] for g in last] == [pytest.approx(ref_after)] * len(last)


# ------------------------------------------------------------------ accumulation = the full batch


@pytest.mark.slow
@pytest.mark.parametrize(
    ("full", "micro", "accum"),
    [
        (16, 8, 2),  # 48 training images: three whole groups per epoch
        (32, 8, 4),
    ],  # 48 = 32 + 16: the last group has 2 of its 4 batches and is averaged over 2
)
def test_accumulation_equals_the_full_batch(digits_root, tmp_path, full, micro, accum):
    # caught by: loss not divided by the group size, a short last group divided by accum,
    # a step taken every micro-batch, zero_grad inside the group
    # a frozen resnet18 backbone keeps its BatchNorm in eval mode: no statistic depends on the
    # batch, so a batch of 16 and two of 8 must give the same gradient
    model = {"name": "resnet18", "freeze": "backbone", "train_bn": False}

    def run(name, batch, steps):
        cfg = _config(
            digits_root,
            tmp_path / name,
            data={"batch_size": batch},
            accumulation_steps=steps,
            model=model,
        )
        return _weights(fit(cfg, log=_quiet).run_dir)

    ref = run("full", full, 1)
    acc = run("accum", micro, accum)
    control = run("control", micro, 1)
    worst = max(float((ref[k] - acc[k]).abs().max()) for k in ref)
    for k in ref:
        torch.testing.assert_close(acc[k], ref[k], rtol=1e-5, atol=1e-6, msg=k)
    control_diff = max(float((ref[k] - control[k]).abs().max()) for k in ref)
    assert control_diff > 1e-4 and control_diff > 100 * worst, (control_diff, worst)


# ------------------------------------------------------------------------------ per-epoch shuffling


@pytest.mark.slow
def test_each_epoch_order_is_randperm_of_seed_plus_epoch(digits_root, tmp_path, captured_models):
    # caught by: set_epoch not called (same order every epoch), a seed that ignores config.seed
    seed = 3
    seen = []

    class RecordTrainInputs:
        def on_fit_start(self, state):
            captured_models[0].register_forward_pre_hook(
                lambda mod, args: seen.append(args[0].detach().clone()) if mod.training else None
            )

    fit(
        _config(digits_root, tmp_path / "run", seed=seed),
        callbacks=[RecordTrainInputs()],
        log=_quiet,
    )
    train_ds, _, _ = image_folder(digits_root, image_size=32, val_fraction=0.2, seed=seed)
    index = {train_ds[i][0].numpy().tobytes(): i for i in range(len(train_ds))}
    assert len(index) == len(train_ds) == 48  # every image distinct: an order can be read back
    order = [index[x.numpy().tobytes()] for batch in seen for x in batch]
    assert len(order) == 2 * 48
    for epoch in (0, 1):
        # torch's DistributedSampler rule: randperm with a generator seeded seed + epoch
        g = torch.Generator()
        g.manual_seed(seed + epoch)
        assert order[48 * epoch : 48 * (epoch + 1)] == torch.randperm(48, generator=g).tolist()
    assert order[:48] != order[48:]


# ------------------------------------------------------------------ RNG restored on resume (dropout)


@pytest.mark.slow
def test_resume_restores_the_rng_that_dropout_draws_from(digits_root, tmp_path):
    # caught by: restore_rng skipped on resume (dropout masks of epoch 2 then differ)
    over = {"model": {"name": "mobilenet_v3_small", "dropout": 0.5}}
    full = fit(_config(digits_root, tmp_path / "full", **over), log=_quiet)

    class StopAfterFirstEpoch:
        def on_epoch_end(self, state, logs):
            state.should_stop = True

    part = _config(digits_root, tmp_path / "part", **over)
    fit(part, callbacks=[StopAfterFirstEpoch()], log=_quiet)
    resumed = fit(part, resume=True, log=_quiet)
    a, b = _weights(full.run_dir), _weights(resumed.run_dir)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# -------------------------------------------------------------------------------- clipping via fit


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_the_optimizer_sees_clipped_gradients(digits_root, tmp_path, precision):
    # caught by: clipping skipped, clipping before the fp16 unscale (the optimizer then sees
    # clip / scale), clipping a copy of the gradients
    clip = 1e-3  # far below the raw gradient norm (~0.1-10), so every step is clipped
    norms = []

    def pre_step(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(
            float(
                torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
                )
            )
        )

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(pre_step)
    try:
        res = fit(
            _config(
                digits_root,
                tmp_path / precision,
                precision=precision,
                clip_grad_norm=clip,
                epochs=1,
            ),
            callbacks=[_StopAfterSteps(3)],
            log=_quiet,
        )
    finally:
        handle.remove()
    assert res.choices["precision"] == precision
    assert len(norms) >= 2  # fp16 may skip a step on inf, the others step every time
    assert norms == [pytest.approx(clip, rel=1e-3)] * len(norms)


# ------------------------------------------------------------------------------------- aux heads


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "size", "aux_weight"),
    [
        ("googlenet", 32, None),
        ("googlenet", 32, 1.5),
        ("googlenet", 32, 0.0),
        ("inception_v3", 299, None),
    ],
)
def test_aux_heads_add_weighted_losses(
    digits_root, tmp_path, captured_models, monkeypatch, name, size, aux_weight
):
    # caught by: aux losses dropped, the 0.4 weight hard-coded over aux_weight, aux scored instead of main
    import strop.losses

    targets, outputs = [], []

    def recording_build(spec):
        def loss(input, target):
            targets.append(target)
            return F.cross_entropy(input, target)

        return loss

    monkeypatch.setattr(strop.losses, "build", recording_build)

    class RecordOutputs:
        def on_fit_start(self, state):
            captured_models[0].register_forward_hook(lambda mod, args, out: outputs.append(out))

    model = {"name": name} if aux_weight is None else {"name": name, "aux_weight": aux_weight}
    res = fit(
        _config(
            digits_root,
            tmp_path / "run",
            model=model,
            data={"image_size": size, "batch_size": 2},
            epochs=1,
        ),
        callbacks=[RecordOutputs(), _StopAfterSteps(1)],
        log=_quiet,
    )
    assert res.history == []  # stopped after one step, before validation
    out, y = [t.detach() if t is not None else None for t in outputs[0]], targets[0]
    main, aux = out[0], [t for t in out[1:] if t is not None]
    assert len(aux) == (2 if name == "googlenet" else 1)
    w = 0.4 if aux_weight is None else aux_weight
    expected = F.cross_entropy(main, y) + w * sum(F.cross_entropy(a, y) for a in aux)
    logged = float(_rows(res.run_dir, "step")[0]["loss"])
    assert logged == pytest.approx(float(expected), rel=1e-6)
    assert math.isfinite(logged)


# ------------------------------------------------ a run that learns (last: its fixture costs ~10 s)

LEARNS = {
    "model": {"name": "resnet18", "bn_momentum": 0.5},
    "optimizer": {"name": "adam", "lr": 1e-3},
    "data": {"batch_size": 8, "val_fraction": 0.25},
}


@pytest.fixture(scope="module")
def learned_run(digits_root, tmp_path_factory):
    """resnet18 on 3 digit classes, 2 epochs: well above chance (1/3).

    BatchNorm momentum 0.5 lets the running statistics catch up within the 6 steps of an epoch
    (torchvision's 0.1 leaves them near their initial values and validation at chance).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = fit(
            _config(digits_root, tmp_path_factory.mktemp("learn") / "run", **LEARNS), log=_quiet
        )
    finally:
        torch.set_num_threads(threads)
    return res


@pytest.mark.slow
def test_the_fixture_learns(learned_run):
    # caught: a no-op optimizer step, gradients zeroed before the step, evaluate in train mode
    accs = [h["val_accuracy"] for h in learned_run.history]
    assert max(accs) >= 0.8, accs  # chance is 1/3
    assert learned_run.history[-1]["train_loss"] < learned_run.history[0]["train_loss"]
    assert learned_run.best_epoch == 1 + accs.index(max(accs))


@pytest.mark.slow
def test_logged_val_metrics_equal_an_independent_eval_of_best_pt(learned_run, digits_root):
    """Catches evaluate in train mode (BatchNorm batch statistics, running stats moved by the
    validation data) and a wrong loss/accuracy average."""
    from strop.finetune import build_model

    ck = load_checkpoint(learned_run.run_dir / "checkpoints" / "best.pt")
    model = build_model("resnet18", num_classes=3)
    model.load_state_dict(ck["model"])
    model.eval()
    _, val_ds, _ = image_folder(digits_root, image_size=32, val_fraction=0.25, seed=0)
    xs = torch.stack([val_ds[i][0] for i in range(len(val_ds))])
    ys = torch.tensor([val_ds[i][1] for i in range(len(val_ds))])
    with torch.no_grad():
        logits = model(xs)
    loss = F.cross_entropy(logits, ys).item()
    acc = (logits.argmax(1) == ys).double().mean().item()
    logged = learned_run.history[ck["epoch"] - 1]
    assert logged["val_accuracy"] == pytest.approx(acc, abs=1e-12)
    assert logged["val_loss"] == pytest.approx(loss, rel=1e-4)
