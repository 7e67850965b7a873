"""Named base models ("toy": the toy world's shipped one), resolved once, where pipelines are loaded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from steerguide.plugins import Registry


@dataclass(frozen=True)
class NamedBase:
    """A base model a plugin ships under a name. `training_note(extra)`: a warning for training on it
    (given the training's `extra` record), or None."""

    path: Callable[[], Path]
    training_note: Callable[[dict], str | None] = lambda extra: None


BASES: Registry[NamedBase] = Registry("base model")


def resolve_base(base: str | Path) -> str:
    """The folder of a named base; anything else (a folder, a file, a hub id) as it is."""
    return str(BASES.lookup(base).path()) if str(base) in BASES else str(base)


def named_base(base: str | Path | None) -> tuple[str, NamedBase] | None:
    """(name, entry) of the named base that `base` is, by name or by its folder; else None."""
    if base is None:
        return None
    if str(base) in BASES:
        return str(base), BASES.lookup(str(base))
    try:
        path = Path(base).expanduser()
        if not path.is_dir():
            return None
        for name in BASES:
            entry = BASES.lookup(name)
            if path.resolve() == Path(entry.path()).resolve():
                return name, entry
    except OSError:
        return None
    return None
