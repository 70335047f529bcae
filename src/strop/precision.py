"""Mixed precision as one string and one helper.

``resolve("auto", device)`` picks the numeric format the hardware runs fast, and says why:

============================  =========  ==================================================
hardware                      "auto"     why
============================  =========  ==================================================
CUDA, compute capability ≥ 8  ``bf16``   Ampere+ tensor cores run bf16; no loss scaling
CUDA, older                   ``fp16``   tensor cores run fp16; needs a GradScaler
CPU with AMX-BF16/AVX512-BF16 ``bf16``   oneDNN bf16 kernels (several × fp32 matmul/conv)
any other CPU or device       ``fp32``   reduced precision would be emulated, i.e. slower
============================  =========  ==================================================

``MixedPrecision(precision)`` then gives one code path for all three formats (as nanoGPT does):
``torch.amp.autocast`` for the forward pass and a ``torch.amp.GradScaler`` that is only enabled
for fp16 (a disabled scaler is a no-op, so fp32 and bf16 run the very same lines)::

    mp = MixedPrecision(resolve("auto", device))
    with mp.autocast():
        loss = loss_fn(model(x), y)
    mp.backward(loss)
    result = mp.optimizer_step(optimizer, clip_grad_norm=1.0)  # .stepped False: fp16 skipped it

fp16 on a CPU: torch's CPU autocast and ``GradScaler("cpu")`` support it, and strop allows it when
asked for explicitly (it is how the fp16 code path is tested without a GPU), but "auto" never
picks it: without AVX512-FP16/AMX-FP16 the fp16 kernels are emulated, many times slower than
fp32 (figures in BENCHMARKS.md). ``reason`` says so.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from strop._checks import check_positive, did_you_mean, fail

__all__ = [
    "FP32_CHANNELS_LAST_MIN_SIZE",
    "MixedPrecision",
    "Precision",
    "StepResult",
    "convolutions_frozen",
    "cpu_flags",
    "resolve",
    "resolve_memory_format",
]

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# spellings used by torch and Lightning, so a user's habit is not an error
_ALIASES = {
    "auto": "auto",
    "fp32": "fp32", "float32": "fp32", "32": "fp32", "32-true": "fp32",
    "bf16": "bf16", "bfloat16": "bf16", "bf16-mixed": "bf16",
    "fp16": "fp16", "float16": "fp16", "half": "fp16", "16": "fp16", "16-mixed": "fp16",
}  # fmt: skip


@dataclass(frozen=True)
class Precision:
    """The resolved numeric format of a run.

    Attributes:
        name: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        device_type: ``"cpu"``, ``"cuda"``, ... (what ``torch.amp.autocast`` takes).
        dtype: the autocast dtype (``torch.float32`` for fp32, where autocast is off).
        reason: one sentence saying why this format was chosen.
    """

    name: str
    device_type: str
    dtype: torch.dtype
    reason: str

    @property
    def autocast_enabled(self) -> bool:
        """True for bf16 and fp16."""
        return self.name != "fp32"

    @property
    def needs_scaler(self) -> bool:
        """True for fp16 only: bf16 has fp32's exponent range, so gradients do not underflow."""
        return self.name == "fp16"


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    """The x86 feature flags of this CPU from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_flags() -> frozenset[str]:
    """The x86 feature flags of this CPU (``avx2``, ``avx512_bf16``, ``amx_bf16``, ...)."""
    return _cpu_flags()


def _cpu_bf16() -> tuple[bool, str]:
    """Whether this CPU runs bf16 natively, and the feature that says so."""
    flags = _cpu_flags()
    for flag, label in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16")):
        if flag in flags:
            return True, label
    return False, ""


def _cpu_fp16() -> bool:
    flags = _cpu_flags()
    return "avx512_fp16" in flags or "amx_fp16" in flags


def _cuda_capability(device: torch.device) -> tuple[int, int] | None:
    """Compute capability of ``device``, or None when CUDA is not available."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(device)


def _parse_device(func: str, device: Any) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        fail(
            func,
            f"device must be a torch.device or a string like 'cpu' or 'cuda:0'; got {device!r}",
        )


def _parse_precision(func: str, precision: Any) -> str:
    if isinstance(precision, Precision):
        return precision.name
    if not isinstance(precision, str):
        fail(
            func,
            f"precision must be a string; got {type(precision).__name__} {precision!r}",
            exc=TypeError,
        )
    key = precision.strip().lower()
    if key not in _ALIASES:
        choices = ("auto", *PRECISIONS)
        fail(
            func,
            f"precision must be one of {', '.join(repr(c) for c in choices)}; got {precision!r}"
            f"{did_you_mean(key, _ALIASES)}",
        )
    return _ALIASES[key]


