"""Decoding, resizing, augmentation and normalisation, split in two stages.

The *load* stage (``load_image`` / ``load_mask``) is deterministic: decode to RGB (PNG and JPEG
with TorchCodec's decoders, torchvision's successor for image decoding, straight from
the file's bytes to a ``uint8 (3, H, W)`` tensor; other formats and 16-bit PNGs with PIL),
resize to the target size, return a ``uint8`` tensor. Its output is what the uint8 cache
(:mod:`strop.data.cache`) stores. The *finish* stage runs on every access: optional random
augmentation (torchvision transforms v2, on the resized uint8 tensor), then ``ToDtype(float32,
scale=True)`` and ``Normalize(mean, std)`` — per item, or once per batch when a DataLoader asks
a folder dataset for a whole batch (``__getitems__``; the same numbers). Because augmentation
runs after the resize, a cached and an uncached dataset produce the same tensors, and with
``augment=False`` bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from strop._checks import check_choice, fail

__all__ = [
    "AUGMENTATIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TENSOR_DECODED_SUFFIXES",
    "Normalization",
    "augmentation",
    "decode_rgb",
    "load_image",
    "load_image_tensor",
    "load_mask",
    "normalization",
    "resolve_size",
]

#: torchvision's ImageNet statistics, the normalisation of every torchvision ``Weights`` enum.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Names accepted by ``augment=`` (``True`` means ``"standard"``, ``False`` means ``"none"``).
AUGMENTATIONS = (
    "none",
    "flip",
    "standard",
    "crop",
    "trivialaugment",
    "randaugment",
    "autoaugment",
    "augmix",
)

Augment = bool | str | Callable[..., object]


def resolve_size(func: str, image_size: int | Sequence[int]) -> tuple[int, int]:
    """``image_size`` as ``(H, W)``: an int ``s`` means the square ``(s, s)``."""
    if isinstance(image_size, bool):
        fail(
            func,
            f"image_size must be an int or (height, width); got bool {image_size!r}",
            exc=TypeError,
        )
    if isinstance(image_size, int):
        size = (image_size, image_size)
    elif (
        isinstance(image_size, Sequence)
        and len(image_size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) for s in image_size)
    ):
        size = (int(image_size[0]), int(image_size[1]))
    else:
        fail(
            func,
            f"image_size must be an int or a (height, width) pair of ints; got {image_size!r}",
            exc=TypeError,
        )
    if min(size) < 1:
        fail(func, f"image_size must be positive; got {image_size!r}")
    return size


#: Suffixes decoded by TorchCodec's ``decode_png`` / ``decode_jpeg`` (libpng / libjpeg-turbo); their pixels are
#: pinned against PIL's ``convert("RGB")`` by tests (identical for 8-bit PNG in every mode and
#: for JPEG: grayscale, RGB, CMYK, progressive). Anything else is read with PIL.
TENSOR_DECODED_SUFFIXES = (".png", ".jpg", ".jpeg")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
_decoders: dict[bytes, Callable[..., Tensor]] | None = None


def _tensor_decoders() -> dict[bytes, Callable[..., Tensor]]:
    """TorchCodec's ``decode_png`` / ``decode_jpeg`` by file signature, imported on first use
    (~0.1 s, not at ``import strop``); empty when TorchCodec is missing (PIL reads everything)."""
    global _decoders
    if _decoders is None:
        try:
            from torchcodec.decoders import ImageReadMode, decode_jpeg, decode_png
        except (
            Exception
        ):  # pragma: no cover - missing or unloadable (its libraries): PIL still works
            _decoders = {}
        else:
            rgb = ImageReadMode.RGB
            _decoders = {
                _PNG_SIGNATURE: lambda data: decode_png(data, mode=rgb, output_dtype="auto"),
                _JPEG_SIGNATURE: lambda data: decode_jpeg(data, mode=rgb, output_dtype="auto"),
            }
    return _decoders


def decode_rgb(path: str | Path) -> Tensor:
    """``path`` decoded to ``uint8 (3, H, W)`` RGB, not resized.

    PNG and JPEG files (by suffix, then by signature) are decoded by TorchCodec's
    ``decode_png`` / ``decode_jpeg`` in ``RGB`` mode (the decoders torchvision 0.29 deprecated
    its own ``torchvision.io`` in favour of), from bytes read here: no PIL object, no NumPy copy,
    about half the time of PIL for small files (the format-detecting ``decode_image`` wrapper
    costs as much again as the decoding of a small PNG). PIL's ``convert("RGB")`` (alpha
    dropped, palettes expanded, grayscale repeated) reads everything else, and any file the
    tensor decoder refuses or returns with more than 8 bits (16-bit PNG), so behaviour and error
    messages are unchanged there.
    """
    name = os.fspath(path)
    if name.lower().endswith(TENSOR_DECODED_SUFFIXES) and (decoders := _tensor_decoders()):
        try:
            with open(name, "rb") as f:
                data = bytearray(f.read())  # writable: torch.frombuffer without a warning
        except OSError:
            data = bytearray()  # PIL raises the error below
        head = bytes(data[:8])
        decode = decoders.get(_PNG_SIGNATURE if head == _PNG_SIGNATURE else head[:3])
        if decode is not None:
            try:
                chw = decode(torch.frombuffer(data, dtype=torch.uint8))
            except (ValueError, RuntimeError):
                pass  # corrupt or unusual file: PIL decides (and names the problem)
            else:
                if chw.dtype == torch.uint8 and chw.ndim == 3 and chw.shape[0] == 3:
                    return chw
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def load_image(path: str | Path, size: tuple[int, int]) -> Tensor:
    """Decode ``path`` to a ``uint8`` tensor ``(3, H, W)`` resized to ``size=(H, W)``.

    Grayscale, palette and RGBA files become 3-channel RGB (as PIL ``convert("RGB")``; alpha is
    dropped): see :func:`decode_rgb`. When no resize is needed the tensor may be a strided
    (channels-last) view; its values are what counts, and every consumer copies it. The resize is bilinear with antialiasing (torchvision
    ``resize`` on the ``uint8`` tensor) and does not keep the aspect ratio: every image is
    stretched to ``size`` so that batches stack. It matches PIL's ``Image.resize(BILINEAR)``
    within one grey level (both apply the same triangle filter widened by the downscale factor,
    in fixed point of different precision; pinned by a test).
    """
    chw = decode_rgb(path)
    if tuple(chw.shape[1:]) == size:
        # TorchCodec's tensor is a CHW view of its HWC buffer: left as it is, the one transposing
        # copy happens where it is needed anyway (the batch stack, the float conversion, the
        # cache's store) instead of an extra one here
        return chw
    return TF.resize(chw, list(size), interpolation=v2.InterpolationMode.BILINEAR, antialias=True)


def read_mask_array(path: str | Path, *, func: str = "load_mask") -> np.ndarray:
    """The class indices of a single-channel mask file as a 2-D integer array (no resize).

    Modes ``L``, ``P`` (palette indices, as in Pascal VOC), ``1``, ``I`` and ``I;16`` are accepted;
    a colour mask (``RGB``, ``RGBA``, ``LA``) raises ``ValueError`` naming the file.
    """
    with Image.open(path) as img:
        if img.mode not in ("L", "P", "1", "I", "I;16", "I;16B", "I;16L"):
            fail(
                func,
                f"mask {str(path)!r} must be a single-channel image of class indices (PIL mode L, P, "
                f"1, I or I;16); got mode {img.mode!r}",
                hint="save masks as 8-bit grayscale PNGs whose pixel values are class indices",
            )
        arr = np.asarray(img)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr


def load_mask(path: str | Path, size: tuple[int, int]) -> Tensor:
    """Decode a mask to an integer tensor ``(H, W)`` resized to ``size`` with nearest-neighbour.

    Values are never interpolated, so the resized mask holds only values of the original (class
    indices and ``ignore_index`` alike). The dtype is ``uint8`` when every value fits, else
    ``int32``; datasets convert to ``int64`` on access. ``NEAREST_EXACT`` (pixel-centre aligned,
    like the bilinear image resize) is used rather than torch's legacy ``NEAREST``.
    """
    arr = read_mask_array(path)
    dtype = np.uint8 if arr.size == 0 or (arr.min() >= 0 and arr.max() <= 255) else np.int32
    mask = torch.from_numpy(arr.astype(dtype, copy=True))
    if tuple(mask.shape) == size:
        return mask
    return TF.resize(mask[None], list(size), interpolation=v2.InterpolationMode.NEAREST_EXACT)[0]


class Normalization:
    """``uint8`` image(s) -> float32 in [0, 1] -> ``(x - mean) / std`` per channel.

    torchvision's ``to_dtype(scale=True)`` and ``normalize``, called directly: the same numbers
    as ``v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])`` (pinned
    by a test) at well under half its per-image cost. Works on one image ``(3, H, W)`` or a batch
    ``(B, 3, H, W)`` (on any device); the arithmetic is elementwise, so normalising a stacked
    batch gives bit for bit the images normalised one by one.

    ``deferred``: while set, calls return the image unchanged — a folder dataset sets it to
    collect a batch of ``uint8`` images and normalise them in one call (``__getitems__``).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = list(mean), list(std)
        self.deferred = False

    def __call__(self, image: Tensor) -> Tensor:
        if self.deferred:
            return image
        return self.apply(image)

    def apply(
        self, image: Tensor, memory_format: torch.memory_format = torch.contiguous_format
    ) -> Tensor:
        """Normalise now, whatever ``deferred`` says. A ``uint8`` batch ``(B, C, H, W)`` comes
        back in ``memory_format`` (the model's: the trainer then has no float batch to lay out
        again); one image, and a float input, as :meth:`__call__` returns them."""
        if image.dtype == torch.uint8:
            wants_cl = image.dim() == 4 and memory_format == torch.channels_last
            if (
                wants_cl
                and image.shape[1] == len(self.mean) == len(self.std)
                and all(self.std)  # a zero std: normalize's own error below
                and image.permute(0, 2, 3, 1).is_contiguous()
            ):
                return self._nhwc(image)
            # torchvision's to_dtype(float32, scale=True) is image.to(float32).mul_(1 / 255); here
            # the same arithmetic into a contiguous tensor (a decoder's strided view is laid out
            # in the same pass), then its sub_/div_ in place on that new tensor
            scaled = image.to(torch.float32, memory_format=torch.contiguous_format).mul_(1.0 / 255)
            out = TF.normalize(scaled, self.mean, self.std, inplace=True)
            # an NCHW batch (e.g. from the sample cache) wanted in channels_last: laid out once,
            # in float (a transposing uint8 copy is no cheaper on a CPU)
            return out.contiguous(memory_format=torch.channels_last) if wants_cl else out
        # a float input (a custom augmentation's) is never modified
        return TF.normalize(TF.to_dtype(image, torch.float32, scale=True), self.mean, self.std)

    def _nhwc(self, batch: Tensor) -> Tensor:
        """A channels_last ``uint8`` batch normalised into a channels_last float batch: the same
        operations as :meth:`apply` on each element (the same numbers, bit for bit), run on the
        ``(B, H, W·C)`` rows of the NHWC buffer with the per-channel constants repeated along a
        row. ``normalize``'s ``mean[:, None, None]`` broadcast over a channels_last tensor is a
        slow strided loop: 0.60 ms against 0.09 ms for a batch of 32 images of 64×64
        (AVX512-BF16 EPYC, 2026-12-04)."""
        b, c, h, w = batch.shape
        scaled = batch.permute(0, 2, 3, 1).to(torch.float32).mul_(1.0 / 255)
        rows = scaled.view(b, h, w * c)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=batch.device).repeat(w)
        std = torch.tensor(self.std, dtype=torch.float32, device=batch.device).repeat(w)
        rows.sub_(mean).div_(std)
        return scaled.permute(0, 3, 1, 2)

    def __repr__(self) -> str:
        return f"Normalization(mean={self.mean}, std={self.std})"


