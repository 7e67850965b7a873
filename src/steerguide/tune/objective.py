"""What the user asks the tuning to maximize, and which probe it picks (pure: no models).

- `balanced` (the default) maximizes (F − F_min)/ΔF + (T − T_min)/ΔT: the sum of the two scores, each
  min-max normalized over the 14 probes of the coarse pass (CFG, PG at ω 0 and 0.5, the schedule, at
  w from 1.5 to 7.5), so that each axis counts by the range the knobs span on this subject, whatever the
  metric's own scale (CLIP-T moves by hundredths, DINO by tenths). The normalization is fixed once the
  coarse pass is judged, so refinement never moves it. A spread of zero counts as 1.
- `fidelity` with `--min-text X`: the most fidelity among probes whose mean text is at least X;
  `text` with `--min-fidelity Y`: the most text with fidelity at least Y. X and Y are absolute scores
  (`0.62`) or a percentage of the best CFG probe's score on that axis (`90%`: 0.9 × the most text, or
  fidelity, CFG reached at any of its probed scales, on the same prompts and seeds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from steerguide.errors import UserError
from steerguide.tune.search import COARSE, Judged

TARGETS = ("balanced", "fidelity", "text")


@dataclass(frozen=True)
class Bound:
    """A minimum on one axis: `value` absolute, or `value` × CFG's best on that axis when `relative`."""

    value: float
    relative: bool = False

    @classmethod
    def parse(cls, text: str, option: str) -> Bound:
        raw = str(text).strip()
        relative = raw.endswith("%")
        try:
            value = float(raw[:-1] if relative else raw)
        except ValueError:
            raise UserError(
                f"{option} must be a score (0.62) or a percentage of CFG's best (90%), got {text!r}"
            ) from None
        if value != value or value in (float("inf"), float("-inf")):
            raise UserError(f"{option} must be a finite number, got {text!r}")
        if relative and not 0 < value <= 1000:
            raise UserError(f"{option} {text!r}: a percentage must be above 0 and at most 1000%")
        return cls(value / 100 if relative else value, relative)

    def describe(self, reference: float | None = None) -> str:
        if not self.relative:
            return f"{self.value:.4g}"
        if reference is None:
            return f"{100 * self.value:g}% of CFG's best"
        return f"{self.value * reference:.4g} ({100 * self.value:g}% of CFG's best {reference:.4g})"


@dataclass(frozen=True)
class Target:
    kind: str = "balanced"
    bound: Bound | None = None

    @classmethod
    def parse(cls, kind: str, min_text: str | None = None, min_fidelity: str | None = None) -> Target:
        kind = str(kind).strip().lower()
        if kind not in TARGETS:
            raise UserError(f"--target must be one of {', '.join(TARGETS)}, got {kind!r}")
        if kind == "balanced":
            if min_text is not None or min_fidelity is not None:
                raise UserError("--target balanced takes no --min-text or --min-fidelity")
            return cls(kind)
        needed, other = ("--min-text", "--min-fidelity") if kind == "fidelity" else ("--min-fidelity", "--min-text")
        given = min_text if kind == "fidelity" else min_fidelity
        if (min_fidelity if kind == "fidelity" else min_text) is not None:
            raise UserError(f"--target {kind} takes {needed}, not {other}")
        if given is None:
            raise UserError(f"--target {kind} needs {needed} X (a score, or a percentage of CFG's best: 90%)")
        return cls(kind, Bound.parse(given, needed))

    def describe(self) -> str:
        if self.kind == "balanced":
            return "balanced (max of the min-max normalized F + T, normalized on the coarse pass)"
        axis = "text" if self.kind == "fidelity" else "fidelity"
        return f"most {self.kind} with {axis} ≥ {self.bound.describe()}"

    def ranker(self, judged: list[Judged]) -> Callable[[Judged], tuple]:
        """A sort key over probes (bigger is better), calibrated on the CFG probes among `judged`:
        (1, value) for a probe that meets the target, (0, −shortfall) for one that does not."""
        if self.kind == "balanced":
            coarse = [p for p in judged if p.knob in COARSE] or list(judged)
            low_f, spread_f = _range([p.fidelity for p in coarse])
            low_t, spread_t = _range([p.text for p in coarse])
            return lambda p: (1, (p.fidelity - low_f) / spread_f + (p.text - low_t) / spread_t)
        threshold = self.threshold(judged)
        if self.kind == "fidelity":
            return lambda p: (1, p.fidelity) if p.text >= threshold else (0, p.text - threshold)
        return lambda p: (1, p.text) if p.fidelity >= threshold else (0, p.fidelity - threshold)

    def threshold(self, judged: list[Judged]) -> float:
        """The bound as an absolute score (a percentage resolved against the CFG probes)."""
        if self.bound is None:
            raise ValueError("a balanced target has no threshold")
        if not self.bound.relative:
            return self.bound.value
        axis = "text" if self.kind == "fidelity" else "fidelity"
        cfg = [p for p in judged if p.knob.is_cfg] or list(judged)
        return self.bound.value * max(getattr(p, axis) for p in cfg)

    def cfg_best(self, judged: list[Judged]) -> float | None:
        if self.bound is None or not self.bound.relative:
            return None
        axis = "text" if self.kind == "fidelity" else "fidelity"
        return max(getattr(p, axis) for p in [p for p in judged if p.knob.is_cfg] or judged)

    def value(self, judged: list[Judged], probe: Judged) -> float:
        """The objective's value for `probe` (the number `ranker` maximizes among feasible probes)."""
        return self.ranker(judged)(probe)[1]

    def choose(self, judged: list[Judged]) -> Judged:
        """The best probe; `UserError` naming the best reachable one when none meets the target."""
        rank = self.ranker(judged)
        best = max(judged, key=lambda p: (rank(p), p.knob))
        if rank(best)[0] == 1:
            return best
        axis = "text" if self.kind == "fidelity" else "fidelity"
        option = "--min-text" if self.kind == "fidelity" else "--min-fidelity"
        most = max(judged, key=lambda p: (getattr(p, axis), getattr(p, self.kind)))
        raise UserError(
            f"target unreachable: no probe reached {axis} ≥ "
            f"{self.bound.describe(self.cfg_best(judged))}; the best reachable is {axis} "
            f"{getattr(most, axis):.4g} ({most.knob.label}, {self.kind} {getattr(most, self.kind):.4g}); "
            f"lower {option} (the probes are kept: a rerun reuses them)"
        )


def _range(values: list[float]) -> tuple[float, float]:
    spread = max(values) - min(values) if values else 0.0
    return (min(values) if values else 0.0), (spread if spread > 0 else 1.0)
