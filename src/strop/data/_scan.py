"""Scanning and validating image folders: which files are images, which are readable, how a root
is laid out, and how a folder without a validation split is split.

Shared by :mod:`strop.data.classification` and :mod:`strop.data.segmentation`; the policy is in
``docs/data.md``.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS

from strop._checks import check_positive, fail

__all__ = [
    "IGNORED_SUFFIXES",
    "IMAGE_EXTENSIONS",
    "LOSSY_SUFFIXES",
    "MAX_LISTED",
    "VAL_FOLDERS",
    "BadFilesWarning",
    "CacheSpec",
    "check_cache",
    "check_common",
    "check_image_file",
    "check_root",
    "check_stats",
    "common_size",
    "list_files",
    "listing",
    "mark_unsupported",
    "report_bad",
    "split_indices",
    "split_layout",
    "validate",
]

#: Extensions read as images (torchvision's ``IMG_EXTENSIONS``), case-insensitive.
IMAGE_EXTENSIONS: tuple[str, ...] = tuple(IMG_EXTENSIONS)
#: Files that are clearly not data (notes, labels, manifests, OS droppings): ignored silently.
#: Hidden files and folders (name starting with ``.``) are ignored too. Any other extension is
#: reported as a bad file.
IGNORED_SUFFIXES: frozenset[str] = frozenset(
    {".txt", ".md", ".json", ".csv", ".tsv", ".yaml", ".yml", ".xml", ".ini", ".log", ".db"}
)
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".webp")
MAX_LISTED = 100

CacheSpec = str | os.PathLike[str] | None


class BadFilesWarning(UserWarning):
    """Unreadable or non-image files were skipped; ``.files`` maps each path to the reason."""

    def __init__(self, message: str, files: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.files: dict[str, str] = dict(files or {})


def list_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """Image candidates and unsupported files under ``folder`` (recursive, sorted, no hidden)."""
    images: list[Path] = []
    other: list[Path] = []
    # (device, inode) of the folders walked and of folder's ancestors: a symlink back to one of
    # them is a loop (a/loop -> .. would list the data again and again), so it is not followed
    seen = {_dir_id(p) for p in folder.resolve().parents}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        key = _dir_id(Path(dirpath))
        if key in seen:  # reached again through a symlink: walked already
            dirnames[:] = []
            continue
        seen.add(key)
        # torchvision counts e.g. `.ipynb_checkpoints` as data; hidden folders are never data here
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            suffix = os.path.splitext(name)[1].lower()
            path = Path(dirpath) / name
            if suffix in IMAGE_EXTENSIONS:
                images.append(path)
            elif suffix not in IGNORED_SUFFIXES:
                other.append(path)
    return images, other


def _dir_id(path: Path) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)
    return (st.st_dev, st.st_ino)


def check_image_file(path: Path) -> tuple[str | None, tuple[int, int] | None]:
    """``(reason, (width, height))``: reason is ``None`` for a readable image."""
    try:
        if path.stat().st_size == 0:
            return "zero-byte file", None
        with warnings.catch_warnings():
            # PIL warns above Image.MAX_IMAGE_PIXELS and refuses above twice that; both refused
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                size = img.size
                img.verify()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return f"refused: decompression bomb ({exc})", None
    except UnidentifiedImageError:
        return "not an image", None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error ...
        return f"corrupt or truncated ({type(exc).__name__}: {exc})", None
    if size[0] == 0 or size[1] == 0:
        return f"empty image ({size[0]}x{size[1]})", None
    return None, size


#: bump when what :func:`check_image_file` accepts changes: earlier verdicts are then not reused
_VERDICT_VERSION = 1


def _verdict_memo(paths: Sequence[Path]) -> tuple[Path, str] | None:
    """``(memo file, stamp)`` for this list of files: the file is named by the list of paths, the
    stamp hashes each file's size, modification time and inode (and PIL's version and bomb
    limit), so a file that changes, appears or goes makes the stored verdicts stale. ``None``
    when a file cannot be stat'ed (``check_image_file`` names it) or there are no files."""
    import hashlib

    from strop._cache import user_cache_dir

    if not paths:
        return None
    names = hashlib.sha256()
    # PIL's version and its decompression-bomb limit decide verdicts too
    stamp = hashlib.sha256(
        f"{_VERDICT_VERSION} {Image.__version__} {Image.MAX_IMAGE_PIXELS}".encode()
    )
    for p in paths:
        name = os.path.abspath(p)
        try:
            st = os.stat(name)
        except OSError:
            return None
        names.update(name.encode("utf-8", "surrogateescape") + b"\0")
        stamp.update(f"{st.st_size} {st.st_mtime_ns} {st.st_ino}\0".encode())
    return user_cache_dir("verified") / f"{names.hexdigest()[:32]}.json", stamp.hexdigest()


