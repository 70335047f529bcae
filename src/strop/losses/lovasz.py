"""Lovász hinge (binary/multilabel) and Lovász-softmax (multiclass), vectorised.

The Lovász extension of the Jaccard loss (Berman et al., 2018) sorts the errors of each image (or
of the whole batch) in decreasing order and weighs the k-th error by ``g_k = J_k - J_{k-1}``, where
``J_k`` is the Jaccard loss of the k largest errors. ``g`` depends only on the order, so the
gradient of the loss is ``g`` itself (times ``d error / d input``): strop computes ``g`` without
autograd, scatters it back to the pixels, and lets autograd see only ``Σ relu(error) · g``.

Speed: every row (image × class) is sorted in *one* ``torch.sort`` call. The errors are clamped at
0 (a non-positive error contributes nothing and, sorting last, changes no count before it), and
non-negative float32 values sort like their bit patterns read as integers, which torch sorts with
a radix sort several times faster than floats; per-row order comes from putting the row index in
the high bits of an int64 key.

``g`` uses the closed form instead of differencing ``J``, which in float32 cancels
catastrophically for large images: with ``gts`` positives in the row and ``cp``/``cn`` the
positives/negatives among the first k errors, a positive at k gets ``1 / (gts + cn)`` and a
negative ``(gts - cp) / ((gts + cn - 1)(gts + cn))`` (the first of an all-negative row gets 1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from strop._checks import fail
from strop.losses._prepare import prepare, value_checks_enabled

__all__ = ["lovasz_loss"]

_MAX_KEY = 0x7FFFFFFF


def _sort_order(errors: Tensor) -> Tensor:
    """Indices that sort each row of ``errors`` (R, P), all ``>= 0``, in decreasing order.

    Returns ``(R, P)`` int64 indices into the flattened tensor.
    """
    r, p = errors.shape
    if errors.dtype == torch.float32:
        # non-negative floats order like their bits (sign bit cleared so that -0.0 sorts as 0);
        # reversing the key gives decreasing order from torch's fast ascending integer sort
        bits = errors.view(torch.int32) & _MAX_KEY
        key = _MAX_KEY - bits
        if r > 1:
            key = key.to(torch.int64) + (torch.arange(r, device=errors.device).unsqueeze(1) << 31)
        order = torch.sort(key.reshape(-1), stable=False).indices
        return order.view(r, p)
    order = torch.sort(errors, dim=1, descending=True).indices
    return order + (torch.arange(r, device=errors.device).unsqueeze(1) * p)


def _lovasz_weights(errors: Tensor, fg: Tensor) -> Tensor:
    """Lovász gradient ``g`` (R, P) for clamped ``errors`` (R, P) and 0/1 foreground ``fg``."""
    r, p = errors.shape
    order = _sort_order(errors)
    fg_sorted = fg.reshape(-1)[order]
    dtype = errors.dtype
    cp = fg_sorted.cumsum(1, dtype=dtype)
    position = torch.arange(1, p + 1, device=errors.device, dtype=dtype)
    cn = position - cp
    gts = cp[:, -1:]
    total = gts + cn
    g_pos = 1 / total.clamp_min(1)
    den = (total - 1) * total
    g_neg = torch.where(den > 0, (gts - cp) / den.clamp_min(1), torch.ones_like(den))
    g_sorted = torch.where(fg_sorted > 0, g_pos, g_neg)
    weights = torch.empty(r * p, device=errors.device, dtype=dtype)
    weights[order.reshape(-1)] = g_sorted.reshape(-1)
    return weights.view(r, p)


def lovasz_loss(
    input: Tensor,
    target: Tensor,
    *,
    mode: str = "binary",
    per_image: bool = False,
    ignore_index: int | None = None,
) -> Tensor:
    """Lovász hinge (``"binary"``, ``"multilabel"``) or Lovász-softmax (``"multiclass"``) loss.

    * binary: errors ``1 - x·(2t-1)`` of the logits, hinge ``relu``; one Lovász-Jaccard per image
      (``per_image=True``) or for the whole batch. Targets must be 0/1.
    * multilabel: the binary hinge per channel, averaged over channels.
    * multiclass: errors ``|1[y=c] - softmax(x)_c|`` per class; the loss averages the classes
      present in the target (of the image, or of the batch).

    ``per_image=True`` averages over images; an image with no counted pixel (all ignored) or no
    present class counts as 0. Pixels whose target is ``ignore_index`` are left out. Returns a
    scalar (float32, float64 for float64 input).

    Same number as smp ``LovaszLoss(mode, per_image=per_image, ignore_index=ignore_index)`` for
    binary and multiclass (smp's ``classes="present"``).

    Reference: Berman, Rannen Triki, Blaschko, "The Lovász-Softmax loss" (CVPR 2018).
    """
    func = "lovasz_loss"
    if not isinstance(per_image, bool):
        fail(
            func,
            f"per_image must be a bool; got {type(per_image).__name__} {per_image!r}",
            exc=TypeError,
        )
    prepared = prepare(func, input, target, mode=mode, ignore_index=ignore_index)
    x = prepared.input  # (N, C, P)
    n, c, p = x.shape
    if mode == "multiclass":
        probs = torch.softmax(x, dim=1)
        fg = prepared.onehot(probs.dtype)  # ignored pixels: fg = 0
        errors = (fg - probs).abs()
    else:
        assert prepared.target is not None
        fg = prepared.target
        if prepared.target.numel() and _has_soft(prepared.target):
            fail(func, "target must be 0/1 for the Lovász hinge; got fractional values")
        errors = (1 - x * (2 * fg - 1)).relu()
    if prepared.valid is not None:
        # an ignored pixel becomes a zero error and background: it sorts last and adds nothing
        errors = errors * prepared.valid
    # rows: (image, class) pairs when per_image, else classes over the whole batch
    rows = errors if per_image else errors.transpose(0, 1).reshape(1, c, n * p)
    fg_rows = fg if per_image else fg.transpose(0, 1).reshape(1, c, n * p)
    b, q = rows.shape[0], rows.shape[2]
    with torch.no_grad():
        weights = _lovasz_weights(rows.detach().reshape(b * c, q), fg_rows.reshape(b * c, q))
    per_row = (rows.reshape(b * c, q) * weights).sum(1).view(b, c)
    if mode == "multiclass":
        present = (fg_rows.sum(2) > 0).to(per_row.dtype)
        per_row = (per_row * present).sum(1) / present.sum(1).clamp_min(1)
    else:
        per_row = per_row.mean(1)
    return per_row.mean() if per_row.numel() else per_row.sum()


def _has_soft(target: Tensor) -> bool:
    return value_checks_enabled() and bool(((target != 0) & (target != 1)).any())
