"""Checkpoints: plain dicts, versioned, written atomically, read without running code.

A checkpoint is written to ``path.tmp``, flushed and fsynced, then moved over ``path`` with
``os.replace`` (atomic on POSIX) and the folder fsynced, so a crash or a full disk at any moment
leaves either the old file or the new one — never a torn one. Reading uses
``torch.load(weights_only=True)``: a crafted pickle cannot run code.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import pickle
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from strop._rng import capture_rng, restore_rng

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "capture_rng",
    "forget_shared",
    "inline_frozen",
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


# folder -> (signature of the frozen tensors, file name, sha256): a frozen part unchanged since
# the last save (same tensors, same version counters) is neither serialised nor hashed again
_SHARED_MEMO: dict[Path, tuple[tuple[Any, ...], str, str]] = {}


def forget_shared(folder: str | Path) -> None:
    """Drop what this process remembers of the frozen part last stored in ``folder``. A run calls
    it when it starts: the memory of an earlier model (freed, its memory reused by the new one at
    the same addresses and version counters) must never stand for the new model's tensors."""
    _SHARED_MEMO.pop(Path(folder), None)


def _signature(tensors: dict[str, torch.Tensor]) -> tuple[Any, ...]:
    """Names, storage addresses, version counters and shapes: equal while none was replaced or
    modified in place."""
    return tuple((k, t.data_ptr(), t._version, tuple(t.shape)) for k, t in tensors.items())


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def _split_shared(payload: dict[str, Any], folder: Path, keys: Collection[str]) -> dict[str, Any]:
    """Move ``payload["model"][k]`` for ``k`` in ``keys`` (a frozen backbone) into a file named by
    its sha256 beside the checkpoint, written once; the checkpoint records the name and hash."""
    model = payload["model"]
    frozen = {k: model[k] for k in model if k in keys}
    signature = _signature(frozen)
    memo = _SHARED_MEMO.get(folder)
    if memo is not None and memo[0] == signature and (folder / memo[1]).is_file():
        name, digest = memo[1], memo[2]
    else:
        buf = io.BytesIO()
        torch.save({"format_version": FORMAT_VERSION, "tensors": frozen}, buf)
        data = buf.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        name = f"frozen-{digest[:16]}.pt"
        target = folder / name
        if not (target.is_file() and _sha256(target) == digest):
            _write_atomic(target, lambda fh: fh.write(data))
        _SHARED_MEMO[folder] = (signature, name, digest)
    rest = {k: v for k, v in model.items() if k not in frozen}
    shared = {"file": name, "sha256": digest, "order": list(model)}
    return {**payload, "model": rest, "model_shared": shared}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _merge_shared(data: dict[str, Any], path: Path, map_location: Any) -> None:
    """Inverse of :func:`_split_shared`: the frozen tensors back into ``data["model"]``, after
    checking the file's sha256 against the one the checkpoint recorded."""
    ref = data.pop("model_shared")
    file = path.parent / ref["file"]
    if not file.is_file():
        raise CheckpointError(
            f"could not read checkpoint {path}: its frozen tensors are in {file}, which is missing "
            "(copy the whole checkpoints/ folder, not one file)"
        )
    raw = file.read_bytes()
    if hashlib.sha256(raw).hexdigest() != ref["sha256"]:
        raise CheckpointError(
            f"could not read checkpoint {path}: {file} does not match the sha256 the checkpoint "
            f"recorded ({ref['sha256'][:16]}…); it was altered or replaced"
        )
    frozen = torch.load(io.BytesIO(raw), map_location=map_location, weights_only=True)["tensors"]
    _put_back(data, ref, frozen)


def _put_back(data: dict[str, Any], ref: dict[str, Any], frozen: dict[str, torch.Tensor]) -> None:
    """``frozen`` back into ``data["model"]``, in the order the reference ``ref`` recorded."""
    model = {**data["model"], **frozen}
    data["model"] = {k: model[k] for k in ref["order"]}


def save_checkpoint(
    payload: dict[str, Any], path: str | Path, *, shared_model_keys: Collection[str] | None = None
) -> Path:
    """Write ``payload`` (plus ``format_version``) atomically to ``path``.

    ``shared_model_keys``: entries of ``payload["model"]`` that do not change during the run (a
    frozen backbone under the feature cache); they are written once to
    ``frozen-<sha256>.pt`` beside ``path`` and referenced by name and hash, so each checkpoint
    holds only what trains. :func:`load_checkpoint` puts them back, after checking the hash.

    On failure (disk full, folder unwritable) raises :class:`CheckpointError` naming the path;
    the previous file at ``path`` is untouched and the temporary file is removed.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if shared_model_keys:
            payload = _split_shared(payload, path.parent, shared_model_keys)
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
    path: str | Path, *, map_location: str | torch.device = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    ``mmap``: map the file instead of reading it (``torch.load(mmap=True)``): the tensors are
    read from the page cache when used — for a state dict about to be copied into a model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
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
    if "model_shared" in data:
        _merge_shared(data, path, map_location)
    return data


def inline_frozen(path: str | Path, model_state: dict[str, torch.Tensor] | None = None) -> bool:
    """Rewrite the checkpoint at ``path`` with its frozen tensors inside it, when it references a
    ``frozen-<sha256>.pt`` file (``save_checkpoint(..., shared_model_keys=...)``); returns whether
    it did. The result is self-contained: ``torch.load`` reads the whole model from it alone.
    Atomic as :func:`save_checkpoint`; a missing file or one that holds every tensor is left as is.

    ``model_state``: the live model's state dict. When its frozen tensors are the very ones this
    process last stored in that file (same storage, same version counters: never modified
    since), they are taken from memory instead of reading and hashing the file again."""
    path = Path(path)
    if not path.is_file():
        return False
    try:  # mmap: only the small metadata is read to see whether there is anything to do
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip checkpoint (or unreadable): load_checkpoint reports it
        data = load_checkpoint(path)
    ref = data.get("model_shared")
    if ref is None:
        return False
    memo = _SHARED_MEMO.get(path.parent)
    frozen = None
    if model_state is not None and memo is not None and memo[1] == ref["file"]:
        keys = [k for k in ref["order"] if k not in data["model"]]
        if all(k in model_state for k in keys):
            live = {k: model_state[k] for k in keys}
            if _signature(live) == memo[0] and memo[2] == ref["sha256"]:
                frozen = {k: t.detach().cpu() for k, t in live.items()}
    if frozen is None:
        data = load_checkpoint(path)  # the frozen tensors merged back, their sha256 checked
    else:
        del data["model_shared"]
        _put_back(data, ref, frozen)
    data.pop("format_version")
    save_checkpoint(data, path)
    return True
