"""Overlap losses for segmentation: Dice, Jaccard (soft IoU), Tversky / focal-Tversky, Dice+BCE.

All four share :func:`strop.losses._prepare.prepare` (modes, one-hot, ``ignore_index``) and
:meth:`Prepared.overlap` (soft TP, sum of probabilities, sum of targets per class); they differ
only in the formula line.

Shapes: input ``(N, C, *)`` logits (``(N, *)`` or ``(N, 1, *)`` for ``mode="binary"``); target
``(N, *)`` int64 class ids for ``"multiclass"``, same shape as input (or without the channel dim
for binary) with values in ``[0, 1]`` otherwise.

Aggregation: with ``per_image=False`` (default) TP and the sums run over the batch and all pixels
together, giving one score per class, shape ``(C,)``; with ``per_image=True`` one per image and
class, ``(N, C)``. ``reduction`` then averages (``"mean"``), adds (``"sum"``) or returns
(``"none"``) those scores' losses.

Empty masks: a class absent from both target and prediction scores a perfect 0 loss (also with
``smooth=0``, where 0/0 is defined as a perfect score); a class absent from the target but
predicted gets ``1 - smooth / (sum_p + smooth)``, which tends to 1 as more of it is predicted.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from strop._checks import check_positive, fail
from strop.losses._prepare import Prepared, check_reduction, prepare, reduce

__all__ = ["dice_bce_loss", "dice_loss", "jaccard_loss", "tversky_loss"]


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    # den == 0 only when a class is absent from prediction and target (and smooth == 0): call that
    # a perfect score. Adding the indicator to both sides keeps the gradient finite (no 0/0).
    empty = (den <= 0).to(den.dtype)
    return (num + empty) / (den + empty)


def _check_overlap_options(func: str, smooth: float, per_image: bool, reduction: str) -> None:
    check_positive(func, "smooth", smooth, allow_zero=True)
    if not isinstance(per_image, bool):
        fail(
            func,
            f"per_image must be a bool; got {type(per_image).__name__} {per_image!r}",
            exc=TypeError,
        )
    check_reduction(func, reduction)


def _overlap(
    func: str,
    input: Tensor,
    target: Tensor,
    mode: str,
    from_logits: bool,
    smooth: float,
    per_image: bool,
    ignore_index: int | None,
    reduction: str,
) -> tuple[Tensor, Tensor, Tensor]:
    _check_overlap_options(func, smooth, per_image, reduction)
    prepared = prepare(
        func, input, target, mode=mode, from_logits=from_logits, ignore_index=ignore_index
    )
    return prepared.overlap(per_image)


def dice_loss(
    input: Tensor,
    target: Tensor,
    *,
    mode: str = "binary",
    from_logits: bool = True,
    smooth: float = 1.0,
    per_image: bool = False,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Soft Dice loss ``1 - (2·TP + smooth) / (Σp + Σt + smooth)`` per class.

    Args:
        input (Tensor[N, C, *]): logits (probabilities with ``from_logits=False``).
        target (Tensor): see the module docstring for the shape per ``mode``.
        mode: ``"binary"`` (sigmoid), ``"multiclass"`` (softmax, integer targets) or
            ``"multilabel"`` (sigmoid per channel).
        smooth: added to numerator and denominator (default 1.0).
        per_image: one score per image and class instead of per class over the batch.
        ignore_index: target value whose pixels count neither in TP nor in the sums.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` over the ``(C,)`` or ``(N, C)``
            per-class losses.

    Returns:
        Tensor: float32 (float64 for float64 input) scalar, or ``(C,)`` / ``(N, C)`` for ``"none"``.

    Same number as:
        * MONAI ``DiceLoss(sigmoid=True | softmax=True, to_onehot_y=True (multiclass),
          smooth_nr=smooth, smooth_dr=smooth, batch=not per_image)`` with its default
          ``reduction="mean"``; for any masks, empty ones included.
        * smp ``DiceLoss(mode, smooth=smooth)`` when every class is present in the target
          (smp sets the loss of a class absent from the target to 0, whatever is predicted; strop
          keeps ``1 - smooth / (Σp + smooth)``); per-class values then agree for present classes.
        * The textbook binary formula ``1 - (2·Σpt + 1) / (Σp + Σt + 1)`` exactly (binary, smooth=1).

    Reference: Milletari et al., V-Net (2016).
    """
    tp, sum_p, sum_t = _overlap(
        "dice_loss", input, target, mode, from_logits, smooth, per_image, ignore_index, reduction
    )
    loss = 1 - _ratio(2 * tp + smooth, sum_p + sum_t + smooth)
    return reduce(loss, reduction)


