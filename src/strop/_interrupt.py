"""Stopping a command that runs several fits when one of them was interrupted.

``fit`` turns SIGINT/SIGTERM into a clean stop (state saved, ``RunResult.interrupted`` set to the
signal's name) and returns. A command that runs more fits after it (the demo, the benchmarks)
must not carry on, nor report the cut run's metric as a result; it calls :func:`check_fit` after
each fit and lets :class:`FitInterrupted` end the whole command with the shell's exit status for
the signal (130 for SIGINT, 143 for SIGTERM)::

    result = check_fit(fit(config), what="the source task", resume="strop demo --out demo")

``strop``'s ``main`` catches :class:`FitInterrupted`; a script uses :func:`run_script`.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["FitInterrupted", "check_fit", "exit_code", "run_script"]

R = TypeVar("R")


def exit_code(signal_name: str) -> int:
    """The shell's status for a process ended by ``signal_name`` (``"SIGTERM"`` -> 143).

    Accepts the trainer's names (``"SIGINT"``, ``"SIGTERM (on another rank)"``); an unknown name
    counts as SIGINT.
    """
    name = str(signal_name).split()[0] if signal_name else "SIGINT"
    try:
        return 128 + int(signal.Signals[name])
    except KeyError:
        return 128 + int(signal.SIGINT)


class FitInterrupted(Exception):
    """A fit inside a multi-fit command was stopped by a signal: stop the whole command.

    Attributes: ``signal_name``, ``what`` (which fit), ``resume`` (how to continue, or None) and
    :attr:`exit_code`.
    """

    def __init__(self, signal_name: str, *, what: str, resume: str | None = None) -> None:
        self.signal_name = signal_name
        self.what = what
        self.resume = resume
        super().__init__(self.message())

    @property
    def exit_code(self) -> int:
        return exit_code(self.signal_name)

    def message(self) -> str:
        text = f"interrupted by {self.signal_name} during {self.what}; stopped, no result reported"
        return text + (f". To continue: {self.resume}" if self.resume else "")


def check_fit(result: R, *, what: str, resume: str | None = None) -> R:
    """``result`` unchanged, or :class:`FitInterrupted` when ``result.interrupted`` is set."""
    interrupted: Any = getattr(result, "interrupted", None)
    if interrupted:
        raise FitInterrupted(str(interrupted), what=what, resume=resume)
    return result


def run_script(main: Callable[[], object], *, name: str) -> int:
    """Run a script's ``main``; on :class:`FitInterrupted` or Ctrl-C print one line on stderr
    and return the signal's exit status (use as ``sys.exit(run_script(...))``); else 0."""
    try:
        main()
    except FitInterrupted as exc:
        print(f"{name}: {exc.message()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{name}: interrupted by SIGINT; stopped, no result reported", file=sys.stderr)
        return exit_code("SIGINT")
    return 0
