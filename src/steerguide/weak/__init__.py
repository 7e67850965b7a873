"""How the weak model θ_ω = θ_pre + ω·Δ is realized, at no extra cost over CFG.

- `lora.RowScaledLora`: the personalization is a LoRA; both halves of the CFG batch run in one forward
  pass with a per-row LoRA scale (ω for the null half, 1 for the prompt half).
- `delta.ParameterDelta`: the personalization is a set of fine-tuned tensors (full or partial); θ_ω is
  materialized once per distinct ω and swapped in for the null half.
"""

from typing import TYPE_CHECKING

from steerguide.lazy import lazy_attributes

_WHERE = {"ParameterDelta": "steerguide.weak.delta", "RowScaledLora": "steerguide.weak.lora"}
__all__ = [
    "ParameterDelta",
    "RowScaledLora",
]
__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)

if TYPE_CHECKING:
    from steerguide.weak.delta import ParameterDelta
    from steerguide.weak.lora import RowScaledLora
