"""Input handling shared by every strop loss: modes, one-hot, ``ignore_index``, reduction.

Every overlap loss (Dice, Jaccard, Tversky), focal, BCE and Lovász calls :func:`prepare` once and
:func:`reduce` once, so shapes, dtypes, target ranges and ignored pixels are handled in one place.

Modes (the vocabulary of segmentation_models_pytorch and MONAI):

* ``"binary"``: input ``(N, *)`` logits, target of the same shape, or ``(N, *spatial)`` when the
  input is ``(N, 1, *spatial)``; target values in ``[0, 1]`` (soft labels allowed). Everything
  after the batch dimension is one image of one class.
* ``"multilabel"``: input ``(N, C, *)``, target of the same shape with values in ``[0, 1]``;
  sigmoid per channel, one class per channel.
* ``"multiclass"``: input ``(N, C, *)`` with ``C >= 2``, integer target ``(N, *)`` in
  ``[0, C)``; softmax over ``C``.

Losses compute in float32 (float64 when the input is float64), so under ``torch.autocast`` a
bfloat16/float16 input still gives a float32 loss.

Value checks (target range, boxes with ``x2 < x1``) read tensor values and so force a device
sync. They are on by default; switch them off globally for speed once a pipeline is trusted with
:func:`set_value_checks` or for a block with :func:`value_checks`. Shape, dtype and option checks
never sync and always stay on.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from strop._checks import check_choice, fail
from strop.losses._fused import overlap

__all__ = [
    "MODES",
    "REDUCTIONS",
    "Prepared",
    "check_alpha",
    "check_ignore_index",
    "check_mode",
    "check_reduction",
    "check_tensor",
    "compute_dtype",
    "prepare",
    "reduce",
    "set_value_checks",
    "value_checks",
    "value_checks_enabled",
]

MODES = ("binary", "multiclass", "multilabel")
REDUCTIONS = ("mean", "sum", "none")

_VALUE_CHECKS = True


def set_value_checks(enabled: bool) -> bool:
    """Turn the value checks of every strop loss on or off; returns the previous setting.

    Value checks (binary targets in ``[0, 1]``, class ids in ``[0, C)``, probabilities in
    ``[0, 1]`` when ``from_logits=False``, well-ordered finite boxes) read tensor values, which
    forces a host-device sync per call. Turning them off saves that sync; a bad value then gives a
    wrong number or an error from torch instead of a clear ``ValueError``. Shape/dtype checks
    are not affected.
    """
    global _VALUE_CHECKS
    if not isinstance(enabled, bool):
        fail(
            "set_value_checks",
            f"enabled must be a bool; got {type(enabled).__name__} {enabled!r}",
            exc=TypeError,
        )
    previous, _VALUE_CHECKS = _VALUE_CHECKS, enabled
    return previous


def value_checks_enabled() -> bool:
    """Whether strop losses currently check tensor values (see :func:`set_value_checks`)."""
    return _VALUE_CHECKS


@contextlib.contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Context manager form of :func:`set_value_checks`: ``with value_checks(False): ...``."""
    previous = set_value_checks(enabled)
    try:
        yield
    finally:
        set_value_checks(previous)


def check_mode(func: str, mode: str, modes: tuple[str, ...] = MODES) -> None:
    check_choice(func, "mode", mode, modes)


def check_reduction(func: str, reduction: str) -> None:
    check_choice(func, "reduction", reduction, REDUCTIONS)


def check_ignore_index(func: str, ignore_index: int | None) -> None:
    if ignore_index is not None and (
        isinstance(ignore_index, bool) or not isinstance(ignore_index, int)
    ):
        fail(
            func,
            f"ignore_index must be an int or None; got {type(ignore_index).__name__} {ignore_index!r}",
            exc=TypeError,
        )


