"""A named set of plug-ins (policies, routings, engines, scorers): one line registers one, and
the lists of names, the CLI choices and the unknown-name errors all derive from it."""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> plug-in. An entry may be the object itself or "module:attribute", imported on
    first use, so that listing engines does not import vLLM."""

    def __init__(self, kind: str, entries: Mapping[str, T | str]) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = dict(entries)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def check(self, name: str) -> str:
        """`name` if it is registered; else a ValueError that lists the choices."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names)}")
        return name

    def __getitem__(self, name: str) -> T:
        entry = self._entries[self.check(name)]
        if isinstance(entry, str):
            module, _, attribute = entry.partition(":")
            entry = getattr(importlib.import_module(module), attribute)
            self._entries[name] = entry
        return entry

    def parse_list(self, values: Iterable[str]) -> list[str]:
        """Names given repeated and/or comma-separated, checked, in order, without repeats."""
        names = [n.strip() for v in values for n in v.split(",") if n.strip()]
        return list(dict.fromkeys(self.check(n) for n in names))
