"""What a loaded personalization is: its kind, where it came from, and how θ_ω is realized for it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from steerguide.weak import ParameterDelta, RowScaledLora

KINDS = ("none", "lora", "full", "partial")


@dataclass
class Personalization:
    """A personalization installed on a pipeline, ready for guidance.

    Attributes:
        kind: "none" (the base model alone), "lora", "full" (every tensor may differ) or "partial"
            (a subset of tensors differs, e.g. Custom Diffusion's cross-attention k/v).
        source: the file or folder it was loaded from.
        lora: per-row LoRA scales on the denoiser (kind "lora").
        denoiser_delta: θ_pre of the differing denoiser tensors (kinds "full" and "partial").
        weak_condition_fn: when the text encoder is personalized too, recomputes the weak half's
            condition with the text encoder at θ_ω: `fn(inputs, omega, prompt_side) -> inputs`, for
            the negative prompt (PG) or the prompt (AG).
        info: what the loader found (format, tensors that differ, tokens added, ...), for run.json.
    """

    kind: str = "none"
    source: str | None = None
    lora: RowScaledLora | None = None
    denoiser_delta: ParameterDelta | None = None
    weak_condition_fn: Callable[[dict, float, bool], dict] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def weak_condition(self, inputs: dict, omega: float, prompt_side: bool) -> dict:
        """The first half's denoiser inputs for the weak model θ_ω (unchanged unless a text encoder differs)."""
        if self.weak_condition_fn is None or omega == 1.0:
            return inputs
        return self.weak_condition_fn(inputs, omega, prompt_side)

    def describe(self) -> dict:
        return {"kind": self.kind, "source": self.source, **self.info}
