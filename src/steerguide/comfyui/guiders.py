"""PG and AG as ComfyUI GUIDERs (for SamplerCustomAdvanced): CFG's one batched call, ω on the weak rows.

Both are ComfyUI's CFGGuider with two changes in `predict_noise`:
- the step's ω goes into `transformer_options` (lora_rows.OMEGA_KEY), where the model's row-scaled LoRA
  reads it for the rows of the negative chunk; the positive rows keep the LoRA at 1;
- for a full fine-tune (finetune.py) the weak conditioning carries ComfyUI's weight hook to θ_ω instead;
- outside the guidance interval the step is unguided (the positive prediction alone), as for
  steerguide's diffusers guiders.
PG:  D = D_ω(x, negative) + cfg · (D_ft(x, positive) − D_ω(x, negative))
AG:  D = D_ω(x, positive) + cfg · (D_ft(x, positive) − D_ω(x, positive))   (the weak model on the prompt)

The step index i of an evaluation at σ is the last i with σ_i ≥ σ among the sampler's sigmas σ_0..σ_N
(N steps); ω is the schedule at τ = i/N, and guidance runs where int(start·N) ≤ i < int(stop·N).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import comfy.samplers
import torch

from steerguide.comfyui.finetune import has_finetune_base, weak_conditioning
from steerguide.comfyui.lora_rows import OMEGA_KEY
from steerguide.errors import UserError
from steerguide.guidance import step_in_interval
from steerguide.schedules import Constant


def step_of(sigmas: torch.Tensor, sigma: torch.Tensor) -> tuple[int, int]:
    """(i, N): the sampling step an evaluation at `sigma` belongs to, and the number of steps."""
    s = float(sigma.reshape(-1)[0])
    levels = sigmas.reshape(-1).float().tolist()
    n = max(len(levels) - 1, 1)
    tol = 1e-5 * max(abs(s), 1e-8)
    i = sum(1 for level in levels[:-1] if level >= s - tol) - 1
    return min(max(i, 0), n - 1), n


class PersonalizationGuider(comfy.samplers.CFGGuider):
    """PG (weak_on_prompt=False) or AG (True) with the weak model θ_ω from the row-scaled personalization."""

    def __init__(self, model_patcher, omega: Callable[[float], float], start: float = 0.0,
                 stop: float = 1.0, weak_on_prompt: bool = False):
        super().__init__(model_patcher)
        self.omega = omega
        self.start, self.stop = start, stop
        self.weak_on_prompt = weak_on_prompt

    def set_conds(self, positive, negative=None):
        """PG: the weak rows are `negative`. AG: the prompt again, or `negative` when given (the prompt
        encoded by the text encoder at θ_ω, for a LoRA that reaches it)."""
        weak = (negative if negative is not None else positive) if self.weak_on_prompt else negative
        if has_finetune_base(self.model_patcher):  # θ_ω by ComfyUI's weight hook on the weak rows
            if not isinstance(self.omega, Constant):
                raise UserError("a full fine-tune takes a constant omega (each ω value is its own weights)")
            weak = weak_conditioning(self.model_patcher, weak, self.omega.value)
        self.inner_set_conds({"positive": positive, "negative": weak})

    def omega_at(self, model_options: dict, timestep: torch.Tensor) -> float | None:
        """ω for this evaluation, or None where the step is outside the guidance interval."""
        sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
        if sigmas is None:  # not inside a sampler run: every step is guided
            return float(self.omega(0.0))
        i, n = step_of(sigmas, timestep)
        if not step_in_interval(i, n, self.start, self.stop):
            return None
        return float(self.omega(i / n))

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 (ComfyUI's signature)
        omega = self.omega_at(model_options, timestep)
        positive, weak = self.conds.get("positive"), self.conds.get("negative")
        if omega is None or math.isclose(self.cfg, 1.0):
            return comfy.samplers.sampling_function(self.inner_model, x, timestep, None, positive, 1.0,
                                                    model_options=model_options, seed=seed)
        options = dict(model_options)
        options["transformer_options"] = {**model_options.get("transformer_options", {}), OMEGA_KEY: omega}
        return comfy.samplers.sampling_function(self.inner_model, x, timestep, weak, positive, self.cfg,
                                                model_options=options, seed=seed)
