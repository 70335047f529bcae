"""The LR range test: restores state exactly, finds the right range, and its rules."""

import math

import pytest
import torch
from torch import nn

from strop.schedules import LRFindResult, lr_find
from strop.schedules.range_test import suggest_steepest, suggest_valley


def _regression(n=256, d=8, seed=0):
    """Linear least squares whose curvature we know: loss = mean((Xw - y)^2) has Hessian
    H = 2 XᵀX / n; gradient descent is stable for lr < 2 / λmax(H)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.5, 2.0, d)  # spread the spectrum: λmax / λmin ≈ 16
    x = torch.randn(n, d, generator=g) * scales
    w_true = torch.randn(d, 1, generator=g)
    y = x @ w_true + 0.01 * torch.randn(n, 1, generator=g)
    lmax = float(torch.linalg.eigvalsh(2 * x.T @ x / n).max())
    return x, y, lmax


def test_suggestion_lands_below_the_stability_limit():
    x, y, lmax = _regression()
    model = nn.Linear(8, 1, bias=False)
    nn.init.zeros_(model.weight)
    loader = [(x, y)]  # full batch: the loss is the quadratic itself
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    result = lr_find(
        model, loader, nn.functional.mse_loss, opt, start_lr=1e-4, end_lr=10.0, num_iter=100
    )
    assert isinstance(result, LRFindResult) and result.diverged  # 10 >> 2/L = ~0.2: it must blow up
    limit = 2 / lmax
    # divergence is detected after the LR passes the stability limit, not before
    assert result.lrs[-1] > limit
    for rule in ("steepest", "valley"):
        lr = result.suggestions[rule]
        # a useful LR: stable, and not orders of magnitude too small
        assert limit / 100 < lr < limit, (rule, lr, limit)
    assert result.suggestion == result.suggestions["steepest"]


def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )


def _snapshot(model, opt):
    tensors = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
    tensors.update(
        {
            f"grad.{i}": p.grad.clone()
            for i, p in enumerate(model.parameters())
            if p.grad is not None
        }
    )
    for pid, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            tensors[f"opt.{pid}.{k}"] = v.clone() if torch.is_tensor(v) else torch.tensor(v)
    groups = [
        {k: v for k, v in g.items() if k != "params"} for g in opt.state_dict()["param_groups"]
    ]
    return tensors, groups


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_restores_model_optimizer_and_rng_exactly(optimizer):
    model = _bn_net()
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 3, (16,))
    if optimizer == "sgd":
        opt = torch.optim.SGD(
            [
                {"params": model[0].parameters(), "lr": 0.01},
                {"params": [*model[1].parameters(), *model[5].parameters()]},
            ],
            lr=0.1,
            momentum=0.9,
        )
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # some real training first, so there are momentum buffers, BN statistics and gradients
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()  # a mode to restore
    model[1].train()
    before, groups = _snapshot(model, opt)
    rng = torch.get_rng_state()

    loader = [(x[:8], y[:8]), (x[8:], y[8:])]
    result = lr_find(
        model, loader, nn.functional.cross_entropy, opt, num_iter=12, start_lr=1e-4, end_lr=1.0
    )
    assert len(result.lrs) == 12

    after, groups_after = _snapshot(model, opt)
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(after[k], before[k]), k  # bit-identical, BN buffers included
    assert groups_after == groups  # LRs and every hyper-parameter
    assert not model.training and model[1].training and not model[0].training
    assert torch.equal(torch.get_rng_state(), rng)
    assert "model.1.running_mean" in before and "model.1.num_batches_tracked" in before


def test_keeps_group_ratios_and_reports_group_zero():
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(
        [{"params": [model.weight], "lr": 0.1}, {"params": [model.bias], "lr": 0.01}]
    )
    seen = []

    def loss_fn(out, target):
        seen.append([g["lr"] for g in opt.param_groups])
        return nn.functional.mse_loss(out, target)

    result = lr_find(
        model,
        [(torch.randn(8, 4), torch.randn(8, 1))],
        loss_fn,
        opt,
        num_iter=5,
        start_lr=1e-3,
        end_lr=1e-1,
    )
    assert [s[0] for s in seen] == pytest.approx(result.lrs)
    assert result.lrs == pytest.approx([1e-3 * 100 ** (i / 4) for i in range(5)])
    for lr0, lr1 in seen:
        assert lr1 == pytest.approx(lr0 / 10)
    linear = lr_find(
        model,
        [(torch.randn(8, 4), torch.randn(8, 1))],
        loss_fn,
        opt,
        num_iter=5,
        start_lr=0.1,
        end_lr=0.5,
        mode="linear",
    )
    assert linear.lrs == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])


def test_gradient_accumulation_equals_the_full_batch():
    """Two half-batches accumulated give the same range test as the full batch (MSE is a mean)."""
    x, y, _ = _regression(n=64)
    runs = []
    for loader, acc in (([(x, y)], 1), ([(x[:32], y[:32]), (x[32:], y[32:])], 2)):
        model = nn.Linear(8, 1, bias=False)
        nn.init.zeros_(model.weight)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        runs.append(
            lr_find(
                model,
                loader,
                nn.functional.mse_loss,
                opt,
                num_iter=30,
                start_lr=1e-3,
                end_lr=1.0,
                accumulation_steps=acc,
            )
        )
    full, accumulated = runs
    assert accumulated.lrs == full.lrs
    assert accumulated.losses == pytest.approx(full.losses, rel=1e-5)


def test_bf16_autocast_runs_and_tracks_fp32():
    x, y, _ = _regression(n=128)
    results = {}
    for precision in ("fp32", "bf16"):
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        torch.manual_seed(1)
        for p in model.parameters():
            nn.init.normal_(p, std=0.3)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)

        def loss_fn(out, target, _p=precision):
            if _p == "bf16":
                assert out.dtype == torch.bfloat16  # autocast is on
            return nn.functional.mse_loss(out.float(), target)

        results[precision] = lr_find(
            model,
            [(x, y)],
            loss_fn,
            opt,
            num_iter=20,
            start_lr=1e-4,
            end_lr=1e-2,
            precision=precision,
        )
    assert results["bf16"].losses == pytest.approx(results["fp32"].losses, rel=0.05)


def test_fp16_with_scaler_counts_and_finishes():
    x, y, _ = _regression(n=64)
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    result = lr_find(
        model,
        [(x, y)],
        lambda o, t: nn.functional.mse_loss(o.float(), t),
        opt,
        num_iter=10,
        start_lr=1e-4,
        end_lr=1e-2,
        precision="fp16",
    )
    assert len(result.losses) == 10 and all(math.isfinite(v) for v in result.losses)


def test_stops_on_non_finite_loss():
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = []

    def loss_fn(out, target):
        calls.append(1)
        loss = nn.functional.mse_loss(out, target)
        return loss * float("nan") if len(calls) == 4 else loss

    result = lr_find(model, [(torch.randn(4, 2), torch.randn(4, 1))], loss_fn, opt, num_iter=50)
    assert result.diverged and len(calls) == 4 and len(result.losses) == 3


def test_smoothing_is_a_debiased_ema():
    model = nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    values = iter([4.0, 2.0, 3.0])

    def loss_fn(out, target):
        return (out * 0).sum() + next(values)

    r = lr_find(
        model,
        [(torch.ones(1, 1), torch.ones(1, 1))],
        loss_fn,
        opt,
        num_iter=3,
        smooth=0.5,
        start_lr=1e-6,
        end_lr=1e-5,
    )
    assert r.raw_losses == [4.0, 2.0, 3.0]
    # avg: 2.0, 2.0, 2.5; debiased by 1 - 0.5**k: 4.0, 2.667, 2.857
    assert r.losses == pytest.approx([4.0, 2.0 / 0.75, 2.5 / 0.875])


def test_suggestion_rules_on_a_known_curve():
    lrs = [10 ** (-5 + 5 * i / 99) for i in range(100)]
    # a sigmoid-shaped fall centred at lr = 1e-3, then a blow-up after 1e-1
    losses = [
        2.0
        - 1.5 / (1 + math.exp(-3 * (math.log10(lr) + 3)))
        + (50 * (lr - 0.1) if lr > 0.1 else 0.0)
        for lr in lrs
    ]
    steep = suggest_steepest(lrs, losses)
    assert steep == pytest.approx(1e-3, rel=0.15)
    valley = suggest_valley(lrs, losses)
    assert 1e-3 < valley < 1e-1  # fastai's valley sits in the lower part of the long descent
    assert suggest_steepest(lrs[:2], losses[:2]) is None


def test_errors():
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [(torch.randn(4, 2), torch.randn(4, 1))]
    with pytest.raises(ValueError, match="lr_find: end_lr must exceed start_lr=1"):
        lr_find(model, data, nn.functional.mse_loss, opt, start_lr=1.0, end_lr=0.5)
    with pytest.raises(ValueError, match="lr_find: mode must be one of 'exp', 'linear'; got 'log'"):
        lr_find(model, data, nn.functional.mse_loss, opt, mode="log")
    with pytest.raises(ValueError, match="lr_find: loader yielded no batches"):
        lr_find(model, [], nn.functional.mse_loss, opt)
    with pytest.raises(TypeError, match=r"lr_find: optimizer must be a torch\.optim\.Optimizer"):
        lr_find(model, data, nn.functional.mse_loss, None)
