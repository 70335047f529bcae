"""strop.losses.nms / batched_nms: torchvision's indices for IoU, the tutorial's isMin by hand."""

from __future__ import annotations

import pytest
import torch
import torchvision

from strop.losses import batched_nms, box_iou, nms
from strop.losses.nms import greedy_nms


def _random(n: int, seed: int, ties: bool) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 40], 1)
    # integer scores: many exact ties, the order torchvision's kernel breaks them in matters
    scores = torch.randint(0, 4, (n,), generator=g).float() if ties else torch.rand(n, generator=g)
    return boxes, scores


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize(
    ("n", "thr"),
    [(0, 0.5), (1, 0.5), (7, 0.3), (300, 0.0), (300, 0.3), (300, 0.7), (300, 1.0), (2500, 0.5)],
)  # 2500 spans three row blocks
def test_union_equals_torchvision_nms(n, thr, ties):
    boxes, scores = _random(n, seed=n + int(thr * 10), ties=ties)
    expected = torchvision.ops.nms(boxes, scores, thr)
    assert torch.equal(greedy_nms(boxes, scores, thr), expected)  # the Python path itself
    assert torch.equal(nms(boxes, scores, thr), expected)


@pytest.mark.parametrize("ties", [False, True])
def test_batched_union_and_min_follow_categories(ties):
    boxes, scores = _random(600, seed=3, ties=ties)
    idxs = torch.randint(0, 5, (600,), generator=torch.Generator().manual_seed(4))
    assert torch.equal(
        batched_nms(boxes, scores, idxs, 0.5), torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)
    )
    # "min" per class = the union of per-class "min" NMS results, in decreasing score order
    kept = batched_nms(boxes, scores, idxs, 0.5, denominator="min")
    per_class = torch.cat(
        [
            torch.nonzero(idxs == c)[:, 0][
                nms(boxes[idxs == c], scores[idxs == c], 0.5, denominator="min")
            ]
            for c in range(5)
        ]
    )
    assert sorted(kept.tolist()) == sorted(per_class.tolist())
    assert torch.all(scores[kept][:-1] >= scores[kept][1:])


def _reference_min(boxes, scores, thr):
    """Textbook greedy loop over the tutorial's isMin overlap (strop's box_iou, denominator='min')."""
    ov = box_iou(boxes, boxes, denominator="min")
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))  # Python's sort is stable
    keep = []
    for i in order:
        if all(ov[k, i] <= thr for k in keep):
            keep.append(i)
    return keep


def test_min_drops_a_nested_box_that_iou_keeps():
    # a small box inside a big one: IoU = 4/100 keeps both; intersection/min area = 1 drops it
    boxes = torch.tensor([[0.0, 0, 10, 10], [2, 2, 4, 4], [20, 20, 30, 30]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [0, 1, 2]
    assert nms(boxes, scores, 0.5, denominator="min").tolist() == [0, 2]


@pytest.mark.parametrize("seed", range(4))
def test_min_equals_the_textbook_loop(seed):
    boxes, scores = _random(120, seed=seed, ties=seed % 2 == 1)
    assert nms(boxes, scores, 0.6, denominator="min").tolist() == _reference_min(boxes, scores, 0.6)


def test_point_boxes_never_suppress():
    boxes = torch.tensor([[1.0, 1, 1, 1], [1.0, 1, 1, 1]])
    assert nms(boxes, torch.tensor([1.0, 0.5]), 0.5, denominator="min").tolist() == [0, 1]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: nms(torch.zeros(3, 5), torch.zeros(3), 0.5),
            r"nms: boxes must have shape \(N, 4\)",
        ),
        (
            lambda: nms(torch.zeros(3, 4), torch.zeros(2), 0.5),
            r"nms: scores must have shape \(3,\)",
        ),
        (
            lambda: nms(torch.zeros(3, 4), torch.zeros(3), 0.5, denominator="max"),
            r"nms: denominator must be one of 'union', 'min'",
        ),
        (
            lambda: batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3), 0.5),
            r"batched_nms: idxs must be an integer",
        ),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