def jaccard_loss(
    input: Tensor,
    target: Tensor,
    *,
    mode: str = "binary",
    from_logits: bool = True,
    smooth: float = 1.0,
    per_image: bool = False,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Soft Jaccard (IoU) loss ``1 - (TP + smooth) / (Σp + Σt - TP + smooth)`` per class.

    Arguments, shapes and empty-mask values as in :func:`dice_loss`.

    Same number as:
        * MONAI ``DiceLoss(jaccard=True, smooth_nr=2*smooth, smooth_dr=2*smooth,
          batch=not per_image, sigmoid=/softmax=...)`` (MONAI doubles TP and the union).
        * smp ``JaccardLoss(mode, smooth=smooth)`` when every class is present in the target
          (smp zeroes the loss of classes absent from the target).

    Reference: Rahman & Wang, "Optimizing Intersection-Over-Union in Deep Neural Networks" (2016).
    """
    tp, sum_p, sum_t = _overlap(
        "jaccard_loss", input, target, mode, from_logits, smooth, per_image, ignore_index, reduction
    )
    loss = 1 - _ratio(tp + smooth, sum_p + sum_t - tp + smooth)
    return reduce(loss, reduction)


def tversky_loss(
    input: Tensor,
    target: Tensor,
    *,
    mode: str = "binary",
    from_logits: bool = True,
    smooth: float = 1.0,
    per_image: bool = False,
    ignore_index: int | None = None,
    reduction: str = "mean",
    alpha: float = 0.5,
    beta: float = 0.5,
    gamma: float = 1.0,
) -> Tensor:
    """Tversky loss ``(1 - (TP + smooth) / (TP + α·FP + β·FN + smooth)) ** gamma`` per class.

    ``FP = Σp - TP`` and ``FN = Σt - TP`` (soft). ``alpha`` weighs false positives, ``beta`` false
    negatives; ``alpha = beta = 0.5`` is Dice, ``alpha = beta = 1`` is Jaccard. ``gamma != 1``
    gives the focal-Tversky loss, the exponent applied per class before ``reduction``. Other
    arguments, shapes and empty-mask values as in :func:`dice_loss`.

    Same number as:
        * MONAI ``TverskyLoss(alpha=alpha, beta=beta, smooth_nr=smooth, smooth_dr=smooth,
          batch=not per_image, sigmoid=/softmax=..., to_onehot_y=...)`` for ``gamma=1``.
        * smp ``TverskyLoss(mode, smooth=smooth, alpha=alpha, beta=beta, gamma=gamma)`` when every
          class is present in the target and either ``gamma=1`` or there is one class (smp raises
          the class *mean* to ``gamma``; strop, like Abraham & Khan, each class's loss).

    References: Salehi et al., "Tversky loss function for image segmentation" (2017); Abraham &
    Khan, "A Novel Focal Tversky loss function" (2019).
    """
    func = "tversky_loss"
    for name, value in (("alpha", alpha), ("beta", beta)):
        check_positive(func, name, value, allow_zero=True)
    check_positive(func, "gamma", gamma)
    tp, sum_p, sum_t = _overlap(
        func, input, target, mode, from_logits, smooth, per_image, ignore_index, reduction
    )
    fp, fn = sum_p - tp, sum_t - tp
    loss = 1 - _ratio(tp + smooth, tp + alpha * fp + beta * fn + smooth)
    if gamma != 1:
        # rounding can leave 1 - score a hair below 0, and a fractional power of that is NaN
        loss = loss.clamp_min(0).pow(gamma)
    return reduce(loss, reduction)


def dice_bce_loss(
    input: Tensor,
    target: Tensor,
    *,
    mode: str = "binary",
    smooth: float = 1.0,
    per_image: bool = False,
    ignore_index: int | None = None,
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
) -> Tensor:
    """``bce_weight · BCE-with-logits + dice_weight · Dice`` (cross-entropy for multiclass).

    A sigmoid followed by ``F.binary_cross_entropy`` would be refused by torch under CUDA autocast
    and lose precision (log of a rounded probability); strop uses ``binary_cross_entropy_with_logits`` on the logits (``F.cross_entropy`` for
    ``mode="multiclass"``), both averaged over non-ignored elements, plus :func:`dice_loss` with
    ``reduction="mean"``. Input must be logits. Returns a scalar.

    Same number as: ``F.binary_cross_entropy_with_logits(input, target) + dice_loss(input, target)``
    and, for binary, MONAI ``DiceCELoss(sigmoid=True, smooth_nr=smooth, smooth_dr=smooth,
    batch=True)``; for multiclass MONAI ``DiceCELoss(softmax=True, to_onehot_y=True, ...)``.
    """
    func = "dice_bce_loss"
    _check_overlap_options(func, smooth, per_image, "mean")
    check_positive(func, "bce_weight", bce_weight, allow_zero=True)
    check_positive(func, "dice_weight", dice_weight, allow_zero=True)
    prepared = prepare(func, input, target, mode=mode, ignore_index=ignore_index)
    tp, sum_p, sum_t = prepared.overlap(per_image)
    dice = reduce(1 - _ratio(2 * tp + smooth, sum_p + sum_t + smooth), "mean")
    return bce_weight * _bce_of(prepared) + dice_weight * dice


def _bce_of(prepared: Prepared) -> Tensor:
    """Mean (binary or categorical) cross-entropy of prepared logits over non-ignored elements."""
    if prepared.mode == "multiclass":
        assert prepared.labels is not None
        if prepared.valid is None:
            return F.cross_entropy(prepared.input, prepared.labels, reduction="sum") / max(
                prepared.labels.numel(), 1
            )
        per_pixel = F.cross_entropy(prepared.input, prepared.labels, reduction="none")
        return reduce(per_pixel, "mean", prepared.valid.squeeze(1))
    assert prepared.target is not None
    if prepared.valid is None:
        return F.binary_cross_entropy_with_logits(
            prepared.input, prepared.target, reduction="sum"
        ) / max(prepared.target.numel(), 1)
    per_elem = F.binary_cross_entropy_with_logits(prepared.input, prepared.target, reduction="none")
    return reduce(per_elem, "mean", prepared.valid)
