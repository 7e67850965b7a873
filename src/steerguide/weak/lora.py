"""Per-row LoRA scales: θ_ω for some rows of a batch and θ_ft for the others, in one forward pass.

A peft LoRA layer computes `base(x) + Σ_adapters lora_B(lora_A(dropout(x))) · scaling`. The delta of one
adapter is linear in the output of its `lora_A` (and of its `lora_B`), so multiplying that output row by
row by ω_row gives exactly the layer of θ_pre + ω_row · Δ for each row, where θ_pre keeps every other
adapter (a style LoRA is part of the pretrained model the user guides with). A forward hook does it, on
the personalization adapter's `lora_A` (r channels: the cheapest place), or on its `lora_B` when B
carries a bias (which A's scale would not reach). The hooks are no-ops outside `rows(...)` and `at(...)`.

This holds only while the adapter is computed from its factors: `row_scalable` says when it is not
(merged into the base weights by `fuse_lora`, DoRA, LoHa/LoKr, inactive).

DoRA, LoHa and LoKr layers, unmerged, also add to the layer's output a term linear in x: DoRA adds
(m/‖W + sBA‖ − 1)·(its input's base output) + (m/‖W + sBA‖)·sBA·x (peft's `lora_magnitude_vector` module
computes that whole term), LoHa/LoKr add ΔW·x (`_get_delta_activations`). That term is (W_ft − W_pre)·x for
the layer's effective weights, so scaling it by ω is exactly the layer at θ_pre + ω·Δ in weight space,
with nothing merged: `AdapterOutputDelta` does that, and the pipeline keeps computing θ_ft as diffusers
does (`set_adapters` weights, `cross_attention_kwargs` scales, the active order, `unload_lora_weights`).
Only what neither reaches (a fused adapter, other peft tuner types) goes through `weak.merged`.
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


def tuner_kind(layer: nn.Module) -> str:
    """peft's name for the layer's adapter type ("LoHa", "LoKr", "OFT", ...): its tuner package."""
    package = type(layer).__module__.split(".")
    name = package[-2] if len(package) > 2 and package[-1] == "layer" else type(layer).__name__
    return {"loha": "LoHa", "lokr": "LoKr", "lora": "LoRA"}.get(name, name.upper())


def row_scalable(module: nn.Module, adapter: str) -> str | None:
    """None when `adapter` is a plain, active, unmerged LoRA wherever it sits in `module`; else why not."""
    from peft.tuners.lora import LoraLayer

    for layer in tuner_layers(module, adapter):
        if not isinstance(layer, LoraLayer) or adapter not in layer.lora_A:
            return f"{tuner_kind(layer)} adapter"
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


def output_scalable(module: nn.Module, adapter: str) -> str | None:
    """None when every layer carrying `adapter` is an unmerged, active plain LoRA, DoRA (linear or conv)
    or LoHa/LoKr layer, whose adapter output `AdapterOutputDelta` can scale; else why not."""
    from peft.tuners.lora import LoraLayer
    from peft.tuners.lycoris_utils import LycorisLayer

    for layer in tuner_layers(module, adapter):
        if layer.merged:
            return "merged"
        if adapter not in layer.active_adapters or layer.disable_adapters:
            return "inactive"
        if isinstance(layer, LycorisLayer):
            continue
        if not isinstance(layer, LoraLayer) or adapter not in layer.lora_A:
            return f"{tuner_kind(layer)} adapter"
        if adapter in getattr(layer, "lora_embedding_A", {}):
            return "embedding LoRA"
    return None


def _is_dora(layer: nn.Module, adapter: str) -> bool:
    return adapter in getattr(layer, "lora_magnitude_vector", {})


class RowScaledLora:
    """Hooks the `adapter` LoRA layers of `modules` so that each batch row can get its own scale of it."""

    def __init__(self, *modules: nn.Module, adapter: str) -> None:
        self.adapter = adapter
        self._row_scale: torch.Tensor | None = None
        self._handles = []
        self.num_layers = 0
        for module in modules:
            for layer in tuner_layers(module, adapter):
                self._hook(layer)
                self.num_layers += 1

    def _hook(self, layer: nn.Module) -> None:
        lora_b = layer.lora_B[self.adapter]
        target = lora_b if getattr(lora_b, "bias", None) is not None else layer.lora_A[self.adapter]
        self._handles.append(target.register_forward_hook(self._scale_rows))

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

    def release(self) -> None:
        """Nothing is cached for LoRA scales."""

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class _Unwrap:
    """Handle taking an instance-level `_get_delta_activations` wrapper off its layer again."""

    def __init__(self, layer: nn.Module, wrapper) -> None:
        self.layer, self.wrapper = layer, wrapper

    def remove(self) -> None:
        if vars(self.layer).get("_get_delta_activations") is self.wrapper:
            del vars(self.layer)["_get_delta_activations"]


class AdapterOutputDelta(RowScaledLora):
    """θ_ω = θ_pre + ω·Δ for a DoRA, LoHa or LoKr adapter (or a plain LoRA), unmerged: the adapter's whole
    output term is scaled by ω (see the module docstring), in a call of its own, as `ParameterDelta` is.

    DoRA: a hook on the output of the layer's magnitude module (which computes DoRA's whole term, so the
    LoRA factors inside it are not scaled again); LoHa/LoKr: the layer's `_get_delta_activations`, wrapped
    on the instance for this adapter only; a plain LoRA: its factor, as `RowScaledLora`.
    """

    def _hook(self, layer: nn.Module) -> None:
        from peft.tuners.lycoris_utils import LycorisLayer

        adapter = self.adapter
        if isinstance(layer, LycorisLayer):
            inner = layer._get_delta_activations

            def scaled(adapter_name, x, *args, **kwargs):
                out = inner(adapter_name, x, *args, **kwargs)
                if adapter_name != adapter:
                    return out
                scaled_out = self._scale_rows(layer, (x,), out)
                return out if scaled_out is None else scaled_out

            vars(layer)["_get_delta_activations"] = scaled
            self._handles.append(_Unwrap(layer, scaled))
        elif _is_dora(layer, adapter):
            self._handles.append(layer.lora_magnitude_vector[adapter].register_forward_hook(self._scale_rows))
        else:
            super()._hook(layer)
        self.names.append(type(layer).__name__)

    def __init__(self, *modules: nn.Module, adapter: str) -> None:
        self.names: list[str] = []  # one entry per layer carrying the adapter (empty: nothing differs)
        super().__init__(*modules, adapter=adapter)

    numel = 0
    held_bytes = 0  # nothing is materialized

    def restore(self) -> None:
        self.remove()
