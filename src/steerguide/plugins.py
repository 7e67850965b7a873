"""Plugins: modules that register entries (stopping rules, ...) into the registries of the layers below.

The built-in ones are named here; others declare an entry point in the `steerguide.plugins` group.
Registries call `load_plugins()` on their first lookup, so that no lower layer imports a plugin.
"""

from __future__ import annotations

import importlib

BUILTIN = ("steerguide.toyworld.stopping", "steerguide.evaluate.stopping")
_loaded = False


def load_plugins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in BUILTIN:
        importlib.import_module(name)
    from importlib.metadata import entry_points

    for entry in entry_points(group="steerguide.plugins"):
        entry.load()
