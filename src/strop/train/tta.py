"""Test-time augmentation: average the *probabilities* of a model over flipped (and, for
segmentation, rescaled) copies of the batch.

``probs = tta_predict(model, x, flips=("horizontal",), scales=(1.0,))``

- classification (output ``(N, C)``): ``mean_t softmax(model(t(x))))``;
- segmentation (output ``(N, C, H, W)``, or a dict with ``"out"`` as torchvision's segmentation
  models return): each prediction is flipped back (and resized back to ``(H, W)``, bilinear)
  before averaging. Scales resize the input by ``s`` (bilinear, antialiased when shrinking).

The identity view is always included. Whether TTA helps is measured, not assumed: evaluate with
and without it and report both. Do not flip data a mirror changes (digits, text).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strop._checks import check_choice, fail

__all__ = ["FLIPS", "tta_predict"]

FLIPS = {"horizontal": -1, "vertical": -2}


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    out = model(x)
    if isinstance(out, dict):
        out = out["out"]
    return out


def _activate(logits: Tensor, activation: str) -> Tensor:
    return logits.float().softmax(1) if activation == "softmax" else logits.float().sigmoid()


@torch.no_grad()
def tta_predict(
    model: nn.Module,
    x: Tensor,
    *,
    flips: Sequence[str] = ("horizontal",),
    scales: Sequence[float] = (1.0,),
    activation: str = "softmax",
) -> Tensor:
    """Mean probabilities over the views ``{identity, each flip} × scales``.

    Args:
        model: in eval mode (the caller sets it); called on ``(N, C_in, H, W)`` batches.
        x (Tensor[N, C_in, H, W]): the normalised input batch.
        flips: any of ``"horizontal"``, ``"vertical"`` (empty: no flips).
        scales: input scale factors; anything but ``(1.0,)`` needs a dense (segmentation) output.
        activation: ``"softmax"`` (one class per sample/pixel) or ``"sigmoid"`` (binary/multilabel).

    Returns:
        float32 probabilities, ``(N, C)`` or ``(N, C, H, W)``: the mean over
        ``(1 + len(flips)) · len(scales)`` views.
    """
    func = "tta_predict"
    check_choice(func, "activation", activation, ("softmax", "sigmoid"))
    if not isinstance(x, Tensor) or x.dim() != 4:
        fail(func, f"x must be a batch (N, C, H, W); got {getattr(x, 'shape', type(x).__name__)}")
    for f in flips:
        check_choice(func, "flips", f, tuple(FLIPS))
    if not scales or any(
        isinstance(s, bool) or not isinstance(s, (int, float)) or s <= 0 for s in scales
    ):
        fail(func, f"scales must be positive numbers; got {list(scales)!r}")
    size = x.shape[-2:]
    dims = [None, *(FLIPS[f] for f in flips)]
    plain = _logits(model, x)
    if plain.dim() != 4 and any(s != 1 for s in scales):
        fail(
            func,
            f"scales={list(scales)!r} need a dense (N, C, H, W) output; the model "
            f"returned {tuple(plain.shape)}",
            hint="multi-scale TTA is for segmentation",
        )
    total: Tensor | None = None
    for scale in scales:
        xs = (
            x
            if scale == 1
            else F.interpolate(
                x,
                scale_factor=float(scale),
                mode="bilinear",
                align_corners=False,
                antialias=scale < 1,
            )
        )
        for dim in dims:
            if dim is None and scale == 1:
                out = plain
            else:
                out = _logits(model, xs if dim is None else xs.flip(dim))
            dense = out.dim() == 4
            p = _activate(out, activation)
            if dense and dim is not None:
                p = p.flip(dim)
            if dense and p.shape[-2:] != size:
                p = F.interpolate(p, size=size, mode="bilinear", align_corners=False)
            total = p if total is None else total + p
    assert total is not None
    return total / (len(dims) * len(scales))