def normalization(mean: Sequence[float], std: Sequence[float]) -> Normalization:
    """The :class:`Normalization` for ``mean`` and ``std``."""
    return Normalization(mean, std)


def _check_augment(func: str, augment: Augment) -> str | Callable[..., object]:
    if augment is True:
        return "standard"
    if augment is False or augment is None:
        return "none"
    if isinstance(augment, str):
        if augment not in AUGMENTATIONS:
            check_choice(func, "augment", augment, AUGMENTATIONS)
        return augment
    if callable(augment):
        return augment
    fail(
        func,
        f"augment must be a bool, one of {', '.join(map(repr, AUGMENTATIONS))} or a callable; "
        f"got {type(augment).__name__} {augment!r}",
        exc=TypeError,
    )


def _check_jitter(
    func: str, color_jitter: float | Sequence[float] | None
) -> tuple[float, ...] | None:
    if color_jitter is None:
        return None
    if isinstance(color_jitter, (int, float)) and not isinstance(color_jitter, bool):
        values: tuple[float, ...] = (float(color_jitter),) * 3
    elif (
        isinstance(color_jitter, Sequence)
        and len(color_jitter) in (3, 4)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in color_jitter)
    ):
        values = tuple(float(v) for v in color_jitter)
    else:
        fail(
            func,
            "color_jitter must be a number (brightness = contrast = saturation) or "
            f"(brightness, contrast, saturation[, hue]); got {color_jitter!r}",
            exc=TypeError,
        )
    if min(values) < 0 or (len(values) == 4 and values[3] > 0.5):
        fail(func, f"color_jitter values must be >= 0 (hue <= 0.5); got {color_jitter!r}")
    return values if any(values) else None


