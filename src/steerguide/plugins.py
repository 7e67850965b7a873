"""Named things a lower layer owns and a higher one contributes (benchmarks, metrics, recipes, bases).

A `Registry` is a dict with `register` and `lookup`. Its entries come from the plugins: the built-in
ones (the toy world) and those of installed distributions' `steerguide.plugins` entry points, whose
modules are imported once, on the first lookup of any registry, so that no generic layer imports a
plugin by name:

    [project.entry-points."steerguide.plugins"]
    my_world = "my_package.steerguide_plugin"   # a module whose import registers its entries
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from steerguide.errors import UserError

# the toy world; the real-photo stopping rule (evaluate registering into train: no import of evaluate by train)
BUILTIN = ("steerguide.toyworld.plugin", "steerguide.evaluate.stopping")
GROUP = "steerguide.plugins"
T = TypeVar("T")
_discovered = False


def discover() -> None:
    """Import every plugin module once (a module registers its entries when imported)."""
    global _discovered
    if _discovered:
        return
    _discovered = True  # first: a plugin's own lookups during its import find what is there so far
    from importlib.metadata import entry_points

    for name in BUILTIN:
        importlib.import_module(name)
    for point in entry_points(group=GROUP):
        point.load()


class Registry(Generic[T]):
    """Entries by name, in the order registered (the order error messages list them)."""

    def __init__(self, kind: str):
        self.kind = kind  # "benchmark": what the error message calls an entry
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        self._entries[name] = entry
        return entry

    def lookup(self, name: Any) -> T:
        discover()
        if name not in self._entries:
            raise UserError(f"unknown {self.kind} {name!r}; expected one of {', '.join(self._entries)}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        discover()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        discover()
        return iter(list(self._entries))