def _read_memo(
    memo: tuple[Path, str] | None, paths: Sequence[Path]
) -> tuple[dict[Path, tuple[int, int]], dict[Path, str]] | None:
    import json

    if memo is None:
        return None
    try:
        stored = json.loads(memo[0].read_text())
        if stored.get("stamp") != memo[1] or len(stored["verdicts"]) != len(paths):
            return None
        good: dict[Path, tuple[int, int]] = {}
        bad: dict[Path, str] = {}
        for p, (reason, w, h) in zip(paths, stored["verdicts"], strict=True):
            if reason is None:
                good[p] = (int(w), int(h))
            else:
                bad[p] = str(reason)
        return good, bad
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # missing, unreadable or not ours: verify again


def _write_memo(
    memo: tuple[Path, str] | None,
    paths: Sequence[Path],
    good: dict[Path, tuple[int, int]],
    bad: dict[Path, str],
) -> None:
    import json

    if memo is None:
        return
    verdicts = [[None, *good[p]] if p in good else [bad[p], 0, 0] for p in paths]
    path = memo[0]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"stamp": memo[1], "verdicts": verdicts}))
        os.replace(tmp, path)  # whole or not at all: a reader never sees half a file
    except OSError:  # a read-only cache folder costs the next run the check
        with contextlib.suppress(OSError):
            tmp.unlink()


def validate(
    paths: Sequence[Path], *, reuse: bool = True
) -> tuple[dict[Path, tuple[int, int]], dict[Path, str]]:
    """``(sizes of the readable files, reasons for the others)``, both keyed by path.

    Every file is opened and verified by PIL (:func:`check_image_file`, ~0.1 ms a file). The
    verdicts are kept under the user's cache folder (``$STROP_CACHE/verified``, else
    ``~/.cache/strop/verified``), stamped with every file's size, modification time and inode:
    ``reuse`` takes them when no file changed, appeared or went since (one ``stat`` a file), as
    Ultralytics reuses its ``labels.cache``. A cache folder that cannot be written only means the
    next run checks again.
    """
    memo = _verdict_memo(paths) if reuse else None
    known = _read_memo(memo, paths)
    if known is not None:
        return known
    good: dict[Path, tuple[int, int]] = {}
    bad: dict[Path, str] = {}
    for p in paths:
        reason, size = check_image_file(p)
        if reason is None:
            assert size is not None
            good[p] = size
        else:
            bad[p] = reason
    _write_memo(memo, paths, good, bad)
    return good, bad


def mark_unsupported(bad: dict[Path, str], other: Sequence[Path]) -> None:
    """Add the files of an unsupported type to ``bad`` (in place), with the reason."""
    for p in other:
        bad[p] = f"unsupported extension {p.suffix!r}" if p.suffix else "no extension"


def listing(items: dict[Path, str] | Sequence[Path], root: Path) -> str:
    """Paths relative to ``root`` (with reasons for a dict), comma-separated, at most 100."""

    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(root))
        except ValueError:
            return str(p)

    if isinstance(items, dict):
        lines = [f"{rel(p)} ({why})" for p, why in items.items()]
    else:
        lines = [rel(p) for p in items]
    more = len(lines) - MAX_LISTED
    text = ", ".join(lines[:MAX_LISTED])
    return text + (f", ... and {more} more" if more > 0 else "")


def report_bad(func: str, root: Path, bad: dict[Path, str], strict: bool) -> None:
    """Raise (``strict``) or warn once with :class:`BadFilesWarning`, attributed to the caller of
    the public builder that calls this (``stacklevel=3``)."""
    if not bad:
        return
    n = len(bad)
    what = f"{n} unreadable or non-image file{'s' if n > 1 else ''} under {str(root)!r}"
    text = listing(bad, root)
    if strict:
        fail(
            func,
            f"{what}: {text}",
            hint="remove or replace them, or pass strict=False to skip them with a warning",
        )
    warnings.warn(
        BadFilesWarning(
            f"{func}: skipped {what}: {text}. Pass strict=True to make this an error.",
            {str(p): why for p, why in bad.items()},
        ),
        stacklevel=3,
    )


def check_root(func: str, root: str | os.PathLike[str]) -> Path:
    if not isinstance(root, (str, os.PathLike)):
        fail(func, f"root must be a path; got {type(root).__name__} {root!r}", exc=TypeError)
    path = Path(root)
    if not path.exists():
        fail(func, f"data folder {str(path)!r} does not exist")
    if not path.is_dir():
        fail(func, f"data folder {str(path)!r} is not a directory")
    return path


def check_common(func: str, val_fraction: float, seed: int) -> None:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
        fail(
            func,
            f"val_fraction must be a number in [0, 1); got {type(val_fraction).__name__} {val_fraction!r}",
            exc=TypeError,
        )
    if not 0 <= val_fraction < 1:
        fail(func, f"val_fraction must be in [0, 1); got {val_fraction!r}")
    check_positive(func, "seed", seed, allow_zero=True, integer=True)


def check_stats(func: str, name: str, value: Sequence[float]) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except TypeError:
        fail(func, f"{name} must be 3 numbers (one per RGB channel); got {value!r}", exc=TypeError)
    if len(out) != 3:
        fail(func, f"{name} must be 3 numbers (one per RGB channel); got {len(out)}: {value!r}")
    if name == "std" and min(out) <= 0:
        fail(func, f"std must be > 0 per channel; got {value!r}")
    return out  # type: ignore[return-value]


