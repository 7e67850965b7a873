"""Which realization of θ_ω a denoiser call runs, chosen in one place for both engines and the guiders.

`Personalization.prepare` builds a realization for the adapter's current state and `Personalization.
weak_model` hands it out; every realization is a `WeakModel`: within `at(ω)` the module computes with
θ_ω = θ_pre + ω·Δ. A call of its own (the separate-pass engine's negative call, a guider's weak batch)
takes `weak_at`; the batched engine's call over [weak half; prompt half] takes `batched_plan`'s way:

    ROWS       a plain LoRA (`RowScaledLora`): one call, LoRA scale ω on the weak rows, 1 on the prompt rows
    SAME       θ_ω = θ_ft (ω = 1, or no tensor differs): one call, as it stands
    STACKED    a tensor delta run in one call over both weight sets (`ParameterDelta.passes_on` = 1)
    TWO_CALLS  θ_ω swapped in for the weak half's own call (tensor deltas, merged adapters, DoRA/LyCORIS
               layer outputs), then θ_ft for the prompt half: the same rows as CFG
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

import torch

from steerguide.weak.delta import ParameterDelta
from steerguide.weak.lora import AdapterOutputDelta, RowScaledLora

ROWS, SAME, STACKED, TWO_CALLS = "rows", "same", "stacked", "two calls"


class WeakModel(Protocol):
    """θ_ω realized on a module (a LoRA's scales, θ_pre tensors, an adapter's output term)."""

    def at(self, omega: float) -> AbstractContextManager[None]:
        """Within the block the module computes with θ_ω."""
        ...


def weak_at(weak: WeakModel | None, omega: float) -> AbstractContextManager[None]:
    """θ_ω for a call of its own; nothing to switch where θ_ω = θ_ft (ω = 1, or no realization: Δ = 0)."""
    if weak is None or omega == 1.0:
        return nullcontext()
    return weak.at(omega)


def batched_plan(weak: WeakModel | None, omega: float, device: torch.device) -> str:
    """How one batched call [weak half; prompt half] runs θ_ω and θ_ft (see the module docstring)."""
    if isinstance(weak, RowScaledLora) and not isinstance(weak, AdapterOutputDelta):
        return ROWS  # per-row scales cost nothing, ω = 1 included
    if weak is None or omega == 1.0 or not getattr(weak, "names", ()):
        return SAME
    if isinstance(weak, ParameterDelta) and weak.passes_on(device) == 1:
        # an unmerged DoRA/LyCORIS adapter (`AdapterOutputDelta`) has no tensors to stack: two calls
        return STACKED
    return TWO_CALLS
