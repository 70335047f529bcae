"""The one place that formats argument errors.

Every public strop function reports bad input the same way: the function, the argument, what was
expected, what was received, and (when there is one) a hint::

    dice_loss: target must have shape (N, H, W) ...; got (2, 1, 8, 8). Hint: use mode='multilabel'.

``ValueError`` is for values and shapes, ``TypeError`` for types; ``assert`` is kept for internal
invariants only.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any, NoReturn

__all__ = ["check_choice", "check_positive", "did_you_mean", "fail"]


def fail(
    func: str, message: str, *, hint: str | None = None, exc: type[Exception] = ValueError
) -> NoReturn:
    """Raise ``exc`` with the message ``"{func}: {message}[. Hint: {hint}]"``."""
    text = f"{func}: {message}"
    if hint:
        text += f". Hint: {hint}"
    raise exc(text)


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_choice(func: str, arg: str, value: Any, choices: Iterable[str]) -> None:
    """Fail unless ``value`` is one of ``choices`` (the message lists them, with a did-you-mean)."""
    choices = list(choices)
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        fail(
            func, f"{arg} must be one of {listed}; got {value!r}{did_you_mean(str(value), choices)}"
        )


def check_positive(
    func: str, arg: str, value: Any, *, allow_zero: bool = False, integer: bool = False
) -> None:
    """Fail unless ``value`` is a number > 0 (or >= 0 with ``allow_zero``); integers when asked."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        fail(func, f"{arg} must be {kind}; got {type(value).__name__} {value!r}", exc=TypeError)
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        fail(func, f"{arg} must be {bound}; got {value!r}")
