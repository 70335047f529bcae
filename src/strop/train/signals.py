"""SIGINT/SIGTERM ask training to stop at the next optimizer step, where its state is saved."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["handling_signals", "stop_on_signals"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def handling_signals(handler: Any) -> Iterator[None]:
    """``handler`` receives SIGINT and SIGTERM while inside; the previous handlers come back after."""
    old = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def stop_on_signals(state: Any) -> Iterator[None]:
    """While inside, SIGINT/SIGTERM set ``state.should_stop`` and ``state.interrupted`` (the
    signal's name) instead of raising. Outside the main thread (where Python cannot install
    handlers) this is a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        state.should_stop = True
        state.interrupted = signal.Signals(signum).name

    with handling_signals(handler):
        yield
