"""Mixup/CutMix: soft rows sum to 1, the image is the formula's blend for the λ the targets
carry, prob=0 leaves the batch alone, and the private stream resumes exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from strop.data.mixing import BatchMix, soft_target_accuracy

C = 5


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 16, 16, generator=g)
    y = torch.arange(n) % C  # neighbours always differ, so λ is readable from the targets
    return x, y


def test_mixup_soft_targets_sum_to_one_and_match_the_formula():
    x, y = _batch()
    xm, soft = BatchMix(C, mixup_alpha=0.8, prob=1.0, seed=1)(x, y)
    assert soft.shape == (8, C) and soft.dtype == x.dtype
    torch.testing.assert_close(soft.sum(1), torch.ones(8))
    lam = soft[0, y[0]].item()  # y[0]'s share; y.roll(1)[0] = y[-1] != y[0]
    assert 0 < lam < 1
    onehot = F.one_hot(y, C).float()
    torch.testing.assert_close(soft, lam * onehot + (1 - lam) * onehot.roll(1, 0))
    torch.testing.assert_close(xm, lam * x + (1 - lam) * x.roll(1, 0))


def test_cutmix_pastes_a_box_and_lambda_is_the_kept_area():
    x, y = _batch()
    xm, soft = BatchMix(C, mixup_alpha=0.0, cutmix_alpha=1.0, seed=2)(x, y)
    torch.testing.assert_close(soft.sum(1), torch.ones(8))
    lam = soft[0, y[0]].item()
    pasted = (xm == x.roll(1, 0)) & (xm != x)  # pixels taken from the rolled batch
    kept = (xm == x).all(1)[0].float().mean().item()
    assert pasted.any() and kept == pytest.approx(lam, abs=1e-6)


def test_prob_zero_gives_one_hot_and_the_same_images():
    x, y = _batch()
    xm, soft = BatchMix(C, mixup_alpha=0.8, prob=0.0)(x, y)
    assert torch.equal(xm, x) and torch.equal(soft, F.one_hot(y, C).float())


def test_prob_is_the_fraction_of_mixed_batches():
    x, y = _batch()
    mix = BatchMix(C, mixup_alpha=1.0, prob=0.3, seed=0)
    mixed = sum(not torch.equal(mix(x, y)[0], x) for _ in range(400))
    # binomial(400, 0.3): sd 9.2, so ±4 sd
    assert abs(mixed - 120) < 37


def test_both_alphas_switch_between_mixup_and_cutmix():
    x, y = _batch()
    mix = BatchMix(C, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.5, seed=0)
    kinds = set()
    for _ in range(40):
        xm, _ = mix(x, y)
        # CutMix keeps some pixels untouched; MixUp blends every pixel
        kinds.add("cutmix" if (xm == x).any() else "mixup")
    assert kinds == {"mixup", "cutmix"}


def test_private_stream_resumes_exactly_and_ignores_the_global_generator():
    x, y = _batch()
    a = BatchMix(C, mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.7, seed=5)
    a(x, y)
    state = a.state_dict()
    expected = [a(x, y)[1] for _ in range(5)]
    b = BatchMix(C, mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.7, seed=99)
    b.load_state_dict(state)
    torch.manual_seed(123)  # a different global stream must not matter
    got = [b(x, y)[1] for _ in range(5)]
    for e, g in zip(expected, got, strict=True):
        assert torch.equal(e, g)


def test_mixing_does_not_advance_the_global_generator():
    x, y = _batch()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    BatchMix(C, cutmix_alpha=1.0)(x, y)
    assert torch.equal(torch.get_rng_state(), before)


def test_soft_target_accuracy_uses_the_argmax_of_the_soft_target():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    soft = torch.tensor([[0.6, 0.4, 0.0], [0.7, 0.3, 0.0], [0.0, 0.45, 0.55]])
    assert soft_target_accuracy(logits, soft).item() == pytest.approx(2 / 3)
    assert soft_target_accuracy(logits, torch.tensor([0, 1, 0])).item() == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("kwargs", "call", "exc", "match"),
    [
        ({"mixup_alpha": 0.0}, None, ValueError, "both 0"),
        ({"prob": 1.5}, None, ValueError, "prob must be a probability"),
        ({"mixup_alpha": -1.0}, None, ValueError, "mixup_alpha must be >= 0"),
        ({}, (torch.rand(4, 3, 8, 8), torch.rand(4)), TypeError, r"y must be an integer tensor"),
        (
            {},
            (torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 7])),
            ValueError,
            r"y must hold class ids in \[0, 5\)",
        ),
        ({}, (torch.rand(3, 8, 8), torch.tensor([0])), TypeError, r"x must be a float tensor"),
    ],
)
def test_bad_input(kwargs, call, exc, match):
    with pytest.raises(exc, match="BatchMix: " + match if not match.startswith("both") else match):
        BatchMix(C, **kwargs)(*call) if call else BatchMix(C, **kwargs)