def resolve(precision: str | Precision = "auto", device: str | torch.device = "cpu") -> Precision:
    """Resolve a precision string for a device.

    Args:
        precision: ``"auto"`` (default), ``"fp32"``, ``"bf16"`` or ``"fp16"`` (torch/Lightning
            spellings such as ``"bfloat16"`` or ``"16-mixed"`` are accepted too).
        device: where the model runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``).

    Returns:
        A :class:`Precision` whose ``reason`` says why ``"auto"`` picked it (or notes a slow
        explicit choice, e.g. fp16 on a CPU without fp16 hardware).

    Raises:
        ValueError: unknown precision (with a did-you-mean), CUDA requested but not available,
            or bf16 requested on a GPU that cannot run it.
    """
    func = "resolve"
    name = _parse_precision(func, precision)
    dev = _parse_device(func, device)
    if dev.type == "cuda":
        return _resolve_cuda(func, name, dev, device)
    if dev.type == "cpu":
        return _resolve_cpu(name)
    return _resolve_other(func, name, dev.type)


def _resolve_cuda(func: str, name: str, dev: torch.device, asked: Any) -> Precision:
    cap = _cuda_capability(dev)
    if cap is None:
        fail(func, f"device={str(asked)!r} but CUDA is not available", hint="use device='cpu'")
    gpu = f"CUDA GPU with compute capability {cap[0]}.{cap[1]}"
    if name == "auto" and cap >= (8, 0):
        why = f"auto: bf16 autocast, as the {gpu} (Ampere or newer) runs bf16 natively"
        return Precision("bf16", "cuda", torch.bfloat16, why)
    if name == "auto":
        why = (
            f"auto: fp16 autocast with a GradScaler, as the {gpu} (pre-Ampere) has fp16 but no "
            "bf16 tensor cores"
        )
        return Precision("fp16", "cuda", torch.float16, why)
    if name == "bf16" and cap < (8, 0):
        fail(
            func,
            f"precision='bf16' needs a GPU with compute capability >= 8.0 (Ampere); this is a {gpu}",
            hint="use precision='fp16' or 'auto'",
        )
    return Precision(name, "cuda", _DTYPES[name], f"{name} requested on a {gpu}")


def _resolve_cpu(name: str) -> Precision:
    fast, feature = _cpu_bf16()
    if name == "auto" and fast:
        why = f"auto: bf16 autocast, as this CPU has {feature} (native bf16 matmul/convolution)"
        return Precision("bf16", "cpu", torch.bfloat16, why)
    if name == "auto":
        why = (
            "auto: fp32, as this CPU has neither AMX-BF16 nor AVX512-BF16, so bf16 would be "
            "emulated and slower"
        )
        return Precision("fp32", "cpu", torch.float32, why)
    if name == "bf16" and not fast:
        why = (
            "bf16 requested; note this CPU has no AMX-BF16/AVX512-BF16, so bf16 runs emulated "
            "(correct but slower than fp32)"
        )
        return Precision("bf16", "cpu", torch.bfloat16, why)
    if name == "fp16" and not _cpu_fp16():
        why = (
            "fp16 requested; note this CPU has no AVX512-FP16/AMX-FP16, so fp16 runs emulated "
            "(much slower than fp32; prefer 'bf16')"
        )
        return Precision("fp16", "cpu", torch.float16, why)
    return Precision(name, "cpu", _DTYPES[name], f"{name} requested on the CPU")


def _resolve_other(func: str, name: str, kind: str) -> Precision:
    # mps, xpu, ...: reduced precision only when asked for and torch.amp supports it there
    if name == "auto":
        why = f"auto: fp32, as strop has no rule for fast reduced precision on {kind!r}"
        return Precision("fp32", kind, torch.float32, why)
    if name != "fp32" and not torch.amp.is_autocast_available(kind):
        fail(
            func,
            f"precision={name!r} needs torch.amp autocast on device type {kind!r}, which this "
            "torch does not support",
            hint="use precision='fp32'",
        )
    return Precision(name, kind, _DTYPES[name], f"{name} requested on {kind!r}")


#: fp32 training on a CPU goes channels_last from this image size (pixels, smaller side) up
#: (:func:`resolve_memory_format`)
FP32_CHANNELS_LAST_MIN_SIZE = 128


