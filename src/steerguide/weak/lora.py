"""Per-row LoRA scales: θ_ω for some rows of a batch and θ_ft for the others, in one forward pass.

A peft LoRA layer computes `base(x) + lora_B(lora_A(dropout(x))) · scaling`. The delta is linear in the
output of `lora_A` (and of `lora_B`), so multiplying that output row by row by ω_row gives exactly the
layer of θ_pre + ω_row · Δ for each row. A forward hook does it, on `lora_A` whose output has only r
channels (the cheapest place), or on `lora_B` when B carries a bias (which A's scale would not reach).
The hooks are no-ops outside `RowScaledLora.rows(...)` and `.uniform(...)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from steerguide.errors import UserError


def lora_layers(module: nn.Module) -> list[nn.Module]:
    """The peft LoRA layers inside `module` (empty when it carries no LoRA)."""
    from peft.tuners.lora import LoraLayer

    return [m for m in module.modules() if isinstance(m, LoraLayer) and len(m.lora_A) > 0]


class RowScaledLora:
    """Hooks the LoRA layers of `modules` so that each batch row can get its own LoRA scale."""

    def __init__(self, *modules: nn.Module) -> None:
        self._row_scale: torch.Tensor | None = None
        self._handles = []
        self.num_layers = 0
        for module in modules:
            for layer in lora_layers(module):
                if any(getattr(layer, "use_dora", {}).values()):
                    raise UserError("DoRA adapters are not linear in the LoRA output; PG needs a plain LoRA")
                if len(getattr(layer, "lora_embedding_B", {})) > 0:
                    raise UserError("LoRA on embedding layers inside the denoiser is not supported by PG")
                for adapter, lora_b in layer.lora_B.items():
                    target = lora_b if getattr(lora_b, "bias", None) is not None else layer.lora_A[adapter]
                    self._handles.append(target.register_forward_hook(self._scale_rows))
                self.num_layers += 1

    def _scale_rows(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor | None:
        scale = self._row_scale
        if scale is None:
            return None
        if scale.ndim == 0:
            return output * scale.to(device=output.device, dtype=output.dtype)
        if output.shape[0] != scale.shape[0]:
            raise RuntimeError(
                f"a LoRA layer saw a batch of {output.shape[0]} rows where {scale.shape[0]} were scaled; "
                "this layer does not keep the batch in its first dimension"
            )
        return output * scale.to(device=output.device, dtype=output.dtype).view(
            -1, *([1] * (output.ndim - 1))
        )

    @contextmanager
    def rows(self, scales: torch.Tensor | list[float]) -> Iterator[None]:
        """Within the block, row i of every batch is computed with LoRA scale `scales[i]`."""
        self._row_scale = torch.as_tensor(scales, dtype=torch.float32)
        try:
            yield
        finally:
            self._row_scale = None

    @contextmanager
    def uniform(self, scale: float) -> Iterator[None]:
        """Within the block every row is computed with LoRA scale `scale`."""
        self._row_scale = torch.tensor(float(scale))
        try:
            yield
        finally:
            self._row_scale = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
