"""Thin ``nn.Module`` wrappers: each stores its options and calls the pure function.

Options are checked when the module is built, so a bad config fails before training starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from strop._checks import check_choice, check_positive
from strop.losses._prepare import MODES, check_alpha, check_ignore_index, check_reduction
from strop.losses.boxes import KINDS, box_iou_loss
from strop.losses.classification import bce_loss, cross_entropy_loss, focal_loss, mse_loss
from strop.losses.lovasz import lovasz_loss
from strop.losses.segmentation import dice_bce_loss, dice_loss, jaccard_loss, tversky_loss

__all__ = [
    "BCEWithLogitsLoss",
    "BoxIoULoss",
    "CrossEntropyLoss",
    "DiceBCELoss",
    "DiceLoss",
    "FocalLoss",
    "JaccardLoss",
    "LovaszLoss",
    "MSELoss",
    "TverskyLoss",
]


class _Loss(nn.Module):
    _fn: ClassVar[Callable[..., Tensor]]

    def __init__(self, **options: Any) -> None:
        super().__init__()
        name = type(self).__name__
        if "mode" in options:
            check_choice(name, "mode", options["mode"], MODES)
        if "reduction" in options:
            check_reduction(name, options["reduction"])
        if "ignore_index" in options:
            check_ignore_index(name, options["ignore_index"])
        for key in ("smooth", "gamma", "beta", "bce_weight", "dice_weight"):
            if key in options:
                check_positive(name, key, options[key], allow_zero=True)
        self.options = options

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return type(self)._fn(input, target, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


class MSELoss(_Loss):
    """:func:`~strop.losses.mse_loss` as a module (true mean; array-likes accepted)."""

    _fn = staticmethod(mse_loss)

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__(reduction=reduction)


class DiceLoss(_Loss):
    """:func:`~strop.losses.dice_loss` as a module."""

    _fn = staticmethod(dice_loss)

    def __init__(
        self,
        *,
        mode: str = "binary",
        from_logits: bool = True,
        smooth: float = 1.0,
        per_image: bool = False,
        ignore_index: int | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(
            mode=mode,
            from_logits=from_logits,
            smooth=smooth,
            per_image=per_image,
            ignore_index=ignore_index,
            reduction=reduction,
        )


class JaccardLoss(_Loss):
    """:func:`~strop.losses.jaccard_loss` as a module."""

    _fn = staticmethod(jaccard_loss)

    def __init__(
        self,
        *,
        mode: str = "binary",
        from_logits: bool = True,
        smooth: float = 1.0,
        per_image: bool = False,
        ignore_index: int | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(
            mode=mode,
            from_logits=from_logits,
            smooth=smooth,
            per_image=per_image,
            ignore_index=ignore_index,
            reduction=reduction,
        )


class TverskyLoss(_Loss):
    """:func:`~strop.losses.tversky_loss` as a module (``gamma != 1``: focal-Tversky)."""

    _fn = staticmethod(tversky_loss)

    def __init__(
        self,
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
    ) -> None:
        check_positive("TverskyLoss", "alpha", alpha, allow_zero=True)
        super().__init__(
            mode=mode,
            from_logits=from_logits,
            smooth=smooth,
            per_image=per_image,
            ignore_index=ignore_index,
            reduction=reduction,
            alpha=alpha,
            beta=beta,
            gamma=gamma,
        )


class DiceBCELoss(_Loss):
    """:func:`~strop.losses.dice_bce_loss` as a module (BCE with logits + Dice, autocast-safe)."""

    _fn = staticmethod(dice_bce_loss)

    def __init__(
        self,
        *,
        mode: str = "binary",
        smooth: float = 1.0,
        per_image: bool = False,
        ignore_index: int | None = None,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
    ) -> None:
        super().__init__(
            mode=mode,
            smooth=smooth,
            per_image=per_image,
            ignore_index=ignore_index,
            bce_weight=bce_weight,
            dice_weight=dice_weight,
        )


class FocalLoss(_Loss):
    """:func:`~strop.losses.focal_loss` as a module (per-element focal loss, Lin et al. 2017)."""

    _fn = staticmethod(focal_loss)

    def __init__(
        self,
        *,
        mode: str = "binary",
        alpha: float | Sequence[float] | None = 0.25,
        gamma: float = 2.0,
        ignore_index: int | None = None,
        reduction: str = "mean",
    ) -> None:
        check_alpha("FocalLoss", alpha, mode)
        super().__init__(
            mode=mode, alpha=alpha, gamma=gamma, ignore_index=ignore_index, reduction=reduction
        )


class LovaszLoss(_Loss):
    """:func:`~strop.losses.lovasz_loss` as a module (Lovász hinge / Lovász-softmax)."""

    _fn = staticmethod(lovasz_loss)

    def __init__(
        self, *, mode: str = "binary", per_image: bool = False, ignore_index: int | None = None
    ) -> None:
        super().__init__(mode=mode, per_image=per_image, ignore_index=ignore_index)


class BoxIoULoss(_Loss):
    """:func:`~strop.losses.box_iou_loss` as a module (``kind``: iou, giou, diou, ciou)."""

    _fn = staticmethod(box_iou_loss)

    def __init__(self, *, kind: str = "iou", reduction: str = "mean") -> None:
        check_choice("BoxIoULoss", "kind", kind, KINDS)
        super().__init__(kind=kind, reduction=reduction)


class CrossEntropyLoss(_Loss):
    """:func:`~strop.losses.cross_entropy_loss` as a module (``F.cross_entropy`` with validation)."""

    _fn = staticmethod(cross_entropy_loss)

    def __init__(
        self,
        *,
        weight: Sequence[float] | None = None,
        ignore_index: int | None = None,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__(
            weight=weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            reduction=reduction,
        )


class BCEWithLogitsLoss(_Loss):
    """:func:`~strop.losses.bce_loss` as a module (BCE with logits with validation)."""

    _fn = staticmethod(bce_loss)

    def __init__(
        self,
        *,
        pos_weight: float | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(pos_weight=pos_weight, ignore_index=ignore_index, reduction=reduction)