class _Paired:
    """Segmentation augmentation: ``geometric`` moves the image and its ``tv_tensors.Mask``
    together; ``photometric`` changes the image only (colour, erasing)."""

    def __init__(self, geometric: v2.Transform | None, photometric: v2.Transform | None) -> None:
        self.geometric = geometric
        self.photometric = photometric

    def __call__(self, image: Tensor, mask: Tensor | None = None) -> object:
        if self.geometric is not None:
            image, mask = (
                self.geometric(image, mask) if mask is not None else (self.geometric(image), None)
            )
        if self.photometric is not None:
            image = self.photometric(image)
        return image if mask is None else (image, mask)

    def __repr__(self) -> str:
        return f"_Paired(geometric={self.geometric!r}, photometric={self.photometric!r})"


def augmentation(
    func: str,
    augment: Augment,
    size: tuple[int, int],
    *,
    task: str = "classification",
    hflip: bool = True,
    color_jitter: float | Sequence[float] | None = None,
    random_erasing: float = 0.0,
) -> Callable[..., object] | None:
    """The random training transform for ``augment`` (``None`` when there is none).

    Presets (torchvision transforms v2 only), applied to the resized ``uint8`` image:

    - ``"none"`` (``False``): no augmentation (unless ``color_jitter``/``random_erasing`` is set).
    - ``"flip"``: ``RandomHorizontalFlip()`` only.
    - ``"standard"`` (``True``): ``RandomResizedCrop(size, scale=(0.7, 1.0))`` and
      ``RandomHorizontalFlip()`` — the usual fine-tuning recipe, milder than ImageNet's
      ``scale=(0.08, 1)`` because the image is already resized to the model's input.
    - ``"crop"``: the crop only, no flip — the preset for digits, text and anything a mirror
      changes (the same as ``"standard"`` with ``hflip=False``).
    - ``"trivialaugment"`` / ``"randaugment"`` / ``"autoaugment"`` / ``"augmix"``: ``"standard"``
      followed by ``TrivialAugmentWide()``, ``RandAugment()`` (2 ops, magnitude 9),
      ``AutoAugment(IMAGENET)`` or ``AugMix()`` at torchvision's defaults (timm's order: crop,
      flip, auto-augment, then erasing). Classification only: their geometric ops (shear,
      rotate, translate) do not move a ``tv_tensors.Mask`` in torchvision, so segmentation
      refuses them.
    - a callable: applied as is to the ``uint8`` image tensor (classification) or to
      ``(tv_tensors.Image, tv_tensors.Mask)`` (segmentation); it is treated as random.

    Options: ``hflip=False`` drops the flip from every preset; ``color_jitter`` adds
    ``ColorJitter(brightness, contrast, saturation[, hue])`` (a number ``s`` means ``(s, s, s)``,
    timm's ``--color-jitter``); ``random_erasing=p`` adds ``RandomErasing(p, value=0)`` last
    (the erased box is black in the ``uint8`` image, i.e. ``-mean/std`` after normalisation).

    Segmentation (``task="segmentation"``): the geometric part (crop, flip) is applied to the
    image and the mask together (nearest resampling for the mask), the photometric part (colour
    jitter, erasing) to the image only. Randomness comes from torch's global generator, so the
    output is a function of the seed (the loader reseeds it per epoch and worker).
    """
    kind = _check_augment(func, augment)
    check_choice(func, "task", task, ("classification", "segmentation"))
    if not isinstance(hflip, bool):
        fail(func, f"hflip must be a bool; got {type(hflip).__name__} {hflip!r}", exc=TypeError)
    jitter = _check_jitter(func, color_jitter)
    if (
        isinstance(random_erasing, bool)
        or not isinstance(random_erasing, (int, float))
        or not 0 <= random_erasing <= 1
    ):
        fail(func, f"random_erasing must be a probability in [0, 1]; got {random_erasing!r}")
    if callable(kind):
        return kind
    if task == "segmentation" and kind in _POLICIES:
        fail(
            func,
            f"augment={kind!r} is for classification only: torchvision applies its shear/rotate/"
            "translate ops to the image but cannot apply them to a tv_tensors.Mask",
            hint="use augment='standard' (or 'crop') with color_jitter for segmentation",
        )
    geometric: list[v2.Transform] = []
    if kind in ("standard", "crop", *_POLICIES):
        geometric.append(v2.RandomResizedCrop(list(size), scale=(0.7, 1.0), antialias=True))
    if kind in ("flip", "standard", *_POLICIES) and hflip:
        geometric.append(v2.RandomHorizontalFlip())
    photometric: list[v2.Transform] = []
    if kind in _POLICIES:
        photometric.append(_POLICIES[kind]())
    if jitter is not None:
        photometric.append(v2.ColorJitter(*jitter))
    if random_erasing > 0:
        photometric.append(v2.RandomErasing(p=float(random_erasing), value=0))
    if not geometric and not photometric:
        return None
    if task == "classification":
        return v2.Compose(geometric + photometric)
    return _Paired(
        v2.Compose(geometric) if geometric else None,
        v2.Compose(photometric) if photometric else None,
    )


