"""The tensor decoder (TorchCodec) and the batched normalisation give today's pixels and numbers.

Independent references: PIL's own ``convert("RGB")`` and ``resize``, and the normalisation formula
computed in NumPy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from strop.data import IMAGENET_MEAN, IMAGENET_STD, image_folder
from strop.data import transforms as T

RNG = np.random.default_rng(0)
YY, XX = np.mgrid[0:37, 0:53]
SMOOTH = np.stack([(XX * 4) % 256, (YY * 6) % 256, ((XX + YY) * 3) % 256], -1).astype(np.uint8)


def _noise(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, size=shape).astype(np.uint8)


def _palette_with_transparency() -> Image.Image:
    img = Image.fromarray(_noise(37, 53, 3)).convert("P", palette=Image.Palette.ADAPTIVE)
    img.info["transparency"] = 3
    return img


# (file name, image, save options): every PNG colour type PIL writes, and JPEG's common kinds
CASES = [
    ("rgb.png", lambda: Image.fromarray(_noise(37, 53, 3)), {}),
    ("gray.png", lambda: Image.fromarray(_noise(37, 53)), {}),
    ("gray_alpha.png", lambda: Image.fromarray(_noise(37, 53, 2), "LA"), {}),
    ("rgba.png", lambda: Image.fromarray(_noise(37, 53, 4), "RGBA"), {}),
    ("palette.png", lambda: Image.fromarray(_noise(37, 53, 3)).convert("P"), {}),
    ("palette_trns.png", _palette_with_transparency, {"transparency": 3}),
    ("bilevel.png", lambda: Image.fromarray(_noise(37, 53) > 127), {}),
    ("gray16.png", lambda: Image.fromarray(RNG.integers(0, 65536, (37, 53)).astype(np.uint16)), {}),
    ("rgb.jpg", lambda: Image.fromarray(SMOOTH), {"quality": 90}),
    ("noise.jpeg", lambda: Image.fromarray(_noise(37, 53, 3)), {"quality": 75}),
    ("rgb444.jpg", lambda: Image.fromarray(SMOOTH), {"quality": 90, "subsampling": 0}),
    ("progressive.jpg", lambda: Image.fromarray(SMOOTH), {"progressive": True}),
    ("gray.jpg", lambda: Image.fromarray(SMOOTH[..., 0]), {}),
    ("cmyk.jpg", lambda: Image.fromarray(SMOOTH).convert("CMYK"), {}),
    ("rgb.bmp", lambda: Image.fromarray(_noise(37, 53, 3)), {}),  # PIL path
]


@pytest.mark.parametrize(("name", "make", "options"), CASES, ids=[c[0] for c in CASES])
def test_decode_rgb_equals_pil_convert_rgb(tmp_path, name, make, options):
    path = tmp_path / name
    make().save(path, **options)
    with Image.open(path) as img:
        expected = np.asarray(img.convert("RGB"))
    got = T.decode_rgb(path)
    assert got.dtype == torch.uint8 and got.shape == (3, 37, 53)
    np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), expected)


def test_png_and_jpeg_do_not_go_through_pil(tmp_path, monkeypatch):
    # the speed-up is real only if the tensor decoder runs: PIL must not be touched for these
    paths = [tmp_path / "a.png", tmp_path / "b.jpg"]
    for p in paths:
        Image.fromarray(SMOOTH).save(p)

    def no_pil(*args, **kwargs):
        raise AssertionError("PIL was used for a PNG/JPEG file")

    monkeypatch.setattr(T.Image, "open", no_pil)
    for p in paths:
        assert T.decode_rgb(p).shape == (3, 37, 53)
    with pytest.raises(AssertionError, match="PIL was used"):  # and the guard itself works
        Image.fromarray(SMOOTH).save(tmp_path / "c.bmp")
        T.decode_rgb(tmp_path / "c.bmp")


def test_corrupt_png_is_reported_by_pil(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    with pytest.raises(OSError):  # PIL's UnidentifiedImageError, as before the tensor decoder
        T.decode_rgb(bad)


@pytest.mark.parametrize("size", [(32, 32), (64, 48), (150, 200), (40, 300)])
def test_resize_matches_pil_bilinear_within_one_level(tmp_path, size):
    # torchvision's antialiased bilinear uint8 resize and PIL's Image.resize(BILINEAR) apply the
    # same triangle filter (support widened by the downscale factor), each in fixed point with
    # its own precision: rounding may differ by one grey level, never more. Measured: max 1,
    # at most ~23% of pixels (a 7.5x horizontal upscale of noise), ~0.3% typically.
    src = np.concatenate([_noise(97, 65, 3), np.resize(SMOOTH, (97, 66, 3))], axis=1)
    path = tmp_path / "src.png"
    Image.fromarray(src).save(path)
    expected = np.asarray(
        Image.fromarray(src).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    )
    got = T.load_image(path, size).permute(1, 2, 0).numpy()
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert got.shape == expected.shape
    assert diff.max() <= 1
    assert diff.mean() <= 0.25


def _folder(tmp_path, n=12):
    for i in range(n):
        cls = tmp_path / "data" / f"c{i % 2}"
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_noise(20, 24, 3)).save(cls / f"{i}.png")
    return tmp_path / "data"


def test_batched_normalisation_is_the_per_item_result_bit_for_bit(tmp_path):
    train, _, _ = image_folder(
        _folder(tmp_path), image_size=(16, 18), augment="standard", val_fraction=0.2
    )
    idx = list(range(len(train)))
    torch.manual_seed(3)
    one_by_one = [train[i] for i in idx]
    torch.manual_seed(3)
    batched = train.__getitems__(idx)
    assert len(batched) == len(one_by_one)
    for (a, ya), (b, yb) in zip(one_by_one, batched, strict=True):
        assert a.dtype == b.dtype == torch.float32 and ya == yb
        assert torch.equal(a, b)
    assert not train._normalize.deferred  # switched back on


def test_loader_batch_equals_the_formula(tmp_path):
    # independent of torchvision: (pixel / 255 - mean) / std in float32 NumPy, from PIL's pixels
    train, _, _ = image_folder(_folder(tmp_path), image_size=(20, 24), val_fraction=0.2)
    x, y = next(iter(DataLoader(train, batch_size=len(train), shuffle=False)))
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p, _ in train.samples])
    mean, std = np.float32(IMAGENET_MEAN), np.float32(IMAGENET_STD)
    expected = ((pixels.astype(np.float32) / np.float32(255) - mean) / std).transpose(0, 3, 1, 2)
    assert x.shape == expected.shape and y.tolist() == train.targets
    np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=2e-6)  # float32 rounding only


def test_custom_float_augment_is_normalised_one_by_one(tmp_path):
    # an augmentation that returns floats in [0, 1] cannot be stacked as uint8: per-item path
    def to_float(image):
        return image.float() / 255

    train, _, _ = image_folder(
        _folder(tmp_path), image_size=(16, 16), augment=to_float, val_fraction=0.2
    )
    batched = train.__getitems__([0, 1, 2])
    for i, (img, _) in enumerate(batched):
        assert torch.equal(img, train[i][0])
    src = train.load(0).float() / 255
    assert torch.allclose(batched[0][0], T.normalization(IMAGENET_MEAN, IMAGENET_STD)(src))
    assert torch.equal(src, train.load(0).float() / 255)  # the augment's output was not modified


def test_a_failing_item_leaves_normalisation_on(tmp_path):
    root = _folder(tmp_path)
    train, _, _ = image_folder(root, image_size=8, val_fraction=0.2)
    train.samples[1] = (root / "missing.png", 0)
    with pytest.raises(ValueError, match="cannot decode"):
        train.__getitems__([0, 1])
    assert not train._normalize.deferred
    assert train[0][0].dtype == torch.float32


def test_make_loader_takes_the_stacked_batch_as_it_is(tmp_path):
    """strop's loaders collate a folder batch without stacking its views again: the same tensors
    as torch's default_collate of the items read one by one (and the formula test above)."""
    from torch.utils.data import default_collate

    from strop.data import make_loader
    from strop.data.loaders import collate_batch

    train, _, _ = image_folder(_folder(tmp_path), image_size=(12, 10), val_fraction=0.2)
    x, y = next(iter(make_loader(train, batch_size=5, shuffle=False, seed=0, num_workers=0)))
    want_x, want_y = default_collate([train[i] for i in range(5)])
    assert torch.equal(x, want_x) and torch.equal(y, want_y) and y.dtype == torch.int64
    items = train.__getitems__([4, 1, 3])
    got = collate_batch(items)
    assert got[0] is items.images  # no copy
    assert torch.equal(got[0], torch.stack([train[i][0] for i in (4, 1, 3)]))
    assert got[1].tolist() == [train.targets[i] for i in (4, 1, 3)]
    plain = collate_batch([(torch.ones(2), 1), (torch.zeros(2), 0)])  # anything else: default
    assert torch.equal(plain[0], torch.tensor([[1.0, 1.0], [0.0, 0.0]]))


