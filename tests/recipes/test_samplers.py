"""Balanced sampling draws classes evenly (binomial tolerance), its order is a function of
seed + epoch, ranks split one global draw; class weights follow scikit-learn's 'balanced'."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight

from strop.data.samplers import BalancedSampler, class_counts, class_weights, pixel_counts

# 90 / 9 / 1: an unbalanced set of 100 labels
LABELS = [0] * 90 + [1] * 9 + [2]


def test_classes_are_drawn_evenly_within_binomial_tolerance():
    s = BalancedSampler(LABELS, num_samples=3000, seed=0)
    drawn = torch.bincount(torch.tensor(LABELS)[list(s)], minlength=3)
    sd = math.sqrt(3000 * (1 / 3) * (2 / 3))  # 25.8
    assert drawn.sum() == 3000
    assert ((drawn - 1000).abs() < 4 * sd).all(), drawn


def test_without_balancing_the_rare_class_would_be_rare():
    # control: uniform sampling of the same labels gives ~1% class 2 — the test above is not vacuous
    g = torch.Generator().manual_seed(0)
    uniform = torch.tensor(LABELS)[torch.randint(0, 100, (3000,), generator=g)]
    assert torch.bincount(uniform, minlength=3)[2] < 100


def test_order_is_a_function_of_seed_and_epoch():
    a, b = BalancedSampler(LABELS, seed=3), BalancedSampler(LABELS, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b) and list(a) == list(a)
    b.set_epoch(3)
    assert list(a) != list(b)
    assert list(BalancedSampler(LABELS, seed=4)) != list(BalancedSampler(LABELS, seed=3))
    # seed + epoch, like DistributedSampler: and WeightedRandomSampler's draw with that generator
    g = torch.Generator().manual_seed(3 + 2)
    assert list(a) == torch.multinomial(a.weights, 100, replacement=True, generator=g).tolist()


def test_ranks_split_one_global_draw_like_distributed_sampler():
    ranks = [
        BalancedSampler(LABELS, num_samples=101, seed=1, num_replicas=4, rank=r) for r in range(4)
    ]
    for s in ranks:
        s.set_epoch(5)
    assert [len(s) for s in ranks] == [26] * 4  # 101 rounded up to 104
    full = ranks[0].global_order()
    interleaved = [i for step in zip(*[list(s) for s in ranks], strict=True) for i in step]
    assert interleaved == full


def test_state_dict_round_trip():
    a = BalancedSampler(LABELS, seed=7)
    a.set_epoch(4)
    b = BalancedSampler(LABELS)
    b.load_state_dict(a.state_dict())
    assert list(b) == list(a)


def test_class_weights_match_scikit_learn_balanced():
    y = torch.tensor(LABELS)
    expected = compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=y.numpy())
    torch.testing.assert_close(
        class_weights(class_counts(y)), torch.tensor(expected, dtype=torch.float32)
    )
    # the mean weight over samples is 1
    assert class_weights(class_counts(y))[y].mean().item() == pytest.approx(1.0)
    assert torch.equal(class_weights([5, 5, 5]), torch.ones(3))


def test_pixel_counts_leave_out_ignore_index():
    masks = [torch.tensor([[0, 0, 1], [255, 2, 2]]), torch.tensor([[1, 1, 255]])]
    assert pixel_counts(masks, 3).tolist() == [2, 3, 2]
    w = class_weights(pixel_counts(masks, 3))
    torch.testing.assert_close(w, torch.tensor([7 / 6, 7 / 9, 7 / 6]))


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (
            lambda: class_weights([3, 0, 2]),
            ValueError,
            r"class_weights: class\(es\) \[1\] have no samples",
        ),
        (
            lambda: class_counts([0.5, 1.0]),
            TypeError,
            "class_counts: labels must be a 1-D sequence of integer",
        ),
        (
            lambda: class_counts([0, 3], num_classes=3),
            ValueError,
            "class_counts: labels must be < num_classes=3",
        ),
        (
            lambda: pixel_counts([torch.tensor([4])], 3),
            ValueError,
            r"pixel_counts: mask values must be in \[0, 3\)",
        ),
        (
            lambda: BalancedSampler(LABELS, num_replicas=2, rank=2),
            ValueError,
            r"rank must be in \[0, num_replicas=2\)",
        ),
        (lambda: BalancedSampler([]), ValueError, "BalancedSampler: labels is empty"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
