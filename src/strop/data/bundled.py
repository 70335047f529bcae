"""Data that ships with strop (nothing is downloaded): handwritten digits, glyphs and shapes.

- :func:`write_digits`: scikit-learn's ``load_digits`` (1,797 real 8x8 scans of handwritten
  digits, UCI "Optical Recognition of Handwritten Digits", values 0-16) as an ImageFolder of PNGs.
- :func:`write_glyphs`: letters and symbols (no digits) rendered in the fonts matplotlib ships,
  randomly slanted, stretched and thickened, then reduced to 8x8 exactly as the digits were
  scanned: a source task for transfer learning to the handwritten digits.
- :func:`write_shapes`: circles, squares and triangles on noisy textured backgrounds, with
  masks, as ``images/`` + ``masks/``.

Both write a ``strop_dataset.json`` manifest last; called again with the same parameters they
return at once, with other parameters they replace the files they wrote before (and only those).
A non-empty folder without a manifest is never written into.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from strop._checks import check_positive, fail

__all__ = ["GLYPH_CHARS", "MANIFEST", "write_digits", "write_glyphs", "write_shapes"]

MANIFEST = "strop_dataset.json"
_VERSION = 1
SHAPE_KINDS = ("circle", "square", "triangle")


def _check_seed_and_size(func: str, seed: int, size: int, *, why: str) -> None:
    check_positive(func, "seed", seed, allow_zero=True, integer=True)
    check_positive(func, "size", size, integer=True)
    if size < 8:
        fail(func, f"size must be >= 8 ({why}); got {size}")


def _save_8x8(pixels: np.ndarray, size: int, file: Path) -> None:
    """Write an 8x8 ``uint8`` scan as a ``size x size`` PNG (bilinear upscaling)."""
    img = Image.fromarray(pixels)
    if size != 8:
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    img.save(file)


def _up_to_date(func: str, root: Path, kind: str, params: dict[str, Any]) -> bool:
    """True when ``root`` already holds this dataset; else clears what an earlier call wrote."""
    manifest = root / MANIFEST
    if manifest.exists():
        try:
            old = json.loads(manifest.read_text())
        except (OSError, ValueError):
            old = None
        if not isinstance(old, dict):
            fail(
                func,
                f"{str(manifest)!r} is not a strop dataset manifest",
                hint="delete it or pick another root",
            )
        if (
            old.get("kind") == kind
            and old.get("version") == _VERSION
            and old.get("params") == params
            and all((root / f).is_file() for f in old.get("files", []))
        ):
            return True
        manifest.unlink()
        for rel in old.get("files", []):
            (root / rel).unlink(missing_ok=True)
        for d in sorted({(root / rel).parent for rel in old.get("files", [])}, reverse=True):
            if d != root and d.is_dir() and not any(d.iterdir()):
                d.rmdir()
    if root.exists() and any(p.name != MANIFEST for p in root.iterdir()):
        fail(
            func,
            f"{str(root)!r} is not empty and was not written by strop",
            hint="pick an empty or new folder; strop never writes into existing data",
        )
    return False


def _finish(root: Path, kind: str, params: dict[str, Any], files: list[str]) -> Path:
    # the manifest goes last and atomically: a crash mid-write leaves no manifest, so the next
    # call rewrites everything
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(
        json.dumps({"kind": kind, "version": _VERSION, "params": params, "files": files}, indent=1)
    )
    os.replace(tmp, root / MANIFEST)
    return root


def _check_root(func: str, root: str | os.PathLike[str]) -> Path:
    if not isinstance(root, (str, os.PathLike)):
        fail(func, f"root must be a path; got {type(root).__name__} {root!r}", exc=TypeError)
    path = Path(root)
    if path.exists() and not path.is_dir():
        fail(func, f"root {str(path)!r} exists and is not a directory")
    return path


def write_digits(
    root: str | os.PathLike[str],
    *,
    digits: Iterable[int] = range(10),
    per_class: int | None = None,
    seed: int = 0,
    size: int = 32,
) -> Path:
    """Write scikit-learn's handwritten digits as ``root/<digit>/<index>.png``; return ``root``.

    Each 8x8 scan (values 0-16) is scaled to 0-255 (``round(v * 255 / 16)``), upscaled to
    ``size x size`` with bilinear interpolation and saved as an 8-bit grayscale PNG; ``<index>``
    is its row in ``load_digits``. Class folders are named ``"0"`` .. ``"9"``.

    Args:
        digits: which digits to write (e.g. ``range(5)`` for a 0-4 source task).
        per_class: images per digit, drawn without replacement by ``seed``; ``None`` writes all
            (174-183 per digit, 1,797 in total).
        seed: selects the ``per_class`` images (``numpy.random.default_rng``).
        size: side of the written images in pixels (>= 8).
    """
    func = "write_digits"
    path = _check_root(func, root)
    try:
        chosen = sorted({int(d) for d in digits})
    except (TypeError, ValueError):
        fail(func, f"digits must be integers in 0..9; got {digits!r}", exc=TypeError)
    if not chosen or chosen[0] < 0 or chosen[-1] > 9:
        fail(func, f"digits must be a non-empty collection of integers in 0..9; got {chosen}")
    if per_class is not None:
        check_positive(func, "per_class", per_class, integer=True)
    _check_seed_and_size(func, seed, size, why="the scans are 8x8")

    params = {"digits": chosen, "per_class": per_class, "seed": seed, "size": size}
    if _up_to_date(func, path, "digits", params):
        return path

    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    images = np.rint(images.reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)
    rng = np.random.default_rng(seed)
    picks: dict[int, np.ndarray] = {}
    for d in chosen:
        idx = np.flatnonzero(labels == d)
        if per_class is not None:
            if per_class > len(idx):
                fail(
                    func,
                    f"per_class={per_class} but digit {d} has only {len(idx)} images",
                    hint="use per_class=None for all",
                )
            idx = np.sort(rng.permutation(idx)[:per_class])
        picks[d] = idx

    path.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    for d, idx in picks.items():
        (path / str(d)).mkdir(exist_ok=True)
        for i in idx:
            rel = f"{d}/{i:04d}.png"
            _save_8x8(images[i], size, path / rel)
            files.append(rel)
    return _finish(path, "digits", params, files)


#: The default glyph classes: 26 capitals, the 16 small letters whose shape differs from their
#: capital once scaled to the same height (c, k, l, o, p, s, v, w, x, z do not), 11 symbols. No
#: digit: the digits are the target task, and its classes must stay new to a glyph-trained model.
GLYPH_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghijmnqrtuy&@#?%$+=<>*"

# fonts in matplotlib's mpl-data/fonts/ttf; the Computer Modern ones (BaKoMa) put other symbols
# at the ASCII punctuation positions, so they draw letters only
_GLYPH_FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
)
_LETTER_ONLY_FONTS = ("cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmti10.ttf")


def glyph_class_name(ch: str) -> str:
    """The folder name of character ``ch``: its code point and Unicode name, e.g.
    ``"0041-latin-capital-letter-a"`` (unique on case-insensitive file systems too)."""
    import unicodedata

    return f"{ord(ch):04x}-" + unicodedata.name(ch).lower().replace(" ", "-")


def _render_glyph(rng: np.random.Generator, ch: str, font: Any) -> np.ndarray:
    """One glyph as the digits were made: a binary 32x32 bitmap, the shape scaled to fill the box
    (aspect kept) and centred, then the count of ink pixels in each 4x4 block -> 8x8 in 0..16."""
    canvas = 96
    layer = Image.new("L", (canvas, canvas), 0)
    # a pen 0-3 px wider than the font's own stroke (the glyph is ~36 px tall here)
    ImageDraw.Draw(layer).text(
        (canvas / 2, canvas / 2),
        ch,
        fill=255,
        font=font,
        anchor="mm",
        stroke_width=int(rng.integers(0, 4)),
        stroke_fill=255,
    )
    # a random slant, rotation and stretch, as different hands write
    angle = np.deg2rad(rng.uniform(-12.0, 12.0))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shear = np.array([[1.0, rng.uniform(-0.3, 0.3)], [0.0, 1.0]])
    a = rot @ shear @ np.diag(rng.uniform(0.75, 1.25, 2))
    inv = np.linalg.inv(a)
    c = np.full(2, canvas / 2)
    off = c - inv @ c
    layer = layer.transform(
        (canvas, canvas),
        Image.Transform.AFFINE,
        (inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1]),
        resample=Image.Resampling.BILINEAR,
    )
    ink = np.asarray(layer) > 127
    ys, xs = np.nonzero(ink)
    box = np.zeros((32, 32), dtype=bool)
    if len(ys) == 0:
        return box.reshape(8, 4, 8, 4).sum(axis=(1, 3))
    shape = Image.fromarray(
        ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.uint8) * 255
    )
    scale = 32 * rng.uniform(0.85, 1.0) / max(shape.size)
    w, h = max(1, round(shape.size[0] * scale)), max(1, round(shape.size[1] * scale))
    shape = shape.resize((w, h), Image.Resampling.BILINEAR)
    y0, x0 = (32 - h) // 2, (32 - w) // 2
    box[y0 : y0 + h, x0 : x0 + w] = np.asarray(shape) > 127
    return box.reshape(8, 4, 8, 4).sum(axis=(1, 3))


def write_glyphs(
    root: str | os.PathLike[str],
    *,
    chars: str = GLYPH_CHARS,
    per_class: int = 100,
    seed: int = 0,
    size: int = 32,
) -> Path:
    """Write rendered characters as ``root/<class>/<index>.png``; return ``root``.

    Each image draws one character of ``chars`` in a random font of those matplotlib ships
    (DejaVu Sans/Mono/Serif and STIX in four styles; for letters also five Computer Modern
    faces), with a random extra stroke width (0-3 px on a ~36 px glyph), rotation (±12°), shear
    (±0.3) and stretch (0.75-1.25 per axis). It is then made the way scikit-learn's digits were
    (UCI optdigits): a binary 32x32 bitmap with the shape scaled to fill the box and centred,
    reduced to 8x8 by counting ink pixels per 4x4 block (0-16), written like
    :func:`write_digits` (``round(v * 255 / 16)``, bilinear to ``size``, 8-bit grayscale). So a
    model trained on glyphs sees the digits' pixel statistics but none of their classes.
    Folders are named by :func:`glyph_class_name` (sorted order = code point order).

    Args:
        chars: the classes, distinct printable characters; digits are allowed but not the default.
        per_class: images per character.
        seed: fixes every random choice (``numpy.random.default_rng``).
        size: side of the written images in pixels (>= 8).
    """
    func = "write_glyphs"
    path = _check_root(func, root)
    if not isinstance(chars, str):
        fail(
            func,
            f"chars must be a string of characters; got {type(chars).__name__} {chars!r}",
            exc=TypeError,
        )
    if (
        len(chars) < 2
        or len(set(chars)) != len(chars)
        or not all(ch.isprintable() and not ch.isspace() for ch in chars)
    ):
        fail(
            func,
            f"chars must hold at least 2 distinct printable, non-space characters; got {chars!r}",
        )
    check_positive(func, "per_class", per_class, integer=True)
    _check_seed_and_size(func, seed, size, why="glyphs are made at 8x8, like the digits")

    params = {"chars": chars, "per_class": per_class, "seed": seed, "size": size}
    if _up_to_date(func, path, "glyphs", params):
        return path

    import matplotlib
    from PIL import ImageFont

    font_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = {
        name: ImageFont.truetype(str(font_dir / name), 48)
        for name in _GLYPH_FONTS + _LETTER_ONLY_FONTS
    }
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    for ch in sorted(chars):
        names = _GLYPH_FONTS + (_LETTER_ONLY_FONTS if ch.isascii() and ch.isalpha() else ())
        folder = glyph_class_name(ch)
        (path / folder).mkdir(exist_ok=True)
        for i in range(per_class):
            counts = _render_glyph(rng, ch, fonts[names[int(rng.integers(len(names)))]])
            rel = f"{folder}/{i:04d}.png"
            _save_8x8(np.rint(counts * (255.0 / 16.0)).astype(np.uint8), size, path / rel)
            files.append(rel)
    return _finish(path, "glyphs", params, files)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random colour field plus noise, ``(size, size, 3)`` in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(0.25, 0.75, 3)
    field = np.zeros((size, size, 3))
    for _ in range(2):
        fy, fx = rng.uniform(1, 6, 2)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * (fy * yy + fx * xx) + phase)
        field += wave[..., None] * rng.uniform(0.05, 0.15, 3)
    return np.clip(base + field + rng.normal(0, 0.05, (size, size, 3)), 0, 1)


def _shape_mask(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    r = rng.uniform(0.1, 0.22) * size
    cy, cx = rng.uniform(r, size - r, 2)
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        corners = 4 if kind == "square" else 3
        angle = rng.uniform(0, 2 * np.pi)
        t = angle + 2 * np.pi * np.arange(corners) / corners
        draw.polygon([(cx + r * np.cos(a), cy + r * np.sin(a)) for a in t], fill=255)
    return np.asarray(layer) > 0


def write_shapes(
    root: str | os.PathLike[str],
    *,
    n: int = 200,
    size: int = 64,
    seed: int = 0,
    num_classes: int = 3,
) -> Path:
    """Write a synthetic segmentation set as ``root/images/NNNN.png`` + ``root/masks/NNNN.png``.

    Each RGB image holds 1-3 filled shapes, each a colour contrasting with a smooth, noisy random
    background, with pixel noise over everything. Masks are 8-bit PNGs of class indices,
    ``num_classes`` counting the background:

    - ``2``: binary, 0 = background, 1 = any shape (circles, squares and triangles are drawn);
    - ``3``: 0 = background, 1 = circle, 2 = square (only those two are drawn);
    - ``4``: 0 = background, 1 = circle, 2 = square, 3 = triangle.

    A later shape covers an earlier one in image and mask alike. ``seed`` fixes everything.
    """
    func = "write_shapes"
    path = _check_root(func, root)
    check_positive(func, "n", n, integer=True)
    check_positive(func, "size", size, integer=True)
    check_positive(func, "seed", seed, allow_zero=True, integer=True)
    if size < 16:
        fail(func, f"size must be >= 16 pixels; got {size}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        fail(
            func,
            f"num_classes must be an int in 2..4; got {type(num_classes).__name__} {num_classes!r}",
            exc=TypeError,
        )
    if num_classes not in (2, 3, 4):
        fail(
            func,
            f"num_classes must be 2 (binary), 3 or 4 (background + shape kinds); got {num_classes}",
        )

    params = {"n": n, "size": size, "seed": seed, "num_classes": num_classes}
    if _up_to_date(func, path, "shapes", params):
        return path

    kinds = SHAPE_KINDS if num_classes == 2 else SHAPE_KINDS[: num_classes - 1]
    rng = np.random.default_rng(seed)
    (path / "images").mkdir(parents=True, exist_ok=True)
    (path / "masks").mkdir(exist_ok=True)
    files: list[str] = []
    for i in range(n):
        image = _texture(rng, size)
        mask = np.zeros((size, size), dtype=np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            k = int(rng.integers(len(kinds)))
            where = _shape_mask(rng, kinds[k], size)
            base = image[where].mean(axis=0) if where.any() else np.full(3, 0.5)
            color = np.clip(base + rng.choice([-1.0, 1.0], 3) * rng.uniform(0.3, 0.5, 3), 0, 1)
            image[where] = color
            mask[where] = 1 if num_classes == 2 else k + 1
        image = np.clip(image + rng.normal(0, 0.04, image.shape), 0, 1)
        name = f"{i:04d}.png"
        Image.fromarray(np.rint(image * 255).astype(np.uint8)).save(path / "images" / name)
        Image.fromarray(mask).save(path / "masks" / name)
        files += [f"images/{name}", f"masks/{name}"]
    return _finish(path, "shapes", params, files)
