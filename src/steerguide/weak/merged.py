"""θ_ω for adapters that per-row scales cannot reach: merge the adapter, keep θ_pre, lerp.

A LoRA fused into the base weights (`pipe.fuse_lora()`), DoRA (whose weight normalization is not linear
in the LoRA output) and LyCORIS adapters (LoHa, LoKr: products of factors) are realized in weight space,
which is exactly θ_ω = θ_pre + ω·Δ with Δ = θ_ft − θ_pre: the adapter is merged into its layers' base
weights (θ_ft), their values without it are kept (θ_pre), and `ParameterDelta` swaps lerp(θ_pre, θ_ft, ω)
in for the weak half: two calls per step, the rows of CFG.

peft computes no unmerged adapter in a layer once one is merged, so the other active adapters of those
layers are merged too, first: they stay part of θ_pre, as they are part of θ_ft.
"""

from __future__ import annotations

import torch
from torch import nn

from steerguide.errors import UserError, first_line
from steerguide.weak.delta import ParameterDelta
from steerguide.weak.lora import tuner_layers


def _adapters_of(layer: nn.Module) -> set[str]:
    return {k for n in layer.adapter_layer_names for k in getattr(layer, n, {})}


def _base_tensors(layer: nn.Module) -> list[torch.nn.Parameter]:
    base = layer.get_base_layer()
    return [p for p in (getattr(base, "weight", None), getattr(base, "bias", None)) if p is not None]


def _merge(layer: nn.Module, names: list[str], what: str) -> None:
    if not names:
        return
    try:
        layer.merge(adapter_names=names)
    except (RuntimeError, ValueError) as e:
        first = first_line(e) or type(e).__name__
        raise UserError(f"cannot merge adapter {what} into its base weights: {first[:200]}") from None


def merged_adapter_delta(module: nn.Module, adapter: str) -> ParameterDelta:
    """Merge `adapter` into `module`'s base weights (if it is not already) and return θ_pre for them."""
    names = {id(p): n for n, p in module.named_parameters()}
    pre: dict[str, torch.Tensor] = {}
    for layer in tuner_layers(module, adapter):
        if adapter in layer.merged_adapters:  # fused by the user: take every merge back, redo it in order
            merged = list(layer.merged_adapters)
            layer.unmerge()
            others = [a for a in merged if a != adapter]
        else:
            others = [
                a
                for a in layer.active_adapters
                if a != adapter and a in _adapters_of(layer) and a not in layer.merged_adapters
            ]
        _merge(layer, others, repr(others))
        before = [p.data.clone() for p in _base_tensors(layer)]
        _merge(layer, [adapter], repr(adapter))
        for p, value in zip(_base_tensors(layer), before, strict=True):
            if not torch.equal(p.data, value):
                pre[names[id(p)]] = value
    return ParameterDelta(module, pre)


def merge_state(module: nn.Module, adapter: str) -> tuple:
    """What the layers carrying `adapter` have merged (to notice `fuse_lora`/`unfuse_lora` in between)."""
    return tuple(tuple(layer.merged_adapters) for layer in tuner_layers(module, adapter))


def unmerge_adapter(module: nn.Module, adapter: str) -> None:
    """Take `adapter` out of the base weights where it is merged; other merged adapters stay merged."""
    for layer in tuner_layers(module, adapter):
        if adapter in layer.merged_adapters:
            merged = list(layer.merged_adapters)
            layer.unmerge()
            _merge(layer, [a for a in merged if a != adapter], "(re-merge)")
