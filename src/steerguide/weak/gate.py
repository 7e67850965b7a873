"""Guarding state on modules that pipelines share while `guided` blocks use them.

LoRA row scales and θ_ω swaps are state on the denoiser and text encoder modules, which several pipelines
(txt2img and img2img built from one another) and several threads may share. While any `guided` block
uses a module, its `forward` is a `Gate`: a reference-counted `StandIn` (the last user to leave, in
whatever order, puts the original back), holding a per-module re-entrant lock during every call, and
dispatching each thread's calls to the innermost guidance that thread installed (or to the plain module).
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from steerguide.weak.stand_in import StandIn


class Gate(StandIn):
    """Stands in for a module's `forward` while any `guided` block uses the module (see the docstring)."""

    attribute = "forward"

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__(module)
        self.lock = threading.RLock()
        self.local = threading.local()

    def stack(self) -> list:
        if not hasattr(self.local, "stack"):
            self.local.stack = []
        return self.local.stack

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            stack = self.stack()
            if stack:
                return stack[-1](*args, **kwargs)
            return self.original(*args, **kwargs)


def module_lock(module: torch.nn.Module) -> threading.RLock | None:
    """The lock of `module`'s gate while a `guided` block uses it (None otherwise)."""
    gate = vars(module).get("forward")
    return gate.lock if isinstance(gate, Gate) else None
