"""θ_ω for full and partial fine-tunes: keep θ_pre only for the tensors that differ, swap θ_ω in.

The module holds θ_ft. For the tensors that differ we keep θ_pre (the same memory as Δ = θ_ft − θ_pre)
and materialize θ_ω = lerp(θ_pre, θ_ft, ω) once per distinct ω; `at(ω)` swaps those tensors in for the
duration of a forward pass (a pointer swap, no copy). `torch.lerp` returns θ_pre exactly at ω = 0 and
θ_ft exactly at ω = 1, so the endpoints reproduce the pretrained model and CFG bit for bit.

For the one-pass path (`weak.batched`) `stacked(ω)` gives [θ_ω; θ_ft] per differing tensor instead: one
buffer of twice their size per sampling run (θ_ft copied in once, θ_ω rewritten in place when ω moves),
one more copy of the differing tensors than the two-pass path holds. `passes` chooses between the paths.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

# Which path `passes = "auto"` takes, by device type. CPU: two passes, measured at SD 1.5's UNet
# configuration (docs/results.md, "PG on a full fine-tune in one pass"): 1.14× CFG against one pass's
# 1.30× at 4 prompts, within noise of each other at 1. CUDA: two passes until benchmarks/gpu/run.sh has
# timed both on a GPU (none was lent when the one-pass path was written); the one-pass path also holds
# one more copy of the differing tensors, which matters most there.
AUTO_PASSES = {"cpu": 2, "cuda": 2}


class ParameterDelta:
    """The difference between a fine-tuned module and its pretrained weights, for the tensors that differ.

    `passes`: how a CFG batch runs θ_ω on its first half and θ_ft on its second: 2 (two half-batch calls,
    θ_ω swapped in for the first), 1 (one call over both weight sets, `weak.batched`), or "auto" (by
    device type, `AUTO_PASSES`).
    """

    passes: int | str = "auto"

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
        self._stacked: tuple[float, dict[str, torch.Tensor]] | None = None

    def passes_on(self, device: torch.device) -> int:
        """1 or 2: the path a CFG batch takes on `device` (see `passes`)."""
        if self.passes == "auto":
            return AUTO_PASSES.get(device.type, 2)
        if self.passes not in (1, 2):
            raise ValueError(f"passes must be 1, 2 or 'auto', got {self.passes!r}")
        return int(self.passes)

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
        self._stacked = None
        if omega == 1.0:
            weights = {name: t.data for name, t in self._tensors.items()}
        elif omega == 0.0:
            weights = dict(self._pre)
        else:
            weights = {name: torch.lerp(self._pre[name], t.data, omega) for name, t in self._tensors.items()}
        self._cache = (omega, weights)
        return weights

    def stacked(self, omega: float) -> dict[str, torch.Tensor]:
        """[θ_ω; θ_ft] for the differing tensors (shape [2, *shape]), for one pass over both weight sets.

        The buffer lives until `release`; a new ω rewrites its first half in place (no second buffer), and
        the two-pass cache is dropped first so that at most one realization of θ_ω is held.
        """
        if self._stacked is not None and self._stacked[0] == omega:
            return self._stacked[1]
        self._cache = None
        if self._stacked is None:
            buffers = {}
            for name, t in self._tensors.items():
                buffers[name] = torch.empty((2, *t.shape), dtype=t.dtype, device=t.device)
                buffers[name][1].copy_(t.data)
        else:
            buffers = self._stacked[1]
        for name, t in self._tensors.items():
            if omega == 0.0:
                buffers[name][0].copy_(self._pre[name])
            else:
                torch.lerp(self._pre[name], t.data, omega, out=buffers[name][0])
        self._stacked = (omega, buffers)
        return buffers

    def release(self) -> None:
        """Drop the cached θ_ω (sampling is over)."""
        self._cache = None
        self._stacked = None

    def restore(self) -> None:
        """Put θ_pre back into the module for good (the personalization is being unloaded)."""
        self.release()
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
        if self._stacked is not None:
            tensors.update({id(t): t for t in self._stacked[1].values()})
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