_POLICIES: dict[str, Callable[[], v2.Transform]] = {
    "trivialaugment": v2.TrivialAugmentWide,
    "randaugment": v2.RandAugment,
    "autoaugment": v2.AutoAugment,
    "augmix": v2.AugMix,
}


def as_tv(
    image: Tensor, mask: Tensor | None = None
) -> tuple[tv_tensors.Image, tv_tensors.Mask | None]:
    """Wrap tensors so that v2 transforms know which is the image and which the mask."""
    return tv_tensors.Image(image), (None if mask is None else tv_tensors.Mask(mask))


def load_image_tensor(
    path: str | Path,
    *,
    image_size: int | Sequence[int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """One image file as a model input: float32 ``(3, H, W)``, normalised like ``val_ds`` items.

    The same steps as an un-augmented :class:`~strop.data.ImageFolderDataset` item (decode, RGB,
    resize, scale, normalise), for prediction on single files. Raises ``ValueError`` naming the
    file when it cannot be decoded.
    """
    size = resolve_size("load_image_tensor", image_size)
    if not Path(path).is_file():
        fail("load_image_tensor", f"image {str(path)!r} does not exist or is not a file")
    try:
        image = load_image(path, size)
    except Exception as exc:
        fail("load_image_tensor", f"cannot decode {str(path)!r}: {type(exc).__name__}: {exc}")
    return normalization(mean, std)(image)
