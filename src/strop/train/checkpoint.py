"""Checkpoints: plain dicts, versioned, written atomically, read without running code.

A checkpoint is written to ``path.tmp``, flushed and fsynced, then moved over ``path`` with
``os.replace`` (atomic on POSIX) and the folder fsynced, so a crash or a full disk at any moment
leaves either the old file or the new one — never a torn one. Reading uses
``torch.load(weights_only=True)``: a crafted pickle cannot run code.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from strop._rng import capture_rng, restore_rng

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "capture_rng",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
]

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the file and the cause."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` (plus ``format_version``) atomically to ``path``.

    On failure (disk full, folder unwritable) raises :class:`CheckpointError` naming the path;
    the previous file at ``path`` is untouched and the temporary file is removed.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            torch.save({"format_version": FORMAT_VERSION, **payload}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except (OSError, RuntimeError) as exc:
        # torch.save reports a failed write (ENOSPC) as RuntimeError("... unexpected pos ..."),
        # with the OSError as its context; a half-written tmp would also keep the disk full
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        cause = _os_error(exc)
        if cause is None:
            raise  # not an I/O failure (e.g. an unpicklable payload): a bug to see as it is
        reason = "the disk is full" if cause.errno == errno.ENOSPC else cause.strerror or str(cause)
        raise CheckpointError(
            f"could not write checkpoint {path}: {reason}; the previous checkpoint there (if any) is kept"
        ) from exc
    return path


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc`` (itself, or in its ``__cause__``/``__context__`` chain)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OSError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def load_checkpoint(
    path: str | Path, *, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(
            r"(?i)unsupported (?:global: )?GLOBAL [\w.]+|unsupported operand \d+", str(exc)
        )
        if refused is None:
            raise CheckpointError(
                f"could not read checkpoint {path}: {type(exc).__name__}: {exc}"
            ) from exc
        # torch's own text advises weights_only=False: wrong advice for a file nobody vouched for
        raise CheckpointError(
            f"could not read checkpoint {path}: refused, it holds a Python object that loading would "
            f"have to import or call ({refused.group(0)}); strop checkpoints hold only tensors and "
            "plain data, so this file was not written by strop or was altered. Nothing in it was run."
        ) from None
    except Exception as exc:  # torch raises several types for torn or foreign files
        raise CheckpointError(
            f"could not read checkpoint {path}: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(data, dict) or "format_version" not in data:
        raise CheckpointError(f"{path} is not a strop checkpoint (no format_version)")
    if data["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {data['format_version']}; this strop reads up to {FORMAT_VERSION}"
        )
    return data
