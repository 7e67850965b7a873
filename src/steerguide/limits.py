"""Checks of the numbers users give, shared by the CLI and the Python API so that both say the same line.

Each check raises `UserError` naming the value as the CLI option spells it (`--height`), which is also how
the Python API's keyword reads once the dashes are dropped.
"""

from __future__ import annotations

import math
import os

from steerguide.errors import UserError

MAX_IMAGE_SIDE = 4096  # pixels; beyond, a single image's activations outgrow any accelerator's memory
MAX_IMAGE_SIDE_FACTOR = 4  # × the model's native side (more is far outside what it was trained on)


def finite(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {value!r}")
    return value


def at_least(name: str, value: int | float, low: int | float) -> int | float:
    finite(name, value)
    if value < low:
        raise UserError(f"{name} must be at least {low:g}, got {value:g}")
    return value


def at_most(name: str, value: int | float, high: int | float) -> int | float:
    finite(name, value)
    if value > high:
        raise UserError(f"{name} must be at most {high:g}, got {value:g}")
    return value


def image_side(name: str, value: int | None, multiple: int = 8) -> int | None:
    """None (the model's size) or a positive multiple of `multiple` up to `MAX_IMAGE_SIDE`."""
    if value is None:
        return None
    if value < multiple or value % multiple or value > MAX_IMAGE_SIDE:
        raise UserError(
            f"{name} must be a multiple of {multiple} from {multiple} to {MAX_IMAGE_SIDE}, got {value}"
        )
    return value


def image_side_for_model(name: str, value: int, native: int) -> int:
    """A side the loaded model can make: at most `MAX_IMAGE_SIDE_FACTOR` times its native side."""
    if value > MAX_IMAGE_SIDE_FACTOR * native:
        raise UserError(
            f"{name} {value} is more than {MAX_IMAGE_SIDE_FACTOR}× this model's native {native} pixels "
            f"(at most {MAX_IMAGE_SIDE_FACTOR * native})"
        )
    return value


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_threads() -> int:
    """torch CPU threads when none are asked for: half the cores, at most 4. torch's own default (every
    core) made toy denoising 20 times slower on a busy 2-core machine (docs/cli.md, "Threads")."""
    return max(1, min(4, cpu_cores() // 2))


def threads(value: int | None) -> int | None:
    if value is not None and value < 1:
        raise UserError(f"--threads must be at least 1, got {value}")
    return value
