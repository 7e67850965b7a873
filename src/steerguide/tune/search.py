"""Where to probe next, from the probes judged so far (pure: no models, no torch, no files).

A probe is one guidance setting (a `Knob`: scale w, ω and ω's schedule) sampled on the same prompts and
seeds as every other probe and judged for (fidelity, text). The search runs in two phases:

1. a coarse pass (`COARSE`, 14 knobs): CFG (ω = 1) at w ∈ {1.5, 3, 5, 7.5}, which is also the reference
   curve, PG at ω ∈ {0, 0.5} at the same scales, and one schedule (ω rising linearly from 0 to 1, i.e.
   from the pretrained model's null prediction to CFG's) at w ∈ {3, 5};
2. refinement near the judged front, schedule by schedule: the probe of the schedule's Pareto front
   (CFG included) that the objective ranks best is the centre of a pattern search in (log w, ω): its eight
   neighbours at step level L (w × or ÷ 2^(1/2^L), ω ± 0.5/2^L), taking the coarsest level
   L = 1..`MAX_LEVEL` with a neighbour not judged yet. When a neighbour wins, it becomes the centre (big
   steps again: the search climbs); when none does, the steps halve around it. The runner-up front probe
   is refined once the best is exhausted. The objective is read on kernel-smoothed scores (`smooth`).

`propose` is a function of the judged set alone, so a rerun over the same probes proposes the same knobs:
that is what makes a tuning run resumable without recording the search's state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

SCALE_RANGE = (1.0, 10.0)  # w = 1 is no guidance; beyond 10 the toy and SD samples saturate
OMEGA_RANGE = (0.0, 1.0)  # PG's interpolation; no extrapolation in a search
CONSTANT, LINEAR = "constant", "linear:1"  # ω constant, or rising linearly from ω to 1 (CFG) over sampling
SCHEDULES = (CONSTANT, LINEAR)
COARSE_SCALES = (1.5, 3.0, 5.0, 7.5)  # the toy DreamBench's grid scales: CFG's curve is comparable
MAX_LEVEL = 4  # finest step: w × 2^(1/16) ≈ 1.04, ω ± 0.03
CENTRES = 2  # front probes refined, best first
# Diagonal moves too: the best settings lie along ridges of about constant push (w − 1)(1 − ω), and a
# constraint's edge cuts (w, ω) diagonally; axis moves alone stall there (each one leaves the ridge).
DIAGONALS = True


@dataclass(frozen=True, order=True)
class Knob:
    """A point of the tuner's search plane (w, ω) with PG's schedule (ω = 1 with a constant schedule is CFG
    exactly: docs/method.md property 2). A search axis, not a second setting type: rounded so that set
    membership means "probed", ordered, with neighbours; `setting` is the guidance setting it stands for."""

    scale: float
    omega: float
    schedule: str = CONSTANT

    def __post_init__(self) -> None:  # one spelling per point, so that set membership means "probed"
        object.__setattr__(self, "scale", round(float(self.scale), 3))
        object.__setattr__(self, "omega", round(float(self.omega), 4))

    @property
    def is_cfg(self) -> bool:
        return self.omega == 1.0  # constant at 1, or linear from 1 to 1: the null branch is the fine-tuned model

    @property
    def method(self) -> str:
        return self.setting.method

    @property
    def setting(self):
        """The guidance setting: CFG at ω = 1, else PG at (w, ω, schedule)."""
        from steerguide.guidance import Setting
        from steerguide.methods.cfg import CFG
        from steerguide.methods.pg import PG

        if self.is_cfg:
            return Setting(CFG.name, self.scale)
        return Setting(PG.name, self.scale, self.omega, self.schedule)

    @property
    def label(self) -> str:
        return self.setting.label

    def to_json(self) -> dict:
        return {"scale": self.scale, "omega": self.omega, "schedule": self.schedule}

    @classmethod
    def from_json(cls, data: dict) -> Knob:
        return cls(float(data["scale"]), float(data["omega"]), str(data.get("schedule", CONSTANT)))


@dataclass(frozen=True)
class Judged:
    """A probe's mean scores over its images."""

    knob: Knob
    fidelity: float
    text: float


COARSE: tuple[Knob, ...] = (
    *(Knob(w, 1.0) for w in COARSE_SCALES),
    *(Knob(w, omega) for omega in (0.0, 0.5) for w in COARSE_SCALES),
    *(Knob(w, 0.0, LINEAR) for w in (3.0, 5.0)),
)


def _clip(value: float, bounds: tuple[float, float]) -> float:
    return min(max(value, bounds[0]), bounds[1])


def neighbours(knob: Knob, level: int) -> list[Knob]:
    """The eight pattern-search neighbours of `knob` at step `level` (≥ 1), axis moves first, inside the
    search box."""
    factor = 2.0 ** (1.0 / 2**level)
    step = 0.5 / 2**level
    out = []
    moves = [(1, 0), (-1, 0), (0, -1), (0, 1), (1, -1), (-1, 1), (1, 1), (-1, -1)]
    for dw, domega in moves[: 8 if DIAGONALS else 4]:
        k = Knob(
            _clip(knob.scale * factor**dw, SCALE_RANGE),
            _clip(knob.omega + domega * step, OMEGA_RANGE),
            knob.schedule,
        )
        if k != knob and k not in out:
            out.append(k)
    return out


def pareto_front(judged: Iterable[Judged]) -> list[Judged]:
    """The probes no other probe beats on both axes (ties kept), by increasing fidelity."""
    items = list(judged)
    front = [
        p
        for p in items
        if not any(
            q.fidelity >= p.fidelity and q.text >= p.text and (q.fidelity > p.fidelity or q.text > p.text)
            for q in items
        )
    ]
    return sorted(front, key=lambda p: (p.fidelity, p.text))


