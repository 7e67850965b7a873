"""One denoiser call over two weight sets: the CFG batch's first half at θ_ω, its second half at θ_ft.

A full fine-tune's θ_ω and θ_ft cannot share a pass the way LoRA row scales do: every layer's weight
differs. `torch.vmap` over a leading dimension of 2 can: the differing tensors are stacked [θ_ω; θ_ft],
the batched inputs are folded to [2, rows/2, ...], and vmap's batching rules run each layer once with both
weight sets (a batched matmul for linear layers, a grouped convolution with groups = 2 for convolutions;
layers whose weights do not differ see both halves as one batch). The result equals the two half-batch
passes up to floating-point reassociation.

The module's own `forward` is called (the one the `guided` gate wraps, not `module(...)`, which would
dispatch to the gate again), with the stacked tensors swapped into the module's parameter slots for the
call, as `torch.func.functional_call` does.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree


@contextmanager
def _swapped(module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """`module`'s parameters and buffers named in `tensors` replaced by them (any tensor, batched too)."""
    saved = []
    try:
        for name, tensor in tensors.items():
            prefix, _, attr = name.rpartition(".")
            owner = module.get_submodule(prefix)
            slots = owner._parameters if attr in owner._parameters else owner._buffers
            saved.append((slots, attr, slots[attr]))
            slots[attr] = tensor
        yield
    finally:
        for slots, attr, original in reversed(saved):
            slots[attr] = original


def run_two_weight_sets(
    forward: Callable[..., Any],
    module: nn.Module,
    stacked: Mapping[str, torch.Tensor],
    inputs: dict[str, Any],
    rows: int,
) -> Any:
    """`forward(**inputs)` with rows [0, rows/2) at weights `stacked[:, 0]` and the rest at `stacked[:, 1]`.

    `stacked` maps parameter names to tensors of shape [2, *parameter.shape]; every tensor of `inputs`
    whose first dimension is `rows` is the CFG batch, split in its two halves; everything else (the
    timestep, flags) is shared. The output has the layout of one full-batch call.
    """
    leaves, spec = pytree.tree_flatten(inputs)
    batched = [i for i, v in enumerate(leaves) if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == rows]
    folded = [leaves[i].reshape(2, rows // 2, *leaves[i].shape[1:]) for i in batched]

    def one_half(weights: dict[str, torch.Tensor], halves: list[torch.Tensor]) -> Any:
        own = list(leaves)
        for i, half in zip(batched, halves, strict=True):
            own[i] = half
        with _swapped(module, weights):
            return forward(**pytree.tree_unflatten(own, spec))

    with warnings.catch_warnings():
        # Ops without a batching rule (the CPU flash-attention kernel) run once per half, as two passes
        # would; torch warns about it at every call.
        warnings.filterwarnings("ignore", message="There is a performance drop", category=UserWarning)
        out = torch.vmap(one_half)(dict(stacked), folded)
    return pytree.tree_map(
        lambda t: t.reshape(rows, *t.shape[2:]) if isinstance(t, torch.Tensor) and t.ndim >= 2 else t, out
    )
