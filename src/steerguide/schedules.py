"""ω(τ): how much of the personalization the weak model keeps, as a function of sampling progress.

τ ∈ [0, 1) is the fraction of the sampling steps already done when a step starts (0 at the first step,
(N−1)/N at the last). Schedules are plain callables τ → ω, so a user's own function works anywhere a
schedule does; `parse_schedule` turns the CLI/config spelling into one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from steerguide.errors import UserError

Schedule = Callable[[float], float]

SCHEDULE_KINDS = ("constant", "linear", "cosine", "piecewise")


@dataclass(frozen=True)
class Constant:
    value: float

    def __call__(self, tau: float) -> float:
        return self.value

    def values(self) -> list[float]:
        return [self.value]


@dataclass(frozen=True)
class Linear:
    """From `start` at τ = 0 to `end` at τ = 1, linearly."""

    start: float
    end: float

    def __call__(self, tau: float) -> float:
        return self.start + (self.end - self.start) * tau

    def values(self) -> list[float]:
        return [self.start, self.end]


@dataclass(frozen=True)
class Cosine:
    """From `start` to `end` along a half cosine: flat at both ends, fastest change mid-way."""

    start: float
    end: float

    def __call__(self, tau: float) -> float:
        return self.start + (self.end - self.start) * (1.0 - math.cos(math.pi * tau)) / 2.0

    def values(self) -> list[float]:
        return [self.start, self.end]


@dataclass(frozen=True)
class Piecewise:
    """Piecewise constant: `start` until the first knot, then the value of the last knot with τ_k ≤ τ."""

    start: float
    knots: tuple[tuple[float, float], ...]

    def __call__(self, tau: float) -> float:
        value = self.start
        for knot_tau, knot_value in self.knots:
            if tau >= knot_tau:
                value = knot_value
        return value

    def values(self) -> list[float]:
        return [self.start, *(v for _, v in self.knots)]


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{what}: {text!r} is not a number") from None


def parse_schedule(spec: str | None, start: float) -> Schedule:
    """Build ω(τ) from its spelling; `start` is ω at τ = 0 (the `--omega` value).

    Spellings: `constant`; `linear:END`; `cosine:END`; `piecewise:T1=V1,T2=V2,...` (ω jumps to V_k at τ = T_k).
    """
    if spec is None or spec == "" or spec == "constant":
        return Constant(start)
    kind, _, rest = spec.partition(":")
    if kind not in SCHEDULE_KINDS:
        raise UserError(f"unknown omega schedule {kind!r}; expected one of {', '.join(SCHEDULE_KINDS)}")
    if kind == "constant":
        value = _number(rest, "omega schedule constant")
        if value != start:  # ω would be `value` while --omega (and every record of the run) says `start`
            raise UserError(
                f"omega schedule 'constant:{rest}' holds ω at {value:g}, but --omega is {start:g}: give "
                f"--omega {value:g} (with the schedule 'constant')"
            )
        return Constant(value)
    if kind in ("linear", "cosine"):
        if not rest:
            raise UserError(f"omega schedule {kind!r} needs an end value, e.g. '{kind}:1.0'")
        end = _number(rest, f"omega schedule {kind} end")
        return Linear(start, end) if kind == "linear" else Cosine(start, end)
    knots: list[tuple[float, float]] = []
    for part in filter(None, rest.split(",")):
        tau_text, sep, value_text = part.partition("=")
        if not sep:
            raise UserError(f"omega schedule piecewise: knot {part!r} is not of the form TAU=OMEGA")
        tau = _number(tau_text, "omega schedule piecewise knot")
        if not 0.0 <= tau <= 1.0:
            raise UserError(f"omega schedule piecewise: knot position {tau} is outside [0, 1]")
        knots.append((tau, _number(value_text, "omega schedule piecewise value")))
    if not knots:
        raise UserError("omega schedule piecewise needs knots, e.g. 'piecewise:0.5=1.0'")
    return Piecewise(start, tuple(sorted(knots)))


def schedule_values(schedule: Schedule, samples: Sequence[float] = ()) -> list[float]:
    """The ω values a schedule can take: its declared ones, else its values at `samples` (for callables)."""
    values = getattr(schedule, "values", None)
    if values is not None:
        return list(values())
    return [float(schedule(t)) for t in samples]