def check_alpha(func: str, alpha: float | Sequence[float] | None, mode: str) -> None:
    """Focal's ``alpha``: ``None``, a float in ``[0, 1]``, or (multiclass) one weight per class."""
    if alpha is None:
        return
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        if not 0 <= alpha <= 1:
            fail(func, f"alpha must lie in [0, 1] (or be None for no weighting); got {alpha!r}")
        return
    if (
        mode == "multiclass"
        and isinstance(alpha, (Sequence, Tensor))
        and not isinstance(alpha, str)
    ):
        return
    fail(
        func,
        f"alpha must be a float in [0, 1], None{', or one weight per class' if mode == 'multiclass' else ''}; "
        f"got {type(alpha).__name__} {alpha!r}",
        exc=TypeError,
    )


def check_tensor(func: str, arg: str, value: object, *, floating: bool = False) -> Tensor:
    """``value`` as a Tensor, or a ``TypeError`` naming ``arg``."""
    if not isinstance(value, Tensor):
        fail(
            func,
            f"{arg} must be a torch.Tensor; got {type(value).__name__}",
            hint="convert with torch.as_tensor(...)",
            exc=TypeError,
        )
    if floating and not value.is_floating_point():
        fail(
            func,
            f"{arg} must be a floating-point tensor; got {value.dtype}",
            hint=f"call {arg}.float()",
            exc=TypeError,
        )
    return value


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (gradcheck); everything else computes in float32 (autocast-safe)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _shape(shape: torch.Size | tuple[int, ...]) -> str:
    return str(tuple(shape))


def _check_values(func: str, checks: list[tuple[str, Tensor, float, float]]) -> None:
    """Fail unless every ``(what, tensor, lo, hi)`` has ``lo <= values <= hi`` and no NaN.

    One host-device sync for all checks together; skipped when value checks are off.
    """
    checks = [c for c in checks if c[1].numel() > 0]
    if not _VALUE_CHECKS or not checks:
        return
    bounds = torch.stack(
        [torch.stack(torch.aminmax(c[1])).to(torch.float64) for c in checks]
    ).tolist()
    for (what, tensor, lo, hi), (got_lo, got_hi) in zip(checks, bounds, strict=True):
        if not (got_lo >= lo and got_hi <= hi):  # written so that NaN fails too
            bad = tensor.isnan().sum().item() if tensor.is_floating_point() else 0
            nan = f" ({bad} NaN)" if bad else ""
            fail(
                func,
                f"{what} must lie in [{lo:g}, {hi:g}]; got values in [{got_lo:g}, {got_hi:g}]{nan}",
            )


