"""What every `guided` block shares, whichever engine its pipeline family takes (`steerguide.one_batch`,
`steerguide.separate`): the wrapper base with its counters and ω per step, and the step index."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from steerguide.families import family_of
from steerguide.guidance import GuidanceConfig
from steerguide.personalization import Personalization
from steerguide.pipeline_call import calling_pipeline


@dataclass
class Counters:
    """What the denoiser did during sampling: forward calls, batch rows through it, and the time spent."""

    denoiser_calls: int = 0
    denoiser_rows: int = 0
    seconds_denoising: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def denoiser_of(pipe) -> torch.nn.Module:
    """The pipeline's (main) denoiser, as its family names it (`steerguide.families`)."""
    return family_of(pipe).denoiser(pipe)


def step_of(scheduler, timestep: Any) -> tuple[int, int]:
    """(step, N): the index of the sampling step under way and the number of steps in this run.

    Schedulers with a step counter (Euler, Heun, KDPM2, DPM++, UniPC, flow matching, ...) give it exactly,
    even where integer timesteps repeat (Karras or exponential sigmas). Second-order schedulers (order 2:
    Heun, KDPM2) list 2N−1 timesteps: a step's predictor and corrector are two calls of the same step.
    PNDM counts its steps itself; schedulers without a counter (DDIM, DDPM, ...) have distinct timesteps:
    the step is found by value.
    """
    timesteps = getattr(scheduler, "timesteps", None)
    if timesteps is None or len(timesteps) == 0:
        return 0, 1
    begin = getattr(scheduler, "begin_index", None) or 0
    count = len(timesteps) - begin
    if hasattr(scheduler, "_step_index"):
        index = scheduler.step_index
        if index is None:
            index = begin  # before the first `scheduler.step`
    elif isinstance(getattr(scheduler, "counter", None), int):
        index = scheduler.counter  # PNDM counts its steps (its timesteps repeat one entry)
    else:
        index = None
    if index is None:
        t = timestep.flatten()[0] if isinstance(timestep, torch.Tensor) else torch.tensor(timestep)
        index = int(torch.argmin((timesteps.float().cpu() - float(t)).abs()))
        return index, len(timesteps)
    call = max(0, min(int(index) - begin, count - 1))
    if getattr(scheduler, "order", 1) == 2:
        return call // 2, (count + 1) // 2  # calls 2i (predictor) and 2i + 1 (corrector): step i
    return call, count


class BlockWrapper:
    """What a `guided` block installs, whichever engine its family takes (`steerguide.one_batch`'s,
    `steerguide.separate`'s): the pipeline, personalization and settings, which calls it owns, and its
    counters and ω per step for run.json."""

    def __init__(self, pipe, personalization: Personalization, config: GuidanceConfig) -> None:
        self.pipe = pipe
        self.personalization = personalization
        self.config = config
        self.counters = Counters()
        self.steps: dict[int, dict] = {}  # per sampling step: τ, ω and whether it was guided (run.json)

    def _refuse_without_personalization(self) -> None:
        if self.personalization.kind == "none" and self.config.spec.uses_weak_model:
            # Without a personalization θ_pre = θ_ft: PG is CFG and AG guides the model with itself.
            raise ValueError(
                f"method {self.config.method!r} needs a personalization (θ_pre and θ_ft are the same)"
            )

    @property
    def omegas(self) -> list[float | None]:
        """ω at each sampling step, by step index (None where the step was outside the interval)."""
        if not self.steps:
            return []
        last = max(self.steps)
        return [self.steps[s]["omega"] if s in self.steps else None for s in range(last + 1)]

    def _record(self, step: int, tau: float, omega: float | None) -> None:
        self.steps.setdefault(step, {"step": step, "tau": tau, "omega": omega, "guided": omega is not None})

    def owns_call(self) -> bool:
        """Whether the denoiser call under way is this block's: made by its pipeline's call (another pipeline
        sharing the denoiser gets the plain model), or by no pipeline at all (the denoiser called directly)."""
        caller = calling_pipeline()
        return caller is None or caller is self.pipe
