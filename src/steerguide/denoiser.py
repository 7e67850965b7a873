"""Guidance installed where the pipeline calls its denoiser.

Every diffusers text-to-image pipeline computes CFG by running its denoiser (`pipe.unet` or
`pipe.transformer`) once on the batch [null half; prompt half] and mixing the two halves with
`uncond + w · (cond − uncond)`. CFG, AG and PG differ only in which weights and which condition the
first half sees, so `guided(pipe, personalization, config)` wraps that one call:

    CFG  first half: θ_ft,  ∅           (the call is passed through untouched)
    PG   first half: θ_ω,   ∅           θ_ω = θ_pre + ω(τ)·Δ
    AG   first half: θ_ω,   c           (ω = 0: the pretrained model)

and the stock pipeline then evaluates the method's own formula. Negative prompts, several images per
prompt, generators, schedulers, callbacks and guidance_rescale keep working unchanged.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch

from steerguide.guidance import GuidanceConfig
from steerguide.personalization import Personalization


@dataclass
class Counters:
    """What the denoiser did during sampling: forward calls, batch rows through it, and the time spent."""

    denoiser_calls: int = 0
    denoiser_rows: int = 0
    seconds_denoising: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def denoiser_of(pipe) -> torch.nn.Module:
    """The pipeline's denoiser: `pipe.transformer` (SD3, Flux, ...) or `pipe.unet` (SD 1.x/2.x, SDXL)."""
    module = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    if module is None:
        raise TypeError(f"{type(pipe).__name__} has neither a unet nor a transformer")
    return module