def resolve_memory_format(
    fmt: str = "auto",
    device: str | torch.device = "cpu",
    precision: str | Precision = "auto",
    *,
    forward_only: bool = False,
    image_size: int | None = None,
) -> torch.memory_format:
    """The memory format to put a convolutional model and its inputs in.

    ``"auto"`` picks ``torch.channels_last`` where the convolution kernels are faster in NHWC:

    - CUDA with bf16/fp16 (tensor cores want NHWC);
    - bf16 on a CPU (oneDNN's bf16 convolutions are NHWC; with emulated bf16 on an AVX2-only CPU,
      resnet18 trained 2.5× faster in channels_last than NCHW, though fp32 is faster still);
    - fp32 on a CPU when ``forward_only``: the convolutions never run backward (a frozen
      backbone, inference). oneDNN's NHWC forward kernels were measured 1.2× (224 px) to 1.6×
      (64 px) faster than NCHW for a frozen resnet18 on an AVX2 CPU;
    - fp32 training on a CPU with images of at least :data:`FP32_CHANNELS_LAST_MIN_SIZE` pixels
      (``image_size``, the smaller side): full fp32 training of resnet18 (batch 32) on an AVX2 CPU
      was 1.07–1.19× faster in channels_last at 128 px and 1.19× at 224 px
      (``benchmarks/auto_choices.py``), level at 96 px; at 64 px NCHW was ~1.06× faster there and
      level in a hand A/B. At 128 px (batch 16, a hand A/B) mobilenet_v3_small trained 1.28×
      faster in channels_last, efficientnet_b0 1.31×, deeplabv3_mobilenet_v3_large 1.23×,
      lraspp_mobilenet_v3_large 0.97×.

    Everything else keeps ``torch.contiguous_format`` (NCHW), where channels_last brings little
    and can be slower; so does fp32 training when ``image_size`` is not given.
    ``"channels_last"`` and ``"contiguous"`` force a format.

    Args:
        fmt: ``"auto"`` (default), ``"channels_last"`` or ``"contiguous"``.
        device: as for :func:`resolve`.
        precision: a precision string (resolved with :func:`resolve`) or a :class:`Precision`.
        forward_only: the convolutions never run backward (:func:`convolutions_frozen`).
        image_size: the input images' smaller side in pixels (``data.image_size``), if known.
    """
    func = "resolve_memory_format"
    choices = ("auto", "channels_last", "contiguous")
    if fmt not in choices:
        fail(
            func,
            f"fmt must be one of {', '.join(repr(c) for c in choices)}; got {fmt!r}{did_you_mean(str(fmt), choices)}",
        )
    if image_size is not None:
        check_positive(func, "image_size", image_size, integer=True)
    if fmt == "channels_last":
        return torch.channels_last
    if fmt == "contiguous":
        return torch.contiguous_format
    prec = precision if isinstance(precision, Precision) else resolve(precision, device)
    kind = _parse_device(func, device).type
    if kind == "cuda" and prec.name in ("bf16", "fp16"):
        return torch.channels_last
    if kind == "cpu" and (prec.name == "bf16" or forward_only):
        return torch.channels_last
    large = image_size is not None and image_size >= FP32_CHANNELS_LAST_MIN_SIZE
    if kind == "cpu" and prec.name == "fp32" and large:
        return torch.channels_last
    return torch.contiguous_format


def convolutions_frozen(model: torch.nn.Module) -> bool:
    """True when ``model`` has convolutions and no convolution or normalization layer trains
    (none of their parameters requires a gradient): its convolutions then run forward only in
    training (``resolve_memory_format(forward_only=)``). A trainable BatchNorm inside a frozen
    backbone (``train_bn``) makes the backward pass run through the convolutions above it, so it
    counts as training them."""
    conv = torch.nn.modules.conv._ConvNd
    layers = (conv, torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm)
    found = [m for m in model.modules() if isinstance(m, layers)]
    return any(isinstance(m, conv) for m in found) and not any(
        p.requires_grad for m in found for p in m.parameters(recurse=False)
    )


@dataclass(frozen=True)
class StepResult:
    """What :meth:`MixedPrecision.optimizer_step` did.

    Attributes:
        stepped: the optimizer stepped.
        finite: False when the finite check found inf/NaN gradients (nothing was stepped).
        grad_norm: the total gradient norm before clipping (a 0-dim tensor), when it was
            computed (clipping or the finite check), else None.
        skipped_by_scaler: the fp16 GradScaler found inf/NaN and skipped the step.
    """

    stepped: bool
    finite: bool = True
    grad_norm: torch.Tensor | None = None
    skipped_by_scaler: bool = False


