"""A callable standing in for an attribute of a shared object while anyone needs it.

Reference-counted: the first user installs it, the last to leave (in whatever order) puts back what was
there: the object's own attribute, or nothing, so that its class's is seen again. The gates on modules'
`forward` (`weak.gate`) and PixArt's CFG recorder on a pipeline's `encode_prompt` (`denoiser`) are both one.
"""

from __future__ import annotations

import threading
from typing import Any, TypeVar

_LOCK = threading.Lock()  # guards every stand-in's install, count and restore

S = TypeVar("S", bound="StandIn")


class StandIn:
    """Subclasses name the `attribute` they stand in for and define `__call__` (`original` is what was called)."""

    attribute = ""

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.users = 0
        self.had_own = self.attribute in vars(owner)
        self.previous = vars(owner).get(self.attribute)
        self.original = getattr(owner, self.attribute)

    @classmethod
    def enter(cls: type[S], owner: Any) -> S:
        """The stand-in on `owner` (installed now if none is), with one more user."""
        with _LOCK:
            current = vars(owner).get(cls.attribute)
            if not isinstance(current, cls):
                current = cls(owner)
                setattr(owner, cls.attribute, current)
            current.users += 1
            return current

    def leave(self) -> None:
        """One user fewer; the last one puts back what the attribute was."""
        with _LOCK:
            self.users -= 1
            if self.users == 0:
                if self.had_own:
                    setattr(self.owner, self.attribute, self.previous)
                else:
                    delattr(self.owner, self.attribute)
