"""Checks of the numbers users give, shared by the CLI and the Python API so that both say the same line.

Each check raises `UserError` naming the value as the CLI option spells it (`--height`), which is also how
the Python API's keyword reads once the dashes are dropped.
"""

from __future__ import annotations

import math
import numbers
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


# Seeds: numpy's legacy generator (which accelerate's `set_seed` seeds for training) takes 0 to 2**32 - 1,
# torch's up to 2**64 - 1; one range for every command, so that a seed that works in one works in all.
MAX_SEED = 2**32 - 1


def seed(name: str, value: int, count: int = 1) -> int:
    """A seed from 0 to `MAX_SEED`, and so are the `count - 1` seeds after it (image i uses seed + i)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value <= MAX_SEED - (count - 1):
        after = f" (less {count - 1}: its {count} images use seed + 0 ... seed + {count - 1})" if count > 1 else ""
        raise UserError(f"{name} must be an integer from 0 to {MAX_SEED}{after}, got {value!r}")
    return value


MAX_SEED_COUNT = 10_000  # seeds per prompt in a sweep or a tuning run: 10,000 images per prompt and setting


def seed_count(name: str, value: int) -> list[int]:
    """A count N of seeds, 0 ... N-1: at least 1, at most `MAX_SEED_COUNT`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SEED_COUNT:
        raise UserError(f"{name} must be a count from 1 to {MAX_SEED_COUNT}, got {value!r}")
    return list(range(value))


# Sampling steps: the bases steerguide samples were trained on 1000 noise levels, and some schedulers
# allocate per step up front (--steps 1000000000 took 22 GB in 45 s before the kernel killed it).
MAX_STEPS = 10_000


def sampling_steps(name: str, value: int) -> int:
    at_least(name, value, 1)
    return at_most(name, value, MAX_STEPS)


def guidance_interval(name: str, start: float, stop: float) -> tuple[float, float]:
    """An interval of the steps that guides at least at some step count: start < stop. (The Python API
    takes an empty one, (0, 0), as "never guide"; from a command line or a config it is a slip.)"""
    if finite(name, start) >= finite(name, stop) and 0 <= start <= 1:
        raise UserError(
            f"{name} [{start:g}, {stop:g}] is empty: no step would be guided; give start < stop "
            "(for no guidance at all, --scale 1)"
        )
    return start, stop
