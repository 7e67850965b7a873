"""Package attributes imported on first use (PEP 562), so that `import steerguide` and the CLI's start
do not pay for torch, diffusers or matplotlib until a command needs them."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_attributes(
    package: str, where: dict[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """(`__getattr__`, `__dir__`) for `package`: attribute `name` comes from module `where[name]`.

    An attribute is imported once and then kept in the package's namespace, so later lookups cost
    nothing; `dir()` lists the lazy names beside what the package already holds."""

    def __getattr__(name: str) -> object:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__
