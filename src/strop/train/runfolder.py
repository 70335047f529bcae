"""Claiming a run folder: no run is ever overwritten, and one folder has one writer at a time.

A new run whose ``output`` already holds a run goes to the next free numbered folder
(``runs/example-2``, ``runs/example-3``, ... as Ultralytics and Lightning do) and says so;
``exist_ok=True`` reuses the folder explicitly and ``resume=True`` continues the run in it.

While a run trains, it holds an advisory lock (``flock``) on ``<run>/.lock``. A second process that
tries to train into the same folder is refused with a message naming the holder. The kernel
releases the lock when the holder exits in any way (SIGKILL included), so a crash leaves no stale
lock to clean up: the file stays, the lock does not. ``flock`` is not reliable on some network
filesystems (old NFS); there the lock is advisory at best.

Under ``torchrun --max-restarts`` the restarted workers must find the folder the first attempt
chose. The lock file records the launch's ``TORCHELASTIC_RUN_ID``; a worker restarted by torchrun
(``TORCHELASTIC_RESTART_COUNT > 0``) continues the folder that carries its run id.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LOCK_NAME",
    "RunClaim",
    "RunInUseError",
    "claim_run_dir",
    "elastic_restart",
    "holds_run",
]

LOCK_NAME = ".lock"
# what makes a folder "hold a run": any of these written by an earlier fit
_RUN_FILES = ("config.yaml", "run.json", "metrics.csv", "checkpoints")


class RunInUseError(RuntimeError):
    """Another live process is training into the run folder."""


def holds_run(folder: Path) -> bool:
    """True when ``folder`` has files an earlier run wrote (config, metrics or checkpoints)."""
    return any((folder / name).exists() for name in _RUN_FILES)


def elastic_restart() -> tuple[str | None, int]:
    """``(run_id, restart_count)`` of a torchrun launch; ``(None, 0)`` outside torchrun.

    ``TORCHELASTIC_RUN_ID`` is the same for every attempt of one launch (a random id with
    ``--standalone``); ``TORCHELASTIC_RESTART_COUNT`` is how many times the group was restarted.
    """
    run_id = os.environ.get("TORCHELASTIC_RUN_ID") or None
    try:
        count = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    except ValueError:
        count = 0
    return run_id, count


@dataclass
class RunClaim:
    """A run folder held by this process: ``folder``, why it was chosen, and the lock."""

    folder: Path
    note: str | None  # a sentence to print when the folder is not the configured one
    resumed_by_restart: bool
    _fd: int | None = None

    def release(self) -> None:
        """Drop the lock (also done by the kernel when the process exits)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunClaim:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _numbered(base: Path, n: int) -> Path:
    return base if n == 1 else base.with_name(f"{base.name}-{n}")


def _candidates(base: Path) -> list[Path]:
    """``base`` and its existing numbered siblings ``base-2``, ``base-3``, ..., in order."""
    found = [base]
    if base.parent.is_dir():
        pattern = re.compile(re.escape(base.name) + r"-(\d+)$")
        numbers = sorted(
            int(m.group(1))
            for p in base.parent.iterdir()
            if (m := pattern.match(p.name)) and p.is_dir()
        )
        found += [_numbered(base, n) for n in numbers if n >= 2]
    return found


def _read_lock_info(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / LOCK_NAME).read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _lock(folder: Path, run_id: str | None) -> int:
    """Take ``folder/.lock`` without waiting; raises :class:`RunInUseError` if a live process has it."""
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        info = _read_lock_info(folder)
        holder = f"pid {info.get('pid', '?')} on {info.get('host', '?')}, since {info.get('started', '?')}"
        raise RunInUseError(
            f"run folder {folder} is in use by another strop process ({holder}); wait for it to "
            "finish, or train into another output folder"
        ) from None
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "run_id": run_id,
    }
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(info).encode())
    os.fsync(fd)
    return fd


def claim_run_dir(output: str | Path, *, resume: bool = False, exist_ok: bool = False) -> RunClaim:
    """Choose and lock the folder a run writes to.

    - ``resume=True``: ``output`` itself (the caller checks it has a checkpoint).
    - restarted by torchrun (``TORCHELASTIC_RESTART_COUNT > 0``): the folder whose lock file
      carries this launch's ``TORCHELASTIC_RUN_ID`` — the one the first attempt chose.
    - ``output`` holds no run, or ``exist_ok=True``: ``output``.
    - otherwise the first free ``output-N`` (N = 2, 3, ...); ``note`` says so.

    Raises :class:`RunInUseError` when a live process holds the chosen folder's lock.
    """
    base = Path(output)
    run_id, restarts = elastic_restart()
    if restarts > 0 and run_id is not None and not resume:
        for folder in _candidates(base):
            if _read_lock_info(folder).get("run_id") == run_id:
                return RunClaim(
                    folder,
                    f"restarted by torchrun (attempt {restarts + 1}): continuing {folder}",
                    True,
                    _lock(folder, run_id),
                )
    if resume or exist_ok or not holds_run(base):
        base.mkdir(parents=True, exist_ok=True)
        return RunClaim(base, None, False, _lock(base, run_id))
    n = 2
    while True:
        folder = _numbered(base, n)
        try:
            folder.mkdir(parents=True)  # atomic: two new runs never pick the same number
        except FileExistsError:
            n += 1
            continue
        note = (
            f"{base} already holds a run: this run writes to {folder} "
            "(use --exist-ok to reuse the folder, --resume to continue it)"
        )
        return RunClaim(folder, note, False, _lock(folder, run_id))