@dataclass(frozen=True)
class Prepared:
    """Validated, flattened loss inputs (see :func:`prepare`).

    ``input``: ``(N, C, P)`` raw input (logits unless ``from_logits=False``) in the compute dtype.
    ``target``: ``(N, C, P)`` float target with ignored positions set to 0 (binary/multilabel);
    ``None`` for multiclass. ``labels``: ``(N, P)`` int64 class ids with ignored positions set to
    0 (multiclass); ``None`` otherwise. ``valid``: ``(N, 1, P)`` bool mask of positions that count,
    ``None`` when ``ignore_index`` is None. ``shape``: shape of an element-wise loss
    (``reduction="none"``): the input's for binary/multilabel, the target's for multiclass.
    """

    input: Tensor
    target: Tensor | None
    labels: Tensor | None
    valid: Tensor | None
    mode: str
    from_logits: bool
    shape: torch.Size

    @property
    def num_classes(self) -> int:
        return self.input.shape[1]

    def onehot(self, dtype: torch.dtype | None = None) -> Tensor:
        """``(N, C, P)`` float target: one-hot labels (multiclass) or the target, ignored -> 0."""
        if self.target is not None:
            return self.target
        assert self.labels is not None
        out = torch.zeros(
            self.input.shape, dtype=dtype or self.input.dtype, device=self.input.device
        )
        out.scatter_(1, self.labels.unsqueeze(1), 1.0)
        if self.valid is not None:
            out.mul_(self.valid)
        return out

    def overlap(self, per_image: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Soft ``(TP, sum of probabilities, sum of target)`` per class, ignored pixels excluded.

        Shapes ``(N, C)`` when ``per_image`` else ``(C,)`` (batch and pixels summed together).
        ``FP = sum_p - TP`` and ``FN = sum_t - TP``, so Dice, Jaccard and Tversky all follow.
        """
        return overlap(
            self.input, self.target, self.labels, self.valid, self.mode, self.from_logits, per_image
        )


def prepare(
    func: str,
    input: Tensor,
    target: Tensor,
    *,
    mode: str,
    from_logits: bool = True,
    ignore_index: int | None = None,
) -> Prepared:
    """Validate ``input``/``target`` for ``mode`` and flatten them to ``(N, C, P)``.

    Raises ``TypeError`` for non-tensors, non-float input and wrong target dtypes; ``ValueError``
    for shape mismatches, unknown modes and (value checks on) out-of-range targets. Messages start
    with ``func``.
    """
    _check_arguments(func, input, target, mode, from_logits, ignore_index)
    x = input.to(compute_dtype(input.dtype))
    checks: list[tuple[str, Tensor, float, float]] = []
    if not from_logits:
        checks.append(("input (probabilities, from_logits=False)", x.detach(), 0.0, 1.0))
    if mode == "multiclass":
        return _prepare_multiclass(func, x, target, from_logits, ignore_index, checks)
    if mode == "multilabel":
        _check_multilabel_shape(func, input, target)
        n, c, pixels = input.shape[0], input.shape[1], math.prod(input.shape[2:])
    else:
        _check_binary_shape(func, input, target)
        n, c, pixels = input.shape[0], 1, math.prod(input.shape[1:])
    t, valid = _float_target(target.reshape(n, c, pixels).to(x.dtype), ignore_index)
    what = "target" + (
        f" (other than ignore_index={ignore_index})" if ignore_index is not None else ""
    )
    if target.dtype != torch.bool:
        checks.append((f"{what} for mode={mode!r}", t, 0.0, 1.0))
    _check_values(func, checks)
    return Prepared(x.reshape(n, c, pixels), t, None, valid, mode, from_logits, input.shape)


def _check_arguments(
    func: str, input: Tensor, target: Tensor, mode: str, from_logits: bool, ignore_index: int | None
) -> None:
    """Types, devices and options, for every mode."""
    check_mode(func, mode)
    check_tensor(func, "input", input, floating=True)
    check_tensor(func, "target", target)
    check_ignore_index(func, ignore_index)
    if not isinstance(from_logits, bool):
        fail(func, f"from_logits must be a bool; got {type(from_logits).__name__}", exc=TypeError)
    if target.device != input.device:
        fail(
            func,
            f"target is on {target.device} but input is on {input.device}",
            hint="move both to the same device",
        )
    if target.is_complex():
        fail(func, f"target must be a real tensor; got {target.dtype}", exc=TypeError)


def _prepare_multiclass(
    func: str,
    x: Tensor,
    target: Tensor,
    from_logits: bool,
    ignore_index: int | None,
    checks: list[tuple[str, Tensor, float, float]],
) -> Prepared:
    """``(N, C, *)`` logits with ``(N, *)`` integer class ids: labels ``(N, P)``, no one-hot."""
    if x.dim() < 2:
        fail(
            func, f"input must have shape (N, C, ...) for mode='multiclass'; got {_shape(x.shape)}"
        )
    n, c = x.shape[:2]
    if c < 2:
        fail(
            func,
            f"input must have C >= 2 channels for mode='multiclass'; got {_shape(x.shape)}",
            hint="use mode='binary' for a single-channel output",
        )
    expected = (n, *x.shape[2:])
    if tuple(target.shape) != expected:
        hint = None
        if target.shape == x.shape:
            hint = "use mode='multilabel' for one-hot targets"
        elif target.dim() == x.dim() and target.shape[1] == 1:
            hint = "drop the channel dimension: target[:, 0]"
        fail(
            func,
            f"target must have shape (N, ...)={_shape(expected)} for mode='multiclass' with "
            f"input (N, C, ...)={_shape(x.shape)}; got {_shape(target.shape)}",
            hint=hint,
        )
    if target.is_floating_point() or target.dtype == torch.bool:
        fail(
            func,
            f"target must hold integer class ids for mode='multiclass'; got {target.dtype}",
            hint="call target.long(); for one-hot or soft targets use mode='multilabel'",
            exc=TypeError,
        )
    pixels = math.prod(x.shape[2:])
    labels = target.reshape(n, pixels).long()
    valid = None
    if ignore_index is not None:
        keep = labels != ignore_index
        labels = labels.masked_fill(~keep, 0)
        valid = keep.unsqueeze(1)
    what = "target class ids" + (
        f" (other than ignore_index={ignore_index})" if ignore_index is not None else ""
    )
    checks.append((what, labels, 0, c - 1))
    _check_values(func, checks)
    return Prepared(
        x.reshape(n, c, pixels), None, labels, valid, "multiclass", from_logits, target.shape
    )


def _check_multilabel_shape(func: str, input: Tensor, target: Tensor) -> None:
    if input.dim() < 2:
        fail(
            func,
            f"input must have shape (N, C, ...) for mode='multilabel'; got {_shape(input.shape)}",
        )
    if target.shape != input.shape:
        hint = (
            "integer class-id targets go with mode='multiclass'"
            if tuple(target.shape) == (input.shape[0], *input.shape[2:])
            else None
        )
        fail(
            func,
            f"target must have the shape of input {_shape(input.shape)} for mode='multilabel'; "
            f"got {_shape(target.shape)}",
            hint=hint,
        )


def _check_binary_shape(func: str, input: Tensor, target: Tensor) -> None:
    """The target has the input's shape, or ``(N, *)`` for an ``(N, 1, *)`` input."""
    if input.dim() < 1:
        fail(
            func,
            "input must have shape (N, ...) for mode='binary'; got a 0-d tensor",
            hint="add a batch dimension: input[None]",
        )
    spatial = (input.shape[0], *input.shape[2:])
    one_channel = input.dim() >= 2 and input.shape[1] == 1
    if target.shape == input.shape or (one_channel and tuple(target.shape) == spatial):
        return
    also = f" or {_shape(spatial)}" if one_channel else ""
    hint = None
    if input.dim() >= 2 and input.shape[1] > 1 and tuple(target.shape) == spatial:
        hint = f"for C={input.shape[1]} classes with integer targets use mode='multiclass'"
    fail(
        func,
        f"target must have the shape of input {_shape(input.shape)}{also} for mode='binary'; "
        f"got {_shape(target.shape)}",
        hint=hint,
    )


def _float_target(t: Tensor, ignore_index: int | None) -> tuple[Tensor, Tensor | None]:
    """``(target with ignored elements set to 0, mask of the kept ones or None)``."""
    if ignore_index is None:
        return t, None
    keep = t != ignore_index
    # binary: one class, so the mask is the target's; multilabel keeps a per-channel mask
    return t.masked_fill(~keep, 0), keep


def reduce(loss: Tensor, reduction: str, valid: Tensor | None = None) -> Tensor:
    """Apply ``reduction`` (``"mean" | "sum" | "none"``) to an element-wise ``loss``.

    With ``valid`` (a bool/0-1 mask broadcastable to ``loss``), masked elements are zeroed and
    ``"mean"`` divides by the number of valid elements. An empty loss (or no valid element) gives a
    ``"mean"`` of 0, still attached to the graph, instead of torch's NaN.
    """
    if valid is not None:
        loss = loss * valid
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    if valid is not None:
        count = valid.expand_as(loss).sum() if valid.shape != loss.shape else valid.sum()
        return total / count.clamp_min(1).to(total.dtype)
    return total / max(loss.numel(), 1)
