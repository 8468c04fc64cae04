"""One way to name things: a registry maps a name to an entry, lists the names, and answers an
unknown name with the closest valid one.

Datasets, backbones, distillation methods, tasks and backend rows each have one, filled where the
thing is defined (the model is timm's ``@register_model``); importing a registry's package fills
it. This module imports nothing of the project, so the config schema can stay a leaf while the
checks that need the entries run in one preflight step (:mod:`pipeline.orchestration.preflight`).
"""

from __future__ import annotations

import difflib
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownName(ValueError):
    """A name no entry has; the message suggests the closest one and lists them all."""


class Registry(Generic[T]):
    """``kind`` names the registry in messages ("dataset", "backbone", "distillation method")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name``; the same entry twice is fine, two entries under one name are not."""
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"two {self.kind}s are named '{name}'")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UnknownName(self.unknown(name))
        return self._entries[name]

    def unknown(self, name: str) -> str:
        """The message for a name that is not registered: closest match, then every valid name."""
        names = self.names()
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"unknown {self.kind} '{name}'; {hint}valid {self.kind}s: {', '.join(names)}"

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._entries.items())

    def entries(self) -> list[T]:
        """The entries in the order they were registered (where that order means something, e.g. a table's)."""
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries
