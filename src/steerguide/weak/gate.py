"""Guarding state on modules that pipelines share while `guided` blocks use them.

LoRA row scales and θ_ω swaps are state on the denoiser and text encoder modules, which several pipelines
(txt2img and img2img built from one another) and several threads may share. While any `guided` block
uses a module, its `forward` is a `Gate`: a reference-counted `StandIn` (the last user to leave, in
whatever order, puts the original back), dispatching each call to the innermost guidance of its thread
that owns it (`owns_call`: the block's pipeline is the one calling), or to the plain module.

Every call of a guarded module, through the gate or not, holds the module's re-entrant lock: a `Guard`
(forward pre-hook and hook, registered once per module and kept) takes it for each call made while a
block uses the module, counts the calls that started before, and a block starts only when those of
other threads have finished. It is registered when a personalization is loaded (`guard_modules`), so
that calls already under way when the first block starts are counted too. So a call that resolved `forward` before the gate was installed never runs
while another call has row scales or θ_ω in place.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from steerguide.weak.stand_in import StandIn


class Guard:
    """The per-module lock, and the calls in flight that started while no `guided` block used the module."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.lock = threading.RLock()
        self._state = threading.Condition()
        self._blocks = 0
        self._unlocked: dict[int, int] = {}  # thread id → calls under way that did not take the lock
        self._local = threading.local()  # per thread: for each call under way, whether it took the lock
        module.register_forward_pre_hook(self._before)
        module.register_forward_hook(self._after, always_call=True)

    def __deepcopy__(self, memo) -> Guard:
        return self  # a copied module shares its original's lock (a lock cannot be copied)

    @classmethod
    def of(cls, module: torch.nn.Module) -> Guard:
        with _GUARDS_LOCK:
            guard = vars(module).get("_steerguide_guard")
            if guard is None:
                guard = cls(module)
                vars(module)["_steerguide_guard"] = guard
            return guard

    def _calls(self) -> list[bool]:
        if not hasattr(self._local, "calls"):
            self._local.calls = []
        return self._local.calls

    def _before(self, module, args) -> None:
        with self._state:
            locked = self._blocks > 0
            if not locked:
                me = threading.get_ident()
                self._unlocked[me] = self._unlocked.get(me, 0) + 1
        self._calls().append(locked)
        if locked:
            self.lock.acquire()

    def _after(self, module, args, output) -> None:
        calls = self._calls()
        if not calls:
            return
        if calls.pop():
            self.lock.release()
            return
        with self._state:
            me = threading.get_ident()
            self._unlocked[me] -= 1
            if not self._unlocked[me]:
                del self._unlocked[me]
            self._state.notify_all()

    def enter(self) -> None:
        """A block starts using the module: from now on every call locks; wait for those already running."""
        me = threading.get_ident()
        with self._state:
            self._blocks += 1
            self._state.wait_for(lambda: not any(t != me for t in self._unlocked))

    def leave(self) -> None:
        with self._state:
            self._blocks -= 1


_GUARDS_LOCK = threading.Lock()


def guard_modules(*modules: torch.nn.Module) -> None:
    """Count these modules' calls from now on (see `Guard`); idempotent."""
    for module in modules:
        Guard.of(module)


class Gate(StandIn):
    """Stands in for a module's `forward` while any `guided` block uses the module (see the docstring)."""

    attribute = "forward"

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__(module)
        self.guard = Guard.of(module)
        self.lock = self.guard.lock
        self.local = threading.local()

    @classmethod
    def enter(cls, owner: Any) -> Gate:
        gate = super().enter(owner)
        gate.guard.enter()
        return gate

    def leave(self) -> None:
        self.guard.leave()
        super().leave()

    def stack(self) -> list:
        if not hasattr(self.local, "stack"):
            self.local.stack = []
        return self.local.stack

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            for wrapper in reversed(self.stack()):
                if wrapper.owns_call():  # the pipeline call under way is the block's
                    return wrapper(*args, **kwargs)
            return self.original(*args, **kwargs)


def module_lock(module: torch.nn.Module) -> threading.RLock | None:
    """The lock of `module`'s gate while a `guided` block uses it (None otherwise)."""
    gate = vars(module).get("forward")
    return gate.lock if isinstance(gate, Gate) else None
