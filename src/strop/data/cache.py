"""A store for decoded, resized samples, filled on first access.

Decoding a PNG/JPEG and resizing it costs far more than the rest of the input pipeline once
images are small. ``SampleCache`` keeps the *load stage* output (``uint8`` images, integer masks)
of every sample after it is first read, so that epochs 2..N skip decoding and resizing; random
augmentation and normalisation still run on every access.

- ``"memory"``: torch tensors in shared memory. DataLoader workers are forked from the process
  that built the dataset and write into the same pages, so one pass fills one copy, whatever
  ``num_workers`` is.
- a directory: ``.npy`` files opened as ``numpy.memmap``; they persist across runs. The file names
  carry a hash of the sample paths, their sizes and modification times, and the target size, so
  a changed file or size gets a new cache and a stale one is never read.

A ``filled`` flag per sample is written after the data, so a run killed mid-pass leaves a cache
whose flagged entries are complete.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from strop._checks import fail

__all__ = ["SampleCache", "cache_key"]

Fields = Mapping[str, tuple[tuple[int, ...], torch.dtype]]

_NP_DTYPES = {torch.uint8: np.uint8, torch.int32: np.int32}


def cache_key(paths: Sequence[Path | str], *extra: object) -> str:
    """A hash of ``paths`` (with size and mtime of each file) and ``extra`` values."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.fspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(repr(extra).encode())
    return h.hexdigest()[:20]


class SampleCache:
    """``n`` samples, each a tuple of tensors with fixed shapes and dtypes (``fields``).

    Args:
        n: number of samples.
        fields: ``{name: (shape, dtype)}`` per tensor of a sample, e.g.
            ``{"image": ((3, 64, 64), torch.uint8)}``; dtypes ``uint8`` or ``int32``.
        location: ``"memory"`` or a directory for ``.npy`` files.
        key: names the files in a directory cache (see :func:`cache_key`).

    ``get(i)`` returns the stored tuple or ``None``; ``put(i, *tensors)`` stores one.
    """

    def __init__(
        self, n: int, fields: Fields, *, location: str | os.PathLike[str], key: str
    ) -> None:
        for name, (_, dtype) in fields.items():
            if dtype not in _NP_DTYPES:
                fail(
                    "SampleCache",
                    f"field {name!r} must be uint8 or int32; got {dtype}",
                    exc=TypeError,
                )
        self.n = n
        self.fields = dict(fields)
        self.key = key
        self.directory: Path | None = None
        if isinstance(location, str) and location == "memory":
            self._arrays: dict[str, Any] | None = {
                name: torch.zeros((n, *shape), dtype=dtype).share_memory_()
                for name, (shape, dtype) in self.fields.items()
            }
            self._filled: Any = torch.zeros(n, dtype=torch.bool).share_memory_()
        else:
            self.directory = Path(location)
            self.directory.mkdir(parents=True, exist_ok=True)
            self._arrays = None
            self._filled = None
            self._open()

    # -- disk ----------------------------------------------------------------------------------
    def _path(self, name: str) -> Path:
        assert self.directory is not None
        return self.directory / f"strop-cache-{self.key}-{name}.npy"

    def _open(self) -> None:
        specs = {
            name: ((self.n, *shape), _NP_DTYPES[dtype])
            for name, (shape, dtype) in self.fields.items()
        }
        specs["filled"] = ((self.n,), np.uint8)
        opened: dict[str, np.memmap] = {}
        for name, (shape, dtype) in specs.items():
            path = self._path(name)
            arr = None
            if path.exists():
                try:
                    arr = np.lib.format.open_memmap(path, mode="r+")
                except (ValueError, OSError):
                    arr = None  # unreadable header: a crash while creating it; start over
                if arr is not None and (arr.shape != shape or arr.dtype != dtype):
                    arr = None
            if arr is None:
                arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
                if name != "filled":
                    # new data file: whatever flags exist describe an older file
                    self._path("filled").unlink(missing_ok=True)
            opened[name] = arr
        self._filled = opened.pop("filled")
        self._arrays = opened

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self.directory is not None:
            # a memmap pickles as a private copy; a spawned worker must reopen the files instead
            state["_arrays"] = None
            state["_filled"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.directory is not None:
            self._open()

    # -- access --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.n

    @property
    def filled(self) -> int:
        """How many samples are stored."""
        return int(np.asarray(self._filled).astype(bool).sum())

    def get(self, i: int) -> tuple[Tensor, ...] | None:
        """Sample ``i`` as tensors (copies), or ``None`` when it is not stored yet."""
        if not self._filled[i]:
            return None
        assert self._arrays is not None
        if self.directory is None:
            return tuple(self._arrays[name][i].clone() for name in self.fields)
        return tuple(torch.from_numpy(np.array(self._arrays[name][i])) for name in self.fields)

    def put(self, i: int, *values: Tensor) -> None:
        """Store sample ``i`` (one tensor per field, in ``fields`` order)."""
        assert self._arrays is not None and len(values) == len(self.fields)
        for (name, (shape, dtype)), value in zip(self.fields.items(), values, strict=True):
            if tuple(value.shape) != tuple(shape) or value.dtype != dtype:
                fail(
                    "SampleCache.put",
                    f"{name} must be {dtype} {tuple(shape)}; got {value.dtype} {tuple(value.shape)}",
                )
            if self.directory is None:
                self._arrays[name][i].copy_(value)
            else:
                self._arrays[name][i] = value.numpy()
        # flag after the data: a reader never sees a flagged, half-written sample
        self._filled[i] = True

    def nbytes(self) -> int:
        """Bytes held by the stored arrays (allocated size, filled or not)."""
        total = 0
        for shape, dtype in self.fields.values():
            total += self.n * int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
        return total
