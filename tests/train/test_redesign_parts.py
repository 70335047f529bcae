"""The parts the trainer is built from, each against an independent computation: the "better"
rule, confusion/Dice/IoU (scikit-learn), evaluate without an optimizer, the symmetric state dump,
bundled roots, ``output_loss`` and ``MixedPrecision.optimizer_step``."""

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, jaccard_score
from torch import nn

from strop.data import roots
from strop.finetune.heads import output_loss
from strop.losses import build as build_loss
from strop.precision import MixedPrecision
from strop.train.loop import TrainState, evaluate
from strop.train.metrics import confusion_matrix as strop_confusion
from strop.train.metrics import is_better, overlap_metrics
from strop.train.state import UnfreezeProgress, dump_state, restore_state, upgrade_checkpoint
from strop.train.tasks import build_task


@pytest.mark.parametrize(
    ("value", "best", "mode", "min_delta", "expected"),
    [
        (0.8, 0.5, "max", 0.0, True),
        (0.4, 0.5, "max", 0.0, False),
        (0.5, 0.5, "max", 0.0, False),  # equal is not better
        (0.4, 0.5, "min", 0.0, True),
        (0.55, 0.5, "max", 0.1, False),  # within min_delta
        (0.65, 0.5, "max", 0.1, True),
        (float("nan"), 0.5, "max", 0.0, False),
        (float("inf"), 0.5, "max", 0.0, False),
        (None, 0.5, "max", 0.0, False),
        (3.0, None, "min", 0.0, True),  # anything finite beats no best
    ],
)
def test_is_better(value, best, mode, min_delta, expected):
    assert is_better(value, best, mode, min_delta) is expected


def test_confusion_and_overlap_equal_scikit_learn():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (2, 5, 5), generator=g)
    logits = torch.randn(2, 3, 5, 5, generator=g)
    target[0, 0, :2] = 255  # ignore_index pixels are dropped
    pred = logits.argmax(1)
    keep = target != 255
    t, p = target[keep].numpy(), pred[keep].numpy()
    cm = strop_confusion(logits, target, 3)
    assert cm.tolist() == confusion_matrix(t, p, labels=[0, 1, 2]).tolist()
    m = overlap_metrics(cm)
    # foreground classes only (1, 2), each present here, averaged
    assert m["val_dice"] == pytest.approx(f1_score(t, p, labels=[1, 2], average="macro"))
    assert m["val_iou"] == pytest.approx(jaccard_score(t, p, labels=[1, 2], average="macro"))
    assert m["val_pixel_accuracy"] == pytest.approx(accuracy_score(t, p))


def test_binary_confusion_thresholds_the_single_logit_at_zero():
    logits = torch.tensor([[[[-1.0, 2.0], [0.5, -0.1]]]])  # (1, 1, 2, 2)
    target = torch.tensor([[[0, 1], [0, 1]]])
    assert strop_confusion(logits, target, 2).tolist() == [[1.0, 1.0], [1.0, 1.0]]


def _loader(x, y, batch):
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]


def test_evaluate_needs_no_optimizer_and_matches_a_hand_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 7))
    x, y = torch.randn(10, 4), torch.randint(0, 7, (10,))
    model.train()
    stats = model[1].running_mean.clone()
    metrics = evaluate(
        model, nn.CrossEntropyLoss(), _loader(x, y, 4), task="classification", num_classes=7
    )
    assert model.training  # mode restored
    assert torch.equal(model[1].running_mean, stats)  # eval mode: BatchNorm statistics untouched
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert metrics["val_loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)
    assert metrics["val_accuracy"] == pytest.approx(accuracy_score(y, logits.argmax(1)))
    top5 = logits.topk(5, 1).indices
    assert metrics["val_top5"] == pytest.approx(float((top5 == y[:, None]).any(1).float().mean()))


def test_evaluate_segmentation_scores_the_main_output_only():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 1, 1)

        def forward(self, x):
            out = self.conv(x)
            return {"out": out, "aux": -out}  # an aux head that is always wrong

    torch.manual_seed(0)
    model = TwoHeads()
    x, y = torch.randn(4, 3, 6, 6), torch.randint(0, 2, (4, 6, 6))
    loss_fn = build_loss("bce")
    metrics = evaluate(model, loss_fn, _loader(x, y, 2), task=build_task("segmentation", 2))
    with torch.no_grad():
        out = model(x)["out"]
    pred = (out[:, 0] > 0).long().flatten().numpy()
    assert metrics["val_dice"] == pytest.approx(f1_score(y.flatten().numpy(), pred))
    assert metrics["val_loss"] == pytest.approx(float(loss_fn(out, y)), rel=1e-6)


