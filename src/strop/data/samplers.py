"""Class imbalance: a balanced sampler and inverse-frequency class weights.

``BalancedSampler`` draws indices with ``WeightedRandomSampler`` semantics (with replacement,
each sample weighted ``1 / count(its class)``, so every class is drawn equally often in
expectation). Its order is a function of ``seed + epoch`` only — call ``set_epoch(epoch)``
before each epoch, as with ``DistributedSampler`` — so a resumed run draws the same batches. With
``num_replicas > 1`` the epoch's one global draw is split across ranks like ``DistributedSampler``
does (rank ``r`` takes positions ``r, r + R, r + 2R, ...``).

``class_weights`` turns class counts (labels for classification, pixel counts for segmentation,
:func:`class_counts` / :func:`pixel_counts`) into the ``weight`` of a cross-entropy loss.
Convention: scikit-learn's ``"balanced"``, ``w_c = N / (C · n_c)`` — inverse frequency,
normalised so that the mean weight over the *samples* (pixels) is 1 and a balanced set gets all
ones. (torch's ``reduction="mean"`` divides by the summed weights, so the scale matters only for
sums and for weighted mixes with other losses.)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Sampler, WeightedRandomSampler

from strop._checks import check_positive, fail

__all__ = ["BalancedSampler", "class_counts", "class_weights", "pixel_counts"]


def _labels_tensor(func: str, labels: Sequence[int] | Tensor) -> Tensor:
    t = torch.as_tensor(labels)
    if t.numel() == 0:
        fail(func, "labels is empty")
    if t.dim() != 1 or t.is_floating_point() or t.dtype == torch.bool:
        fail(
            func,
            f"labels must be a 1-D sequence of integer class ids; got {t.dtype} of shape "
            f"{tuple(t.shape)}",
            exc=TypeError,
        )
    if int(t.min()) < 0:
        fail(func, f"labels must be >= 0; got {int(t.min())}")
    return t.long()


def class_counts(labels: Sequence[int] | Tensor, num_classes: int | None = None) -> Tensor:
    """Number of samples per class, ``(C,)`` int64 (``C = num_classes`` or ``max(labels) + 1``)."""
    t = _labels_tensor("class_counts", labels)
    c = num_classes if num_classes is not None else int(t.max()) + 1
    if int(t.max()) >= c:
        fail("class_counts", f"labels must be < num_classes={c}; got {int(t.max())}")
    return torch.bincount(t, minlength=c)


def pixel_counts(
    masks: Iterable[Tensor], num_classes: int, *, ignore_index: int | None = 255
) -> Tensor:
    """Number of mask pixels per class over ``masks``, ``(C,)`` int64; ``ignore_index`` is left out."""
    check_positive("pixel_counts", "num_classes", num_classes, integer=True)
    total = torch.zeros(num_classes, dtype=torch.long)
    for mask in masks:
        m = torch.as_tensor(mask).long().flatten()
        if ignore_index is not None:
            m = m[m != ignore_index]
        if m.numel() and (int(m.min()) < 0 or int(m.max()) >= num_classes):
            fail(
                "pixel_counts",
                f"mask values must be in [0, {num_classes}) or ignore_index="
                f"{ignore_index}; got values in [{int(m.min())}, {int(m.max())}]",
            )
        total += torch.bincount(m, minlength=num_classes)
    return total


def class_weights(counts: Sequence[int] | Tensor) -> Tensor:
    """Inverse-frequency weights ``w_c = N / (C · n_c)`` (float32 ``(C,)``; module docstring).

    A class with no sample has no frequency to invert: that raises ``ValueError`` naming it.
    """
    n = torch.as_tensor(counts, dtype=torch.float64)
    if n.dim() != 1 or n.numel() == 0:
        fail(
            "class_weights", f"counts must be a non-empty 1-D sequence; got shape {tuple(n.shape)}"
        )
    if (n < 0).any():
        fail("class_weights", f"counts must be >= 0; got {n.tolist()}")
    empty = (n == 0).nonzero().flatten().tolist()
    if empty:
        fail(
            "class_weights",
            f"class(es) {empty} have no samples, so inverse frequency is undefined",
            hint="give explicit weights, or check that the training split holds every class",
        )
    return (n.sum() / (n.numel() * n)).float()


class BalancedSampler(Sampler[int]):
    """Draw ``num_samples`` indices per epoch with replacement, every class equally likely.

    Args:
        labels: the class id of each dataset item (``dataset.targets``).
        num_samples: draws per epoch over all ranks (default ``len(labels)``: an epoch has as
            many steps as before); rounded up to a multiple of ``num_replicas``.
        seed: the base seed; epoch ``e`` draws with ``torch.Generator().manual_seed(seed + e)``.
        num_replicas, rank: the distributed split (defaults: one process).
    """

    def __init__(
        self,
        labels: Sequence[int] | Tensor,
        *,
        num_samples: int | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        func = "BalancedSampler"
        t = _labels_tensor(func, labels)
        if num_samples is not None:
            check_positive(func, "num_samples", num_samples, integer=True)
        check_positive(func, "num_replicas", num_replicas, integer=True)
        check_positive(func, "rank", rank, allow_zero=True, integer=True)
        if rank >= num_replicas:
            fail(func, f"rank must be in [0, num_replicas={num_replicas}); got {rank}")
        counts = torch.bincount(t)
        self.weights = (1.0 / counts.double())[t]  # absent classes never index this
        self.num_classes = int((counts > 0).sum())
        wanted = num_samples if num_samples is not None else t.numel()
        self.total = -(-wanted // num_replicas) * num_replicas
        self.seed, self.num_replicas, self.rank = int(seed), num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order ``__iter__`` yields (call before each epoch)."""
        check_positive("BalancedSampler.set_epoch", "epoch", epoch, allow_zero=True, integer=True)
        self.epoch = epoch

    def global_order(self) -> list[int]:
        """This epoch's draw over all ranks (``WeightedRandomSampler`` with a seeded generator)."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return list(WeightedRandomSampler(self.weights, self.total, replacement=True, generator=g))

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_order()[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return self.total // self.num_replicas

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])