def _split(value: Any, rows: int) -> tuple[Any, Any]:
    """Split every tensor whose first dimension is the batch (`rows`) into its two halves."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == rows:
        return value[: rows // 2], value[rows // 2 :]
    if isinstance(value, dict):
        pairs = {k: _split(v, rows) for k, v in value.items()}
        return {k: a for k, (a, _) in pairs.items()}, {k: b for k, (_, b) in pairs.items()}
    if isinstance(value, (list, tuple)):
        pairs = [_split(v, rows) for v in value]
        return type(value)(a for a, _ in pairs), type(value)(b for _, b in pairs)
    return value, value


def _join(first: Any, second: Any) -> Any:
    """Concatenate two outputs of the denoiser (a tensor, a tuple, or a diffusers output) along the batch."""
    if isinstance(first, torch.Tensor):
        return torch.cat([first, second])
    if isinstance(first, tuple):
        return tuple(_join(a, b) for a, b in zip(first, second, strict=True))
    if hasattr(first, "sample"):
        return type(first)(sample=torch.cat([first.sample, second.sample]))
    raise TypeError(f"cannot join denoiser outputs of type {type(first).__name__}")


def _merge(template: Any, first: Any, second: Any, rows: int) -> Any:
    """Inverse of `_split`: [first; second] wherever `template` holds a batched tensor."""
    if isinstance(template, torch.Tensor) and template.ndim > 0 and template.shape[0] == rows:
        return torch.cat([first, second])
    if isinstance(template, dict):
        return {k: _merge(template[k], first[k], second[k], rows) for k in template}
    if isinstance(template, (list, tuple)):
        return type(template)(_merge(t, a, b, rows) for t, a, b in zip(template, first, second, strict=True))
    return template


class GuidedDenoiser:
    """Replaces `denoiser.forward` while installed; see the module docstring."""

    def __init__(self, pipe, personalization: Personalization, config: GuidanceConfig) -> None:
        self.pipe = pipe
        self.personalization = personalization
        self.config = config
        self.denoiser = denoiser_of(pipe)
        self.counters = Counters()
        self.omegas: list[float] = []  # ω used at each guided step (for run.json)
        self._original = self.denoiser.forward
        self._signature = inspect.signature(self._original)
        if personalization.kind == "none" and config.method != "cfg":
            # Without a personalization θ_pre = θ_ft: PG is CFG and AG guides the model with itself.
            raise ValueError(
                f"method {config.method!r} needs a personalization (θ_pre and θ_ft are the same)"
            )

    # -- progress -------------------------------------------------------------------------------
    def progress(self, timestep: Any) -> float:
        """τ: the fraction of the sampling steps done before the step at `timestep`."""
        timesteps = getattr(self.pipe.scheduler, "timesteps", None)
        if timesteps is None or len(timesteps) == 0:
            return 0.0
        t = timestep.flatten()[0] if isinstance(timestep, torch.Tensor) else torch.tensor(timestep)
        index = int(torch.argmin((timesteps.float().cpu() - float(t)).abs()))
        return index / len(timesteps)

    # -- the wrapped call ---------------------------------------------------------------------------
    def _run(self, kwargs: dict, rows: int) -> Any:
        start = time.perf_counter()
        out = self._original(**kwargs)
        if torch.cuda.is_available() and self.denoiser.device.type == "cuda":
            torch.cuda.synchronize()
        self.counters.seconds_denoising += time.perf_counter() - start
        self.counters.denoiser_calls += 1
        self.counters.denoiser_rows += rows
        return out

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        bound = self._signature.bind(*args, **kwargs)
        inputs = dict(bound.arguments)
        extra = inputs.pop(
            next(
                (k for k, p in self._signature.parameters.items() if p.kind is inspect.Parameter.VAR_KEYWORD),
                "__none__",
            ),
            {},
        )
        inputs.update(extra)
        sample_name = next(iter(self._signature.parameters))
        rows = inputs[sample_name].shape[0]
        if not getattr(self.pipe, "do_classifier_free_guidance", False) or rows % 2:
            return self._run(inputs, rows)  # no guidance this call: D_ft(x, c)

        timestep = inputs.get("timestep", inputs.get("t"))
        tau = self.progress(timestep)
        null_half, prompt_half = _split(inputs, rows)
        if not self.config.active_at(tau):
            # Outside the guidance interval the sampler must get D_ft(x, c): run the prompt half only
            # and hand it back as both halves, so that uncond + w·(cond − uncond) = cond.
            out = self._run(prompt_half, rows // 2)
            return _join(out, out)

        method = self.config.method
        omega = self.config.omega_at(tau)
        self.omegas.append(omega)
        if method == "cfg" or omega == 1.0 and method == "pg":
            return self._run(inputs, rows)
        if method == "ag":
            null_half = self.personalization.weak_condition(prompt_half, omega, prompt_side=True)
        else:
            null_half = self.personalization.weak_condition(null_half, omega, prompt_side=False)
        inputs = _merge(inputs, null_half, prompt_half, rows)

        lora = self.personalization.lora
        if lora is not None:
            # One pass over both halves: LoRA scale ω on the first half, 1 on the prompt half.
            with lora.rows([omega] * (rows // 2) + [1.0] * (rows // 2)):
                return self._run(inputs, rows)
        # Tensor deltas: θ_ω and θ_ft cannot share a pass; same rows as CFG, in two calls.
        with self.personalization.denoiser_delta.at(omega):
            first = self._run(null_half, rows // 2)
        second = self._run(prompt_half, rows // 2)
        return _join(first, second)


@contextmanager
def guided(pipe, personalization: Personalization, config: GuidanceConfig) -> Iterator[GuidedDenoiser]:
    """Install `config`'s guidance on `pipe` for the block; yields the wrapper (its `.counters`).

    Call the pipeline inside the block with `guidance_scale=config.scale`.
    """
    wrapper = GuidedDenoiser(pipe, personalization, config)
    denoiser = wrapper.denoiser
    had_instance_forward = "forward" in vars(denoiser)
    previous = vars(denoiser).get("forward")
    denoiser.forward = wrapper
    try:
        yield wrapper
    finally:
        if had_instance_forward:
            denoiser.forward = previous
        else:
            del denoiser.forward
