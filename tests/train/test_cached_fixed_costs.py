"""The feature cache's end of fit: diagnostics from the cached features, best.pt made whole once.

Checked against computations that do not use strop's diagnostics: a plain torchvision resnet18
loaded from ``best.pt`` with ``torch.load`` and scikit-learn's metrics over the validation images.
"""

import csv

import pytest
import torch
import torch.nn.functional as F
import torchvision
from sklearn.metrics import precision_recall_fscore_support
from torch.utils.data import TensorDataset

from strop.train import diagnostics as dg
from strop.train import fit, load_checkpoint
from strop.train.checkpoint import inline_frozen, save_checkpoint
from strop.train.review import write_diagnostics
from strop.train.setup import load_datasets

FROZEN = {"model": {"name": "resnet18", "freeze": "backbone"}, "feature_cache": "auto"}


@pytest.mark.slow
def test_cached_diagnostics_match_the_whole_model_on_the_images(tiny_config, digits_root, tmp_path):
    # "best" = the highest validation loss: an early epoch, so best.pt is not the last weights
    over = {"monitor": "val_loss", "monitor_mode": "max", **FROZEN}
    cfg = tiny_config(digits_root, tmp_path / "run", epochs=3, **over)
    res = fit(cfg)
    assert res.choices["feature_cache"] is True and res.best_epoch < 3
    # independent: torchvision's resnet18 with best.pt's weights, run on the validation images
    best = torch.load(res.run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert "model_shared" not in best  # self-contained once the fit ended
    model = torchvision.models.resnet18(num_classes=3)
    model.load_state_dict(best["model"])
    _, val, classes, _ = load_datasets(cfg)
    x = torch.stack([val[i][0] for i in range(len(val))])
    y = torch.tensor([int(val[i][1]) for i in range(len(val))])
    with torch.no_grad():
        pred = model.eval()(x).argmax(1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y.numpy(), pred.numpy(), labels=[0, 1, 2], zero_division=0
    )
    with open(res.run_dir / "diagnostics" / "per_class.csv") as fh:
        rows = {r["class"]: r for r in csv.DictReader(fh)}
    for c, name in enumerate(classes):
        got = rows[name]
        assert int(got["support"]) == support[c]
        for key, want in (("precision", precision), ("recall", recall), ("f1", f1)):
            assert float(got[key]) == pytest.approx(float(want[c]), abs=1e-4), (name, key)


def test_diagnostics_show_the_images_of_the_largest_losses(tmp_path, monkeypatch):
    """The head on cached features (``dataset``) and the images shown (``shown``) are paired by
    index: the grid gets the images whose logits have the largest cross-entropy."""
    from strop.train.tasks import build_task

    torch.manual_seed(0)
    images = torch.randn(20, 3, 8, 8)
    labels = torch.randint(0, 4, (20,))
    features = images.flatten(1)[:, :16]  # stands in for the backbone's output
    head = torch.nn.Linear(16, 4)
    seen = {}
    monkeypatch.setattr(
        dg, "plot_top_losses", lambda imgs, logits, targets, *a, **k: seen.update(imgs=imgs)
    )
    write_diagnostics(
        head,
        TensorDataset(features, labels),
        build_task("classification", 4),
        None,
        tmp_path,
        device=torch.device("cpu"),
        k=5,
        shown=TensorDataset(images, labels),
    )
    with torch.no_grad():
        losses = F.cross_entropy(head(features), labels, reduction="none")
    want = losses.argsort(descending=True)[:5]
    assert torch.equal(seen["imgs"], images[want])


def test_inline_frozen_makes_a_referencing_checkpoint_whole(tmp_path):
    state = {"body.weight": torch.randn(64, 64), "head.weight": torch.randn(2, 64)}
    path = tmp_path / "best.pt"
    save_checkpoint({"model": dict(state), "epoch": 3}, path, shared_model_keys={"body.weight"})
    assert "model_shared" in torch.load(path, weights_only=True)
    assert inline_frozen(path) is True
    whole = torch.load(path, weights_only=True)  # no strop needed: every tensor is in the file
    assert "model_shared" not in whole and whole["epoch"] == 3
    assert list(whole["model"]) == list(state)
    for k, t in state.items():
        assert torch.equal(whole["model"][k], t), k
    assert inline_frozen(path) is False  # nothing left to do
    assert inline_frozen(tmp_path / "missing.pt") is False


@pytest.mark.slow
def test_a_crashed_cached_run_leaves_a_best_pt_strop_reads_whole(
    tiny_config, digits_root, tmp_path
):
    """Until the fit ends, best.pt references the frozen backbone; load_checkpoint merges it."""

    class Crash:
        def on_epoch_start(self, state):
            if state.epoch == 1:
                raise RuntimeError("crash in epoch 2")

    with pytest.raises(RuntimeError, match="crash in epoch 2"):
        fit(tiny_config(digits_root, tmp_path / "run", epochs=2, **FROZEN), callbacks=[Crash()])
    ck = tmp_path / "run" / "checkpoints"
    assert "model_shared" in torch.load(ck / "best.pt", weights_only=True)
    best, last = load_checkpoint(ck / "best.pt")["model"], load_checkpoint(ck / "last.pt")["model"]
    assert best.keys() == last.keys() and len(best) > 100
    for k in best:  # after one epoch best and last hold the same weights
        assert torch.equal(best[k], last[k]), k


def test_inline_frozen_takes_unchanged_live_tensors_from_memory(tmp_path):
    from strop.train.checkpoint import CheckpointError

    body = torch.nn.Linear(32, 32)
    state = {"body.weight": body.weight, "body.bias": body.bias, "head.weight": torch.randn(2, 32)}
    want = {k: t.detach().clone() for k, t in state.items()}
    path = tmp_path / "best.pt"
    frozen_keys = {"body.weight", "body.bias"}
    save_checkpoint({"model": dict(state)}, path, shared_model_keys=frozen_keys)
    (frozen_file,) = tmp_path.glob("frozen-*.pt")
    frozen_file.unlink()  # only memory can supply the tensors now
    assert inline_frozen(path, state) is True
    whole = torch.load(path, weights_only=True)["model"]
    assert list(whole) == list(state)
    for k in want:
        assert torch.equal(whole[k], want[k]), k
    # a tensor changed in place since it was stored: memory is not trusted, the file is needed
    save_checkpoint({"model": dict(state)}, path, shared_model_keys=frozen_keys)
    with torch.no_grad():
        body.weight.add_(1.0)
    (frozen_file,) = tmp_path.glob("frozen-*.pt")
    frozen_file.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        inline_frozen(path, state)


def test_forget_shared_stops_a_stale_memory_standing_for_new_tensors(tmp_path):
    """Same storage, same version counter, other values (what a freed model's memory reused by
    the next one looks like; ``.data`` writes do not bump the counter): once the folder's memory
    is dropped, as every run does at its start, the new values are stored."""
    from strop.train.checkpoint import forget_shared

    w = torch.zeros(8, 8)
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": w, "h": torch.ones(2)}}, path, shared_model_keys={"w"})
    w.data.fill_(7.0)  # invisible to the version counter
    forget_shared(tmp_path)
    save_checkpoint({"model": {"w": w, "h": torch.ones(2)}}, path, shared_model_keys={"w"})
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((8, 8), 7.0))