def test_state_is_dumped_and_restored_symmetrically():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = TrainState(epoch=1, step=7, epoch_sums={"loss": 1.5, "count": 3.0, "correct": 1.0})

    def train_step():
        opt.zero_grad()
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        state.step += 1

    train_step()
    objects = {"state": state, "model": model, "optimizer": opt, "nothing": None}
    saved = dump_state(objects)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    momentum = opt.state[model.weight]["momentum_buffer"].clone()
    next_draw = torch.rand(3)
    torch.manual_seed(0)  # restore_state must bring back the RNG that dump_state saw
    # state_dict() shares storage with the live objects: a checkpoint is a copy on disk
    saved = copy.deepcopy(saved)
    train_step()
    train_step()
    state.epoch_sums["loss"] = 99.0
    restore_state(objects, saved)
    assert state.step == 8 and state.epoch == 1 and state.epoch_sums["loss"] == 1.5
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    assert torch.equal(opt.state[model.weight]["momentum_buffer"], momentum)
    assert torch.equal(torch.rand(3), next_draw)
    assert saved["nothing"] is None


def test_unfreeze_progress_replays_the_epochs_it_had_started():
    calls = []

    class Plan:
        def on_epoch_start(self, epoch, model, optimizer):
            calls.append(epoch)

    progress = UnfreezeProgress(Plan(), model=None, optimizer=None)
    progress.load_state_dict({"epochs_started": 3})
    assert calls == [0, 1, 2] and progress.state_dict() == {"epochs_started": 3}


@pytest.mark.parametrize(("epoch", "batch", "started"), [(2, 0, 2), (2, 5, 3), (0, 0, 0)])
def test_a_checkpoint_without_unfreeze_progress_is_upgraded(epoch, batch, started):
    ck = upgrade_checkpoint({"unfreeze": None, "state": {"epoch": epoch, "batch_in_epoch": batch}})
    assert ck["unfreeze"] == {"epochs_started": started}


def test_bundled_roots_are_a_table(tmp_path, monkeypatch):
    monkeypatch.setenv("STROP_DATA", str(tmp_path))
    written = []
    monkeypatch.setitem(roots.BUNDLED, "tiny", lambda folder: written.append(folder) or folder)
    assert roots.resolve_root("bundled:tiny") == tmp_path / "tiny" and written == [
        tmp_path / "tiny"
    ]
    assert roots.resolve_root("some/folder") == Path("some/folder")
    with pytest.raises(
        ValueError, match=r"'bundled:nope' names no bundled data set; available: bundled:digits"
    ):
        roots.resolve_root("bundled:nope")
    from strop.train.trainer import bundled_root

    assert bundled_root is roots.resolve_root


def test_output_loss_weights_aux_heads_and_logs_the_main_parts():
    g = torch.Generator().manual_seed(0)
    main, aux = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
    target = torch.randint(0, 2, (2, 4, 4), generator=g)
    loss_fn = build_loss({"dice": 1.0, "bce": 1.0})
    loss, got_main = output_loss(loss_fn, {"out": main, "aux": aux}, target, aux_weight=0.25)
    parts = {k: float(v) for k, v in loss_fn.parts.items()}
    assert got_main is main
    assert float(loss) == pytest.approx(
        float(loss_fn(main, target) + 0.25 * loss_fn(aux, target)), rel=1e-6
    )
    loss_fn(main, target)
    assert parts == pytest.approx(
        {k: float(v) for k, v in loss_fn.parts.items()}
    )  # the main output's


def _params_with_grads(grads):
    params = [nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    return params


def test_optimizer_step_clips_to_the_hand_computed_norm():
    grads = [torch.tensor([3.0, 0.0]), torch.tensor([[0.0, 4.0]])]  # total norm 5
    params = _params_with_grads(grads)
    opt = torch.optim.SGD(params, lr=1.0)
    result = MixedPrecision("fp32").optimizer_step(opt, clip_grad_norm=1.0, check_finite=True)
    assert result.stepped and result.finite and float(result.grad_norm) == pytest.approx(5.0)
    # SGD lr=1 from zero: the weights are minus the clipped gradients, i.e. g / 5
    assert params[0].tolist() == pytest.approx([-0.6, 0.0]) and params[1].tolist() == [
        [0.0, pytest.approx(-0.8)]
    ]


def test_optimizer_step_refuses_a_nonfinite_gradient_in_fp32():
    params = _params_with_grads([torch.tensor([1.0, math.nan])])
    opt = torch.optim.SGD(params, lr=1.0)
    result = MixedPrecision("fp32").optimizer_step(opt, check_finite=True)
    assert not result.stepped and not result.finite and params[0].tolist() == [0.0, 0.0]


def test_optimizer_step_reports_an_fp16_scaler_skip():
    p = nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=1.0)
    mp = MixedPrecision("fp16")
    mp.backward((p * torch.tensor([1.0, math.inf])).sum())  # an inf gradient
    result = mp.optimizer_step(opt, check_finite=True)
    assert result.skipped_by_scaler and not result.stepped and mp.skipped_steps == 1
    assert p.tolist() == [0.0, 0.0] and mp.scaler.get_scale() == 2.0**15  # torch's backoff 0.5