def _formula(pixels_nhwc: np.ndarray) -> np.ndarray:
    """(pixel / 255 - mean) / std in float32 NumPy, as NCHW."""
    mean, std = np.float32(IMAGENET_MEAN), np.float32(IMAGENET_STD)
    out = (pixels_nhwc.astype(np.float32) / np.float32(255) - mean) / std
    return out.transpose(0, 3, 1, 2)


@pytest.mark.parametrize("source", ["nhwc", "nchw"])
@pytest.mark.parametrize("fmt", ["channels_last", "contiguous"])
def test_normalising_a_batch_in_either_layout_gives_the_same_numbers(source, fmt):
    # against torchvision's v2 pipeline image by image (bit for bit) and the NumPy formula
    from torchvision.transforms import v2

    pixels = _noise(5, 7, 9, 3)  # B, H, W, C: W*C rows that are not a multiple of a vector
    nhwc = torch.from_numpy(pixels)
    batch = nhwc.permute(0, 3, 1, 2)  # a channels_last view
    if source == "nchw":
        batch = batch.contiguous()
    memory_format = getattr(torch, fmt if fmt == "channels_last" else "contiguous_format")
    norm = T.normalization(IMAGENET_MEAN, IMAGENET_STD)
    got = norm.apply(batch, memory_format)
    assert got.dtype == torch.float32 and got.shape == (5, 3, 7, 9)
    assert got.is_contiguous(memory_format=memory_format)
    ref = v2.Compose(
        [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    for k in range(5):
        assert torch.equal(got[k], ref(batch[k].contiguous()))
    np.testing.assert_allclose(got.numpy(), _formula(pixels), rtol=0, atol=2e-6)
    assert torch.equal(nhwc, torch.from_numpy(pixels))  # the uint8 input is left as it was


def test_decoder_views_stack_into_a_channels_last_batch():
    from strop.data._dataset import _stack_uint8

    views = [torch.from_numpy(_noise(6, 4, 3)).permute(2, 0, 1) for _ in range(3)]  # CHW of HWC
    stacked = _stack_uint8(views)
    assert stacked.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(stacked, torch.stack([v.contiguous() for v in views]))
    plain = [v.contiguous() for v in views]  # contiguous CHW images: an NCHW batch
    assert _stack_uint8(plain).is_contiguous() and torch.equal(_stack_uint8(plain), stacked)


@pytest.mark.parametrize("cache", [None, "memory"])
def test_folder_batches_come_in_the_layout_the_trainer_asks_for(tmp_path, cache):
    from strop.data import make_loader

    train, _, _ = image_folder(
        _folder(tmp_path), image_size=(20, 24), val_fraction=0.2, cache=cache
    )
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p, _ in train.samples])
    assert train.batch_memory_format == torch.contiguous_format  # the default: NCHW
    for fmt in (torch.channels_last, torch.contiguous_format, torch.channels_last):
        train.batch_memory_format = fmt  # the third pass reads the memory cache, if any
        x, y = next(
            iter(make_loader(train, batch_size=len(train), shuffle=False, seed=0, num_workers=0))
        )
        assert x.is_contiguous(memory_format=fmt) and y.tolist() == train.targets
        np.testing.assert_allclose(x.numpy(), _formula(pixels), rtol=0, atol=2e-6)
        assert torch.equal(x, torch.stack([train[i][0] for i in range(len(train))]))  # per item
