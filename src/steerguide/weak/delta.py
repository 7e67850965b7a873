"""θ_ω for full and partial fine-tunes: keep θ_pre only for the tensors that differ, swap θ_ω in.

The module holds θ_ft. For the tensors that differ we keep θ_pre (the same memory as Δ = θ_ft − θ_pre)
and materialize θ_ω = lerp(θ_pre, θ_ft, ω) once per distinct ω; `at(ω)` swaps those tensors in for the
duration of a forward pass (a pointer swap, no copy). `torch.lerp` returns θ_pre exactly at ω = 0 and
θ_ft exactly at ω = 1, so the endpoints reproduce the pretrained model and CFG bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn


class ParameterDelta:
    """The difference between a fine-tuned module and its pretrained weights, for the tensors that differ."""

    def __init__(self, module: nn.Module, pretrained: Mapping[str, torch.Tensor]) -> None:
        """`module` carries θ_ft; `pretrained` maps parameter names to θ_pre for (at least) those that differ."""
        params = dict(module.named_parameters())
        buffers = dict(module.named_buffers())
        self._tensors: dict[str, torch.Tensor] = {}
        self._pre: dict[str, torch.Tensor] = {}
        for name, pre in pretrained.items():
            tensor = params.get(name, buffers.get(name))
            if tensor is None:
                raise KeyError(name)
            pre = pre.to(device=tensor.device, dtype=tensor.dtype)
            if not torch.equal(pre, tensor.data):
                self._tensors[name] = tensor
                self._pre[name] = pre
        self._cache: tuple[float, dict[str, torch.Tensor]] | None = None

    @property
    def names(self) -> list[str]:
        return list(self._pre)

    @property
    def numel(self) -> int:
        return sum(t.numel() for t in self._pre.values())

    def weights(self, omega: float) -> dict[str, torch.Tensor]:
        """θ_ω for the differing tensors; the last ω is cached (a constant ω is materialized once).

        The previous θ_ω is dropped before the next one is built, so at most one is held at a time.
        """
        if self._cache is not None and self._cache[0] == omega:
            return self._cache[1]
        self._cache = None
        if omega == 1.0:
            weights = {name: t.data for name, t in self._tensors.items()}
        elif omega == 0.0:
            weights = dict(self._pre)
        else:
            weights = {name: torch.lerp(self._pre[name], t.data, omega) for name, t in self._tensors.items()}
        self._cache = (omega, weights)
        return weights

    def release(self) -> None:
        """Drop the cached θ_ω (sampling is over)."""
        self._cache = None

    def restore(self) -> None:
        """Put θ_pre back into the module for good (the personalization is being unloaded)."""
        self._cache = None
        for name, t in self._tensors.items():
            t.data = self._pre[name]
        self._tensors.clear()
        self._pre.clear()

    @property
    def held_bytes(self) -> int:
        """Bytes held to realize θ_ω: θ_pre of the differing tensors and the cached θ_ω (if any)."""
        tensors = {id(t): t for t in self._pre.values()}
        if self._cache is not None and self._cache[0] not in (0.0, 1.0):
            tensors.update({id(t): t for t in self._cache[1].values()})
        return sum(t.numel() * t.element_size() for t in tensors.values())

    @contextmanager
    def at(self, omega: float) -> Iterator[None]:
        """Within the block the module computes with θ_ω; θ_ft is back afterwards, whatever happens."""
        if omega == 1.0 or not self._tensors:
            yield
            return
        weights = self.weights(omega)
        fine_tuned = {name: t.data for name, t in self._tensors.items()}
        try:
            for name, t in self._tensors.items():
                t.data = weights[name]
            yield
        finally:
            for name, t in self._tensors.items():
                t.data = fine_tuned[name]