def check_cache(func: str, cache: CacheSpec) -> None:
    if cache is not None and not isinstance(cache, (str, os.PathLike)):
        fail(
            func,
            f"cache must be None, 'memory', 'disk' or a directory path; got {type(cache).__name__} {cache!r}",
            exc=TypeError,
        )


#: Names of a validation folder beside ``train/`` (torchvision/ImageNet ``val``, fastai's
#: ``valid``, and ``validation``); ``test/`` is used only when asked (``val_folder="test"``).
VAL_FOLDERS = ("val", "valid", "validation")


def split_layout(func: str, root: Path, val_folder: str | None = None) -> tuple[Path, Path | None]:
    """``(train_dir, val_dir or None)`` of ``root``.

    ``root/train/`` with one of ``val/``, ``valid/``, ``validation/`` beside it (or the folder
    named by ``val_folder``) is a given split; ``root/train/`` alone is split by fraction; a root
    without ``train/`` is the flat layout. Refused, since each would silently train on the wrong
    images: two validation folders, a validation folder without ``train/``, and a sibling of
    ``train/`` that is neither a validation folder nor ``test/`` (e.g. ``dev/``).
    """
    if val_folder is not None and (
        not isinstance(val_folder, str) or not val_folder or "/" in val_folder
    ):
        fail(
            func,
            f"val_folder must be a folder name beside train/ (e.g. 'valid', 'test'); got {val_folder!r}",
        )
    train = root / "train"
    names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    wanted = (val_folder,) if val_folder is not None else VAL_FOLDERS
    found = [n for n in wanted if n in names]
    if not train.is_dir():
        if found:
            fail(
                func,
                f"found {str(root / found[0])!r} but no {str(train)!r}",
                hint=f"use train/ and {found[0]}/ together, or neither",
            )
        if val_folder is not None:
            fail(func, f"val_folder={val_folder!r} needs {str(train)!r} beside it; found neither")
        return root, None
    if val_folder is not None and not found:
        fail(func, f"val_folder={val_folder!r}: no folder {str(root / val_folder)!r} beside train/")
    if len(found) > 1:
        fail(
            func,
            f"{str(root)!r} has several validation folders: {', '.join(f + '/' for f in found)}",
            hint="keep one, or name it with val_folder",
        )
    known = {"train", "test", *VAL_FOLDERS, *(found or ())}
    unknown = [n for n in names if n not in known]
    if unknown:
        fail(
            func,
            f"{str(root)!r} has train/ and folder(s) {', '.join(n + '/' for n in unknown)} that are "
            f"neither a validation split ({', '.join(n + '/' for n in VAL_FOLDERS)}) nor test/",
            hint="rename the validation folder to val/, pass val_folder='<name>', or move the others out",
        )
    if not found and "test" in names:
        fail(
            func,
            f"{str(root)!r} has train/ and test/ but no validation folder",
            hint="pass val_folder='test' to validate on test/, or add val/ (train/ alone is split by val_fraction)",
        )
    return train, (root / found[0]) if found else None


def common_size(func: str, sizes: dict[Path, tuple[int, int]], root: Path) -> tuple[int, int]:
    """``(H, W)`` shared by every image in ``sizes`` (``(width, height)`` per path), for
    ``image_size=None``; refuses a folder of several sizes, naming two of them."""
    distinct: dict[tuple[int, int], Path] = {}
    for path, size in sizes.items():
        distinct.setdefault(size, path)
    if len(distinct) != 1:
        shown = ", ".join(
            f"{w}x{h} ({listing([p], root)})" for (w, h), p in list(distinct.items())[:3]
        )
        fail(
            func,
            f"image_size=None takes the images' own size, but {str(root)!r} holds {len(distinct)} sizes: {shown}",
            hint="pass image_size=<s> (or (H, W)) to resize every image to it",
        )
    ((w, h),) = distinct
    return h, w


def _n_val(n: int, fraction: float) -> int:
    if fraction == 0 or n < 2:
        return 0
    # round half up, and keep at least one sample on each side
    return min(max(int(np.floor(n * fraction + 0.5)), 1), n - 1)


def split_indices(
    targets: Sequence[int], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Deterministic stratified split: ``(train_indices, val_indices)``, both sorted.

    Per class (in label order) a ``numpy.random.default_rng(seed)`` permutation of its indices;
    the first ``round(n_c * val_fraction)`` (at least 1 and at most ``n_c - 1`` when ``n_c >= 2``
    and ``val_fraction > 0``) go to validation. The same targets, fraction and seed give the same
    split on every machine.
    """
    t = np.asarray(targets)
    rng = np.random.default_rng(seed)
    val: list[int] = []
    for c in np.unique(t):
        idx = rng.permutation(np.flatnonzero(t == c))
        val.extend(idx[: _n_val(len(idx), val_fraction)].tolist())
    val_set = set(val)
    return [i for i in range(len(t)) if i not in val_set], sorted(val)
