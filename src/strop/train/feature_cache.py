"""Feature caching for frozen backbones: run the backbone once, train the head on its outputs.

In the feature-extraction recipe of transfer learning the backbone never changes, yet a plain loop runs it
again every epoch. When the backbone is frozen (BatchNorm kept in eval mode) and the training
images are not randomly augmented, the input of the head is a fixed function of each image, so
strop computes it once — a forward pre-hook on the head captures it — and then trains the head
alone on those tensors. Epochs 2..N cost almost nothing.

It is exact: the cached run visits the same batches in the same order (same sampler over the same
indices) and the head sees the same inputs, so its weights match the uncached run's. One caveat,
documented: a dropout layer *between* the frozen backbone and the head (mobilenet, efficientnet,
vgg...) is active in an uncached run and off in the cached features (they are computed in eval
mode, as a feature extractor is meant to be used); set ``feature_cache: off`` to keep it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["TensorBatches", "cache_decision", "extract_features"]


class TensorBatches:
    """Batches of a :class:`TensorDataset` by slicing, in the order of ``sampler``.

    A ``DataLoader`` would index the cached features one item at a time and collate them; for a
    head that trains in microseconds that bookkeeping is the whole cost of an epoch. The batches
    are exactly the ones a ``DataLoader(dataset, batch_size, sampler=sampler, drop_last=...)``
    yields (``drop_last``: leave out a short last batch).
    """

    def __init__(
        self,
        dataset: TensorDataset,
        *,
        batch_size: int,
        sampler: Any = None,
        drop_last: bool = False,
    ):
        self.tensors = dataset.tensors
        self.batch_size = batch_size
        self.sampler = sampler
        self.drop_last = drop_last

    def __iter__(self) -> Any:
        n = len(self.tensors[0])
        order = torch.as_tensor(list(self.sampler)) if self.sampler is not None else torch.arange(n)
        for i in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[i : i + self.batch_size]
            yield tuple(t[idx] for t in self.tensors)

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.tensors[0])
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def cache_decision(
    config: Any, model: nn.Module, train_ds: Any, *, distributed: bool
) -> tuple[bool, str]:
    """``(use_cache, reason)`` — the reason is logged either way."""
    from strop.finetune import is_backbone_frozen

    if config.feature_cache == "off":
        return False, "feature_cache is off"
    if config.task == "detection":
        return False, "detection trains the whole detector on lists of images"
    from strop.train.recipe_run import cache_blocker

    if (why := cache_blocker(config)) is not None:
        return False, why
    if config.task != "classification":
        return (
            False,
            "feature caching is for classification heads (segmentation heads take feature maps)",
        )
    if not is_backbone_frozen(model):
        return False, "the backbone is not frozen (it changes while training)"
    if config.model.train_bn:
        return False, "train_bn is on: BatchNorm statistics of the backbone change while training"
    if config.gradual_unfreeze is not None:
        return False, "gradual unfreezing will train the backbone"
    if not getattr(train_ds, "deterministic", False):
        return False, "training augmentation is random (features differ every epoch)"
    if distributed:
        return (
            False,
            "not used in distributed runs (each rank would cache its own shard); training uncached",
        )
    if config.compile is True:
        return False, "compile is on; the cached path trains an uncompiled head"
    return (
        True,
        "backbone frozen and inputs deterministic: backbone features computed once, head trained on them",
    )


@torch.no_grad()
def extract_features(
    model: nn.Module,
    head: nn.Module,
    dataset: Any,
    *,
    batch_size: int,
    to_device: Callable[[Any], Any],
    autocast: Callable[[], Any],
) -> TensorDataset:
    """``TensorDataset(features, labels)`` of the head's inputs for every item of ``dataset``.

    The items are read in index order (no shuffling), so index ``i`` of the result is item ``i``
    of ``dataset`` and any sampler over one is a sampler over the other. ``to_device(batch)``
    moves a batch as training does; ``autocast()`` is the run's autocast context.
    """
    captured: list[Tensor] = []

    def grab(module: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0].detach().float().cpu())

    handle = head.register_forward_pre_hook(grab)
    was_training = model.training
    model.eval()
    labels: list[Tensor] = []
    try:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
        for batch in loader:
            x, y = to_device(batch)
            with autocast():
                model(x)
            labels.append(y.cpu())
    finally:
        handle.remove()
        model.train(was_training)
    if len(captured) != len(labels):
        raise RuntimeError(
            f"feature cache: the head was called {len(captured)} times for {len(labels)} batches; "
            "this architecture does not feed its head once per forward"
        )
    return TensorDataset(torch.cat(captured), torch.cat(labels))
