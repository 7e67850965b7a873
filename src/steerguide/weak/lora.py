"""Per-row LoRA scales: θ_ω for some rows of a batch and θ_ft for the others, in one forward pass.

A peft LoRA layer computes `base(x) + Σ_adapters lora_B(lora_A(dropout(x))) · scaling`. The delta of one
adapter is linear in the output of its `lora_A` (and of its `lora_B`), so multiplying that output row by
row by ω_row gives exactly the layer of θ_pre + ω_row · Δ for each row, where θ_pre keeps every other
adapter (a style LoRA is part of the pretrained model the user guides with). A forward hook does it, on
the personalization adapter's `lora_A` (r channels: the cheapest place), or on its `lora_B` when B
carries a bias (which A's scale would not reach). The hooks are no-ops outside `rows(...)` and `at(...)`.

This holds only while the adapter is computed from its factors: `row_scalable` says when it is not
(merged into the base weights by `fuse_lora`, DoRA, LoHa/LoKr, inactive), and `weak.merged` takes over.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def tuner_layers(module: nn.Module, adapter: str | None = None) -> list[nn.Module]:
    """peft adapter layers (LoRA, LoHa, LoKr, ...) inside `module`; with `adapter`, those carrying it."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = []
    for m in module.modules():
        if not isinstance(m, BaseTunerLayer):
            continue
        names = [k for n in m.adapter_layer_names for k in getattr(m, n, {})]
        if names and (adapter is None or adapter in names):
            layers.append(m)
    return layers


def lora_layers(module: nn.Module) -> list[nn.Module]:
    """The peft LoRA layers inside `module` (empty when it carries no LoRA)."""
    from peft.tuners.lora import LoraLayer

    return [m for m in module.modules() if isinstance(m, LoraLayer) and len(m.lora_A) > 0]


def row_scalable(module: nn.Module, adapter: str) -> str | None:
    """None when `adapter` is a plain, active, unmerged LoRA wherever it sits in `module`; else why not."""
    from peft.tuners.lora import LoraLayer

    for layer in tuner_layers(module, adapter):
        if not isinstance(layer, LoraLayer) or adapter not in layer.lora_A:
            return f"{type(layer).__name__} adapter"
        if adapter in getattr(layer, "lora_variant", {}) or getattr(layer, "use_dora", {}).get(adapter):
            return "DoRA"
        if adapter in getattr(layer, "lora_embedding_A", {}):
            return "embedding LoRA"
        if layer.merged:
            return "merged"
        if adapter not in layer.active_adapters or layer.disable_adapters:
            return "inactive"
    return None


def adapter_active(module: nn.Module, adapter: str) -> bool:
    """Whether every layer carrying `adapter` computes it (active and enabled, merged or not)."""
    layers = tuner_layers(module, adapter)
    return bool(layers) and all(
        (adapter in layer.active_adapters or adapter in layer.merged_adapters) and not layer.disable_adapters
        for layer in layers
    )


class RowScaledLora:
    """Hooks the `adapter` LoRA layers of `modules` so that each batch row can get its own scale of it."""

    def __init__(self, *modules: nn.Module, adapter: str) -> None:
        self.adapter = adapter
        self._row_scale: torch.Tensor | None = None
        self._handles = []
        self.num_layers = 0
        for module in modules:
            for layer in tuner_layers(module, adapter):
                lora_b = layer.lora_B[adapter]
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
    def at(self, omega: float) -> Iterator[None]:
        """Within the block every row is computed with LoRA scale `omega` (the module is θ_ω)."""
        self._row_scale = torch.tensor(float(omega))
        try:
            yield
        finally:
            self._row_scale = None

    uniform = at

    def release(self) -> None:
        """Nothing is cached for LoRA scales."""

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
