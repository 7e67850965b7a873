"""Guarding state on modules that pipelines share while `guided` blocks use them.

LoRA row scales and θ_ω swaps are state on the denoiser and text encoder modules, which several pipelines
(txt2img and img2img built from one another) and several threads may share. While any `guided` block
uses a module, its `forward` is a `Gate`: reference-counted (the last user to leave, in whatever order,
puts the original back), holding a per-module re-entrant lock during every call, and dispatching each
thread's calls to the innermost guidance that thread installed (or to the plain module).
"""

from __future__ import annotations

import threading
from typing import Any

import torch


class Gate:
    """Stands in for a module's `forward` while any `guided` block uses the module (see the docstring)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.lock = threading.RLock()
        self.users = 0
        self.local = threading.local()
        self.had_instance_forward = "forward" in vars(module)
        self.previous = vars(module).get("forward")
        self.original = module.forward

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


_GATES_LOCK = threading.Lock()


def enter_gate(module: torch.nn.Module) -> Gate:
    with _GATES_LOCK:
        gate = vars(module).get("forward")
        if not isinstance(gate, Gate):
            gate = Gate(module)
            module.forward = gate
        gate.users += 1
        return gate


def exit_gate(gate: Gate) -> None:
    with _GATES_LOCK:
        gate.users -= 1
        if gate.users == 0:
            if gate.had_instance_forward:
                gate.module.forward = gate.previous
            else:
                del gate.module.forward


def module_lock(module: torch.nn.Module) -> threading.RLock | None:
    """The lock of `module`'s gate while a `guided` block uses it (None otherwise)."""
    gate = vars(module).get("forward")
    return gate.lock if isinstance(gate, Gate) else None
