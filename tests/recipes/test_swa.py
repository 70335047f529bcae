"""SWA: the averaged weights are the plain mean of the end-of-epoch weights from start_epoch on,
the LR becomes swa_lr, update_bn recomputes BatchNorm statistics, and resume is exact."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from strop.train.swa import SWA


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def _data():
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(16, 4, generator=g), torch.randint(0, 2, (16,), generator=g)) for _ in range(3)
    ]


def _run(model, opt, swa, epochs, start=0, snapshots=None, lrs=None):
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for epoch in range(start, epochs):
        swa.on_epoch_start(epoch)
        if lrs is not None:
            lrs.append(opt.param_groups[0]["lr"])
        for x, y in _data():
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if not swa.active(epoch):
                sched.step()
        swa.on_epoch_end(epoch, model)
        if snapshots is not None and swa.active(epoch):
            snapshots.append([p.detach().clone() for p in model.parameters()])


def test_average_is_the_mean_of_end_of_epoch_weights_and_lr_is_swa_lr():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.8)
    swa = SWA(model, opt, start_epoch=2, lr=0.05)
    snaps, lrs = [], []
    _run(model, opt, swa, 5, snapshots=snaps, lrs=lrs)
    assert swa.n_averaged == 3 and len(snaps) == 3
    for i, p in enumerate(swa.module.parameters()):
        torch.testing.assert_close(p, torch.stack([s[i] for s in snaps]).mean(0))
    # epochs 0, 1 follow StepLR per step (0.8 · 0.5^3 per epoch); epochs 2.. run at swa_lr
    assert lrs[:2] == pytest.approx([0.8, 0.1])
    assert lrs[2:] == pytest.approx([0.05] * 3)


def test_finalize_recomputes_batchnorm_statistics_over_the_loader():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    swa = SWA(model, opt, start_epoch=0, lr=0.05)
    _run(model, opt, swa, 2)
    swa.finalize(_data())
    # BatchNorm1d in train mode with momentum=None holds the cumulative mean of batch means
    with torch.no_grad():
        feats = [swa.module[0](x) for x, _ in _data()]
    expected = torch.stack([f.mean(0) for f in feats]).mean(0)
    torch.testing.assert_close(swa.module[1].running_mean, expected)


def test_state_dict_resume_is_exact():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    swa = SWA(model, opt, start_epoch=1, lr=0.05, anneal_epochs=2)
    _run(model, opt, swa, 2)
    saved = copy.deepcopy(
        {"model": model.state_dict(), "opt": opt.state_dict(), "swa": swa.state_dict()}
    )
    _run(model, opt, swa, 4, start=2)

    model2 = _model()
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.2)
    swa2 = SWA(model2, opt2, start_epoch=1, lr=0.05, anneal_epochs=2)
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    swa2.load_state_dict(saved["swa"])
    _run(model2, opt2, swa2, 4, start=2)
    assert swa2.n_averaged == swa.n_averaged == 3
    for a, b in zip(
        swa.module.state_dict().values(), swa2.module.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_finalize_without_any_average_says_why():
    model = _model()
    swa = SWA(model, torch.optim.SGD(model.parameters(), lr=0.1), start_epoch=5, lr=0.01)
    with pytest.raises(ValueError, match=r"SWA.finalize: nothing was averaged \(start_epoch=5\)"):
        swa.finalize(_data())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"start_epoch": -1, "lr": 0.1}, "start_epoch must be >= 0"),
        ({"start_epoch": 0, "lr": 0.0}, "lr must be > 0"),
        ({"start_epoch": 0, "lr": [0.1, 0.2]}, "lr must be one number or one per param group"),
        (
            {"start_epoch": 0, "lr": 0.1, "anneal_strategy": "step"},
            "anneal_strategy must be one of",
        ),
    ],
)
def test_bad_options(kwargs, match):
    model = _model()
    with pytest.raises(ValueError, match="SWA: " + match):
        SWA(model, torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)
