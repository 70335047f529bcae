"""A name -> factory table with aliases and a did-you-mean on a miss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from strop._checks import did_you_mean

T = TypeVar("T")

__all__ = ["Registry"]


def _key(name: str) -> str:
    # "StepLR", "step_lr" and "step-lr" all name the same thing
    return name.lower().replace("-", "_")


class Registry(Generic[T]):
    """A dict of named factories: ``register`` / ``get`` / ``names``.

    Lookup ignores case and treats ``-`` like ``_``. A miss raises ``ValueError`` listing what is
    available and the closest name: ``unknown loss 'dise'; did you mean 'dice'? available: ...``.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._canonical: dict[str, str] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` and its ``aliases``."""

        def add(obj: T) -> T:
            for n in (name, *aliases):
                key = _key(n)
                if key in self._canonical:
                    raise ValueError(f"{self.kind} {n!r} is already registered")
                self._canonical[key] = name
            self._items[name] = obj
            return obj

        return add

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or an alias of it."""
        if not isinstance(name, str):
            raise TypeError(
                f"{self.kind} name must be a string; got {type(name).__name__} {name!r}"
            )
        try:
            return self._canonical[_key(name)]
        except KeyError:
            hint = did_you_mean(_key(name), self._canonical)
            raise ValueError(
                f"unknown {self.kind} {name!r}{hint} available: {', '.join(self.names())}"
            ) from None

    def get(self, name: str) -> T:
        """The factory registered under ``name`` (or an alias)."""
        return self._items[self.canonical(name)]

    def names(self) -> list[str]:
        """Registered names (aliases excluded), sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _key(name) in self._canonical
