"""The guidance methods as values and as formulas; no diffusers in here.

All three methods share one shape, D = D_first + w · (D_ft(x, c) − D_first); they differ only in what
the first term is (docs/method.md):

    CFG  D_first = D_ft(x, ∅)      the personalized model on the null prompt
    AG   D_first = D_weak(x, c)    a weaker model (θ_pre, or θ_ω) on the prompt   (Karras et al. 2024)
    PG   D_first = D_ω(x, ∅)       θ_ω = θ_pre + ω·Δ on the null prompt          (Park et al. 2025)

Every formula is affine in D, so it holds for ε-, v-, x0- and flow-parameterizations alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from steerguide import methods
from steerguide.errors import UserError
from steerguide.limits import finite
from steerguide.methods import Method
from steerguide.schedules import Schedule, parse_schedule, schedule_values

if TYPE_CHECKING:  # the formulas take tensors; settings are read without torch (sweep configs, presets)
    import torch


def step_in_interval(step: int, num_steps: int, start: float, stop: float) -> bool:
    """Whether step `step` of `num_steps` is guided: diffusers' `BaseGuidance` start/stop rule,
    int(start·N) <= i < int(stop·N). The one place the rule is written (engines, guiders, ComfyUI)."""
    return int(start * num_steps) <= step < int(stop * num_steps)


def guide(first: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """`first + scale · (cond − first)`: the one formula behind CFG, AG and PG, as diffusers computes it."""
    return first + scale * (cond - first)


@dataclass(frozen=True)
class Setting:
    """One guidance setting as the user spells it: a sweep grid's column, a tuner's probe, a preset's choice.

    A plain, hashable value (a setting listed twice is one), None where the user left ω or its schedule to
    the method; `guidance_config` makes the `GuidanceConfig` that checks and runs it.
    """

    method: str
    scale: float
    omega: float | None = None
    omega_schedule: str | None = None
    interval: tuple[float, float] = (0.0, 1.0)

    @property
    def label(self) -> str:
        """Its name in sweeps, the report and the tuner ("pg w=4 ω=0.3 linear:1 [0,0.5]")."""
        return methods.get(self.method).label(self.scale, self.omega, self.omega_schedule, self.interval)

    def guidance_config(self, **overrides: Any) -> GuidanceConfig:
        """The run's settings (the guidance code judges every value); `overrides` not None win."""
        kwargs: dict[str, Any] = {"method": self.method, "scale": self.scale, "interval": tuple(self.interval)}
        if self.omega is not None:
            kwargs["omega"] = self.omega
        if self.omega_schedule is not None:
            kwargs["omega_schedule"] = self.omega_schedule
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return GuidanceConfig(**kwargs)


@dataclass
class GuidanceConfig:
    """How to guide one sampling run.

    Args:
        method: a registered method's name (`steerguide.methods`): "cfg", "ag" or "pg".
        scale: the guidance scale w, with the diffusers meaning (1 = no guidance).
        omega: ω at the start of sampling: the share of the personalization the weak model keeps
            (PG: 1 is CFG, 0 the pretrained model's null prediction; AG: 0 is the pretrained model).
            None takes the method's default (`Method.default_omega`).
        omega_schedule: how ω moves during sampling: "constant", "linear:END", "cosine:END",
            "piecewise:T1=V1,..." (see `steerguide.schedules`), or a callable τ → ω.
        interval: (start, stop) fractions of the steps where guidance is applied, with the rule of
            diffusers' guiders: step i of N is guided iff int(start·N) <= i < int(stop·N); outside, the
            sampler gets D_ft(x, c) and only the prompt half runs.
        guidance_rescale: diffusers' φ from Lin et al. 2023, for pipelines that support it (SD, SDXL).
        allow_extrapolation: permit ω outside [0, 1].
    """

    method: str = "pg"
    scale: float = 7.5
    omega: float | None = None
    omega_schedule: str | Callable[[float], float] = "constant"
    interval: tuple[float, float] = (0.0, 1.0)
    guidance_rescale: float = 0.0
    allow_extrapolation: bool = False
    _schedule: Schedule | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        spec = methods.get(self.method)  # a one-line error naming the known methods
        # NaN passes every comparison below and ends as invalid JSON in run.json: refuse it first
        for name, value in (("--scale", self.scale), ("--guidance-rescale", self.guidance_rescale),
                            ("--omega", self.omega), ("--guidance-start", self.interval[0]),
                            ("--guidance-stop", self.interval[1])):
            if value is not None:
                finite(name, value)
        if not isinstance(self.scale, (int, float)) or self.scale < 1:
            # diffusers pipelines run no guidance at w <= 1 (they do not duplicate the batch), so a scale
            # below 1 would be recorded but not applied: refused rather than silently ignored.
            raise UserError(
                f"guidance scale must be a number >= 1 (1 = no guidance; diffusers pipelines do not guide "
                f"below 1), got {self.scale!r}"
            )
        if self.guidance_rescale < 0 or self.guidance_rescale > 1:
            raise UserError(f"guidance_rescale must lie in [0, 1], got {self.guidance_rescale}")
        start, stop = self.interval
        if not 0.0 <= start <= stop <= 1.0:
            raise UserError(f"guidance interval must satisfy 0 <= start <= stop <= 1, got {self.interval}")
        if self.omega is None:
            self.omega = spec.default_omega
            spelled = self.omega_schedule if isinstance(self.omega_schedule, str) else ""
            if spec.takes_omega and spelled.startswith("constant:"):  # "constant:0.3" names ω itself
                try:
                    self.omega = float(spelled.partition(":")[2])
                except ValueError:
                    pass  # parse_schedule says what is wrong with it
        if not spec.takes_omega:  # CFG: the weak model is the personalized model itself, ω = 1
            self._schedule = parse_schedule("constant", spec.default_omega)
            return
        if callable(self.omega_schedule):
            self._schedule = self.omega_schedule
        else:
            self._schedule = parse_schedule(self.omega_schedule, float(self.omega))
        for value in schedule_values(self._schedule, [i / 16 for i in range(16)]):
            self.check_omega(value)

    @property
    def spec(self) -> Method:
        """The method object of `method` (its weak half's condition, whether it takes ω, its label)."""
        return methods.get(self.method)

    def check_omega(self, value: float) -> float:
        finite("omega", value)
        if not self.allow_extrapolation and not 0.0 <= value <= 1.0:
            raise UserError(
                f"omega {value:g} is outside [0, 1]; pass --allow-extrapolation (allow_extrapolation=True) "
                "to extrapolate the weak model"
            )
        return value

    def omega_at(self, tau: float) -> float:
        """ω(τ) for this run (for a method without ω its fixed one: CFG's 1, the personalized model)."""
        assert self._schedule is not None
        return self.check_omega(float(self._schedule(tau)))

    def active_at_step(self, step: int, num_steps: int) -> bool:
        """Whether step `step` of `num_steps` is guided: diffusers' `BaseGuidance` start/stop rule."""
        return step_in_interval(step, num_steps, *self.interval)

    def describe(self) -> dict:
        """The settings as plain JSON values (for run.json and result rows)."""
        schedule = self.omega_schedule if isinstance(self.omega_schedule, str) else repr(self.omega_schedule)
        takes_omega = self.spec.takes_omega
        return {
            "method": self.method,
            "scale": self.scale,
            "omega": self.omega if takes_omega else None,
            "omega_schedule": schedule if takes_omega else None,
            "interval": list(self.interval),
            "guidance_rescale": self.guidance_rescale,
            "allow_extrapolation": self.allow_extrapolation,
        }