def propose(judged: dict[Knob, Judged], rank: Callable[[Judged], tuple]) -> list[Knob]:
    """The next knobs to probe (a batch of at most eight per schedule), or [] when the search has converged.

    `rank` orders probes by the objective (bigger is better; see `objective.Target.ranker`). Each schedule
    is refined around its own best front probe (CFG, ω = 1, belongs to both), best schedule first: one
    schedule dominating the coarse pass must not hide the other's optimum, which a constraint can favour."""
    missing = [k for k in COARSE if k not in judged]
    if missing:
        return missing
    batches = []
    for schedule in SCHEDULES:
        family = [p for p in judged.values() if p.knob.schedule == schedule or p.knob.is_cfg]
        front = sorted(pareto_front(family), key=lambda p: (rank(p), p.knob), reverse=True)
        for centre in front[:CENTRES]:
            fresh = _fresh_neighbours(centre.knob, judged)
            if fresh:
                batches.append((rank(centre), fresh))
                break
    batches.sort(key=lambda b: b[0], reverse=True)
    return list(dict.fromkeys(k for _, fresh in batches for k in fresh))


def _fresh_neighbours(knob: Knob, judged: dict[Knob, Judged]) -> list[Knob]:
    """The neighbours not judged yet at the coarsest level that has any."""
    for level in range(1, MAX_LEVEL + 1):
        fresh = [k for k in neighbours(knob, level) if k not in judged]
        if fresh:
            return fresh
    return []


def grid_knobs(n: int) -> list[Knob]:
    """A plain grid of about `n` knobs over the same box and schedules (the baseline the search is
    measured against in docs/tune.md): scales geometric in SCALE_RANGE's useful part × ω evenly in [0, 1],
    constant; a fifth of the budget on the linear schedule."""
    n_sched = max(1, n // 5)
    n_const = n - n_sched
    n_omega = max(2, round(math.sqrt(n_const / 1.5)))
    n_scale = max(2, n_const // n_omega)
    scales = [1.5 * (7.5 / 1.5) ** (i / (n_scale - 1)) for i in range(n_scale)]
    omegas = [i / (n_omega - 1) for i in range(n_omega)]
    knobs = [Knob(w, o) for w in scales for o in omegas]
    sched_scales = [1.5 * (7.5 / 1.5) ** (i / max(1, n_sched - 1)) for i in range(n_sched)]
    knobs += [Knob(w, 0.0, LINEAR) for w in sched_scales]
    return knobs[:n]


SMOOTH_LOG_SCALE = math.log(2.0) / 4  # kernel widths: a level-2 step in w (× 2^(1/4)) ...
SMOOTH_OMEGA = 0.125  # ... and in ω


def smooth(judged: dict[Knob, Judged], noise: tuple[float, float] = (0.0, 0.0)) -> dict[Knob, Judged]:
    """Each probe's scores shrunk towards what its neighbours predict, as much as the noise warrants.

    Choosing on single noisy probes picks the luckiest draw (the winner's curse). Here each probe's mean
    is mixed with a local linear fit (LOESS: Gaussian weights of a level-2 step's width in (log w, ω),
    over its schedule's probes and CFG's, the probe itself left out), per axis with the weight
    λ = σ² / (σ² + b²): σ² is the variance of a probe's mean (`noise`, from the probes' own images, see
    `tuner.probe_noise`), b² the fit's own error (its mean squared leave-one-out error minus σ²). With no
    noise a probe keeps its own mean; with much, it borrows from the neighbours that the refinement put
    around the best probes, which a grid of the same budget does not have."""
    import numpy as np

    items = list(judged.values())
    raw = np.array([(p.fidelity, p.text) for p in items])
    loo = np.array([_local_fit(p, [q for q in items if q is not p]) for p in items])
    ok = ~np.isnan(loo).any(axis=1)
    sigma2 = np.asarray(noise, dtype=float)
    if ok.sum() < 3 or not (sigma2 > 0).any():
        return dict(judged)
    error2 = ((raw[ok] - loo[ok]) ** 2).mean(axis=0)
    bias2 = np.maximum(error2 - sigma2, 1e-12)
    lam = sigma2 / (sigma2 + bias2)
    mixed = np.where(ok[:, None], (1 - lam) * raw + lam * np.nan_to_num(loo), raw)
    return {p.knob: Judged(p.knob, float(m[0]), float(m[1])) for p, m in zip(items, mixed, strict=True)}


def _local_fit(p: Judged, others: list[Judged]) -> tuple[float, float]:
    """The local linear fit's (fidelity, text) at `p`'s knob from `others` (NaN when too few are near)."""
    import numpy as np

    rows, weights, ys = [], [], []
    for q in others:
        if q.knob.schedule != p.knob.schedule and not (q.knob.is_cfg or p.knob.is_cfg):
            continue
        dx = (math.log(q.knob.scale) - math.log(p.knob.scale)) / SMOOTH_LOG_SCALE
        dy = (q.knob.omega - p.knob.omega) / SMOOTH_OMEGA
        weights.append(math.exp(-0.5 * (dx * dx + dy * dy)))
        rows.append((1.0, dx, dy))
        ys.append((q.fidelity, q.text))
    if not rows or sum(weights) < 1.5:  # too few within about a kernel width: no prediction
        return (math.nan, math.nan)
    x, w, y = np.array(rows), np.array(weights), np.array(ys)
    gram = x.T @ (x * w[:, None]) + np.diag([0.0, 0.1, 0.1]) * w.sum()  # a ridge on the slopes
    fit = np.linalg.solve(gram, x.T @ (y * w[:, None]))
    return (float(fit[0, 0]), float(fit[0, 1]))