class MixedPrecision:
    """Autocast, (scaled) backward and the optimizer step for fp32, bf16 and fp16 in one code path.

    Args:
        precision: a :class:`Precision` or a string resolved with :func:`resolve` on ``device``.
        device: used only when ``precision`` is a string (default ``"cpu"``).
        init_scale, growth_interval: passed to ``torch.amp.GradScaler`` (fp16 only; torch's
            defaults 2**16 and 2000).

    Attributes:
        precision: the resolved :class:`Precision`.
        scaler: the ``torch.amp.GradScaler`` (enabled for fp16 only).
        skipped_steps: how many optimizer steps the fp16 scaler skipped (inf/NaN gradients).
        grad_norm: the total gradient norm (a 0-dim tensor, before clipping) of the last step
            that clipped, or None.
    """

    def __init__(
        self,
        precision: str | Precision = "fp32",
        device: str | torch.device = "cpu",
        *,
        init_scale: float = 2.0**16,
        growth_interval: int = 2000,
    ) -> None:
        self.precision = (
            precision if isinstance(precision, Precision) else resolve(precision, device)
        )
        self.scaler = torch.amp.GradScaler(
            self.precision.device_type,
            init_scale=init_scale,
            growth_interval=growth_interval,
            enabled=self.precision.needs_scaler,
        )
        self.skipped_steps = 0
        self.grad_norm: torch.Tensor | None = None

    def __repr__(self) -> str:
        return (
            f"MixedPrecision({self.precision.name!r}, device_type={self.precision.device_type!r})"
        )

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Context manager for the forward pass and the loss (a no-op for fp32)."""
        if not self.precision.autocast_enabled:
            return contextlib.nullcontext()
        return torch.amp.autocast(self.precision.device_type, dtype=self.precision.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, with the loss scaled first under fp16."""
        self.scaler.scale(loss).backward()

    def optimizer_step(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        clip_grad_norm: float | None = None,
        parameters: Iterable[torch.Tensor] | None = None,
        check_finite: bool = False,
    ) -> StepResult:
        """Finite check -> unscale -> clip -> ``optimizer.step()`` -> scaler update, once.

        Args:
            optimizer: the optimizer whose gradients were produced by :meth:`backward`.
            clip_grad_norm: clip the total L2 norm of the gradients to this value (None: no
                clipping).
            parameters: whose gradients to check and clip (default: every parameter of
                ``optimizer``).
            check_finite: fp32/bf16 only (fp16 has the scaler's own check): when the total
                gradient norm is inf/NaN, do not step (``StepResult.finite`` is False), since
                the step would silently write NaN into the weights.

        Returns:
            A :class:`StepResult`. The caller zeroes the gradients afterwards.
        """
        if parameters is None:
            parameters = [p for group in optimizer.param_groups for p in group["params"]]
        params = [p for p in parameters if p.grad is not None]
        check = check_finite and not self.scaler.is_enabled()
        norm = None
        if params and (check or clip_grad_norm is not None):
            # unscale first: clipping must see true gradients (a no-op without a scaler);
            # one pass over the gradients serves both the finite check and clipping
            self.scaler.unscale_(optimizer)
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if check and norm is not None and not bool(torch.isfinite(norm)):
            return StepResult(stepped=False, finite=False, grad_norm=norm)
        if norm is not None and clip_grad_norm is not None:
            torch.nn.utils.clip_grads_with_norm_(params, clip_grad_norm, norm)
            self.grad_norm = norm
        if not self.scaler.is_enabled():
            optimizer.step()
            return StepResult(stepped=True, finite=True, grad_norm=norm)
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        # the scaler lowers its scale exactly when it found inf/NaN and skipped the step
        stepped = self.scaler.get_scale() >= scale
        if not stepped:
            self.skipped_steps += 1
        return StepResult(
            stepped=stepped, finite=True, grad_norm=norm, skipped_by_scaler=not stepped
        )

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        clip_grad_norm: float | None = None,
        parameters: Iterable[torch.Tensor] | None = None,
    ) -> bool:
        """:meth:`optimizer_step` without the finite check; True when the optimizer stepped,
        False when the fp16 GradScaler found inf/NaN gradients and skipped the step (counted in
        ``skipped_steps``). fp32 and bf16 always step."""
        result = self.optimizer_step(
            optimizer, clip_grad_norm=clip_grad_norm, parameters=parameters
        )
        return result.stepped

    def state_dict(self) -> dict[str, Any]:
        """Plain data: the precision name, the scaler's state and the skipped-step count."""
        return {
            "precision": self.precision.name,
            "scaler": self.scaler.state_dict(),
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`. A scaler state is only loaded into an fp16 run (a run
        resumed in another precision starts its scaler fresh)."""
        self.skipped_steps = int(state.get("skipped_steps", 0))
        scaler_state = state.get("scaler") or {}
        if self.scaler.is_enabled() and scaler_state:
            self.scaler.load_state_dict(scaler_state)