def test_a_referencing_checkpoint_is_refused_as_model_weights(tmp_path):
    from strop.finetune.weights import read_state_dict

    path = tmp_path / "best.pt"
    state = {"body.weight": torch.randn(4, 4), "head.weight": torch.randn(2, 4)}
    save_checkpoint({"model": state}, path, shared_model_keys={"body.weight"})
    (frozen,) = tmp_path.glob("frozen-*.pt")
    with pytest.raises(ValueError, match=frozen.name):
        read_state_dict(path)
    inline_frozen(path)
    assert read_state_dict(path).keys() == state.keys()  # whole again: loads as any state dict


@pytest.mark.slow
def test_an_interrupted_cached_run_is_made_whole_by_its_resumed_end(
    tiny_config, digits_root, tmp_path
):
    class SigintAfterEpoch1:
        def on_batch_end(self, state, logs):
            if state.epoch == 1 and state.batch_in_epoch == 1:
                state.should_stop, state.interrupted = True, "SIGINT"

    cfg = tiny_config(digits_root, tmp_path / "run", epochs=2, **FROZEN)
    assert fit(cfg, callbacks=[SigintAfterEpoch1()]).interrupted == "SIGINT"
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    assert "model_shared" in torch.load(best, weights_only=True)  # left for the resumed run
    fit(cfg, resume=True)
    assert "model_shared" not in torch.load(best, weights_only=True)


@pytest.mark.slow
def test_a_failed_inline_is_logged_and_the_run_ends_normally(
    tiny_config, digits_root, tmp_path, monkeypatch
):
    from strop.train import trainer
    from strop.train.checkpoint import CheckpointError

    def refuse(path, state=None):
        raise CheckpointError(f"could not write checkpoint {path}: the disk is full")

    monkeypatch.setattr(trainer, "inline_frozen", refuse)
    lines = []
    res = fit(tiny_config(digits_root, tmp_path / "run", epochs=1, **FROZEN), log=lines.append)
    assert any(m.startswith("best.pt: left referencing") and "disk is full" in m for m in lines)
    assert (res.run_dir / "diagnostics" / "per_class.csv").is_file()  # the end still ran
    assert load_checkpoint(res.run_dir / "checkpoints" / "best.pt")["model"].keys()
