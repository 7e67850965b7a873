"""Named training recipes: how a plugin's world trains its subjects (its per-method defaults, photos and
prompts), looked up by `steerguide train --toy` and by sweeps of that world's benchmark."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerguide.plugins import Registry


@dataclass(frozen=True)
class Recipe:
    """`config(subject, method, subjects_file=None, **overrides) -> TrainConfig`; `identity(method)`: what
    of the recipe a sweep's cache key hashes; `shipped(subject, key)`: a personalization the plugin ships
    trained under that cache key, or None."""

    config: Callable[..., Any]
    identity: Callable[[str], dict]
    shipped: Callable[[str, str], Path | None] = lambda subject, key: None


RECIPES: Registry[Recipe] = Registry("training recipe")
