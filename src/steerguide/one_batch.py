"""The engine for pipelines that batch CFG: guidance installed where the pipeline calls its denoiser.

Every diffusers text-to-image pipeline computes CFG by running its denoiser (`pipe.unet` or
`pipe.transformer`) once on the batch [null half; prompt half] and mixing the two halves with
`uncond + w · (cond − uncond)`. CFG, AG and PG differ only in which weights and which condition the
first half sees, so `guided(pipe, personalization, config)` wraps that one call:

    CFG  first half: θ_ft,  ∅           (the call is passed through untouched)
    PG   first half: θ_ω,   ∅           θ_ω = θ_pre + ω(τ)·Δ
    AG   first half: θ_ω,   c           (ω = 0: the pretrained model)

and the stock pipeline then evaluates the method's own formula. The method object says which condition
the first half sees (`Method.weak_sees`) and whether it runs a weak model at all (`uses_weak_model`);
`steerguide.weak.choose.batched_plan` says how θ_ω and θ_ft share the call. Negative prompts, several
images per prompt, generators, schedulers, callbacks and guidance_rescale keep working unchanged.

Installation is shared and reference-counted: the first `guided` block on a denoiser replaces its
`forward` by a gate; blocks push their wrapper on a per-thread stack (the innermost block of a thread
whose pipeline is the one calling guides the call; other threads and other pipelines sharing the
denoiser see their own blocks or the plain model); the last block to
exit, in whatever order, puts the original `forward` back. The gate holds a per-module re-entrant lock
for every call, because LoRA row scales and θ_ω swaps are state on modules that pipelines may share.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from steerguide.block import BlockWrapper, denoiser_of, step_of
from steerguide.errors import UserError
from steerguide.families import BY_ENCODE_PROMPT, family_of
from steerguide.guidance import GuidanceConfig
from steerguide.personalization import Personalization
from steerguide.weak.batched import run_two_weight_sets
from steerguide.weak.choose import ROWS, SAME, STACKED, batched_plan
from steerguide.weak.gate import Gate
from steerguide.weak.stand_in import StandIn


def _split(value: Any, rows: int) -> tuple[Any, Any]:
    """Split every tensor whose first dimension is the batch (`rows`) into its two halves."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == rows:
        return value[: rows // 2], value[rows // 2 :]
    if isinstance(value, dict):
        pairs = {k: _split(v, rows) for k, v in value.items()}
        return {k: a for k, (a, _) in pairs.items()}, {k: b for k, (_, b) in pairs.items()}
    if isinstance(value, (list, tuple)):
        pairs = [_split(v, rows) for v in value]
        return type(value)(a for a, _ in pairs), type(value)(b for _, b in pairs)
    return value, value


def _join(first: Any, second: Any) -> Any:
    """Concatenate two outputs of the denoiser (a tensor, a tuple, or a diffusers output) along the batch."""
    if isinstance(first, torch.Tensor):
        return torch.cat([first, second])
    if isinstance(first, tuple):
        return tuple(_join(a, b) for a, b in zip(first, second, strict=True))
    if hasattr(first, "sample"):
        return type(first)(sample=torch.cat([first.sample, second.sample]))
    raise TypeError(f"cannot join denoiser outputs of type {type(first).__name__}")


def _merge(template: Any, first: Any, second: Any, rows: int) -> Any:
    """Inverse of `_split`: [first; second] wherever `template` holds a batched tensor."""
    if isinstance(template, torch.Tensor) and template.ndim > 0 and template.shape[0] == rows:
        return torch.cat([first, second])
    if isinstance(template, dict):
        return {k: _merge(template[k], first[k], second[k], rows) for k in template}
    if isinstance(template, (list, tuple)):
        return type(template)(_merge(t, a, b, rows) for t, a, b in zip(template, first, second, strict=True))
    return template


class CfgRecorder(StandIn):
    """Where a pipeline decides CFG in a local variable, the decision as it hands it to `encode_prompt`.

    Most pipelines expose `do_classifier_free_guidance` (`guidance_scale > 1`) as an attribute, which the
    wrapper reads at each denoiser call. PixArt-α/Σ compute it as a local (`guidance_scale > 1.0` in
    `__call__`) and pass it to `self.encode_prompt(prompt, do_classifier_free_guidance, ...)` before the
    denoising loop: this stands in for `encode_prompt` while `guided` blocks use the pipeline and keeps
    that argument per thread. Installed once per pipeline, reference-counted like the gates.
    """

    attribute = "encode_prompt"
    PARAMETER = "do_classifier_free_guidance"

    def __init__(self, pipe) -> None:
        super().__init__(pipe)
        self.local = threading.local()
        self.signature = inspect.signature(self.original)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        self.local.value = bool(bound.arguments[self.PARAMETER])
        return self.original(*args, **kwargs)

    @property
    def value(self) -> bool | None:
        """This thread's pipeline call's decision; None before its `encode_prompt` ran."""
        return getattr(self.local, "value", None)

    @classmethod
    def applies_to(cls, pipe) -> bool:
        encode = getattr(pipe, "encode_prompt", None)
        return encode is not None and cls.PARAMETER in inspect.signature(encode).parameters


def exposes_cfg(pipe) -> bool:
    """Whether the pipeline says, as an attribute, whether it runs CFG (SD 1.x/2.x, SDXL, SD3, Sana, ...).

    A family that keeps the decision elsewhere (PixArt: `BY_ENCODE_PROMPT`) is read there even should
    a later diffusers add the attribute."""
    if family_of(pipe).signal == BY_ENCODE_PROMPT:
        return False
    return isinstance(getattr(type(pipe), "do_classifier_free_guidance", None), property)


class GuidedDenoiser(BlockWrapper):
    """What the gate calls for the thread of a `guided` block; see the module docstring."""

    def __init__(self, pipe, personalization: Personalization, config: GuidanceConfig) -> None:
        super().__init__(pipe, personalization, config)
        self.denoiser = denoiser_of(pipe)
        self._original: Any = None  # the denoiser's own forward, set by `guided`
        self._signature: inspect.Signature | None = None
        self.recorder: CfgRecorder | None = None  # set by `guided` for pipelines that keep CFG in a local
        uses_weak = config.spec.uses_weak_model
        if uses_weak and not exposes_cfg(pipe) and not CfgRecorder.applies_to(pipe):
            raise UserError(
                f"steerguide cannot tell when {type(pipe).__name__} batches CFG (no do_classifier_free_guidance "
                f"attribute or encode_prompt argument): {config.method.upper()} would silently be CFG"
            )
        recorded = getattr(getattr(personalization, "weak_condition_fn", None), "pipe", None)
        if uses_weak and recorded is not None and recorded() is not pipe:
            # The weak half's prompt is re-encoded from the `encode_prompt` call of the pipeline the
            # personalization was loaded on; another pipeline sharing its components is not recorded.
            raise UserError(
                "this personalization reaches into the text encoders: guide the pipeline it was loaded on "
                "(load it again on this one with load_personalization)"
            )
        self._refuse_without_personalization()

    # -- the wrapped call ---------------------------------------------------------------------------
    def _runs_cfg(self) -> bool:
        """Whether the pipeline call under way batches [null; prompt] (the pipeline's own decision)."""
        if self.recorder is None:
            return bool(getattr(self.pipe, "do_classifier_free_guidance", False))
        value = self.recorder.value
        if value is None and self.config.spec.uses_weak_model:
            raise UserError(
                f"{type(self.pipe).__name__} called its denoiser before encode_prompt: steerguide cannot tell "
                f"whether it runs CFG, and {self.config.method.upper()} would silently be CFG"
            )
        return bool(value)

    def _run(self, kwargs: dict, rows: int, forward: Any = None) -> Any:
        start = time.perf_counter()
        out = (forward or self._original)(**kwargs)
        if torch.cuda.is_available() and self.denoiser.device.type == "cuda":
            torch.cuda.synchronize()
        self.counters.seconds_denoising += time.perf_counter() - start
        self.counters.denoiser_calls += 1
        self.counters.denoiser_rows += rows
        return out

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        assert self._signature is not None
        bound = self._signature.bind(*args, **kwargs)
        inputs = dict(bound.arguments)
        extra = inputs.pop(
            next(
                (k for k, p in self._signature.parameters.items() if p.kind is inspect.Parameter.VAR_KEYWORD),
                "__none__",
            ),
            {},
        )
        inputs.update(extra)
        sample_name = next(iter(self._signature.parameters))
        rows = inputs[sample_name].shape[0]
        if not self._runs_cfg() or rows % 2:
            return self._run(inputs, rows)  # no guidance this call: D_ft(x, c)
        if inputs.get("skip_layers") is not None:
            # SD3 skip-layer guidance: an extra pass of θ_ft on the prompt rows alone, not a CFG batch.
            return self._run(inputs, rows)

        step, num_steps = step_of(self.pipe.scheduler, inputs.get("timestep", inputs.get("t")))
        tau = step / num_steps
        null_half, prompt_half = _split(inputs, rows)
        if not self.config.active_at_step(step, num_steps):
            # Outside the guidance interval the sampler must get D_ft(x, c): run the prompt half only
            # and hand it back as both halves, so that uncond + w·(cond − uncond) = cond.
            self._record(step, tau, None)
            out = self._run(prompt_half, rows // 2)
            return _join(out, out)

        spec = self.config.spec
        omega = self.config.omega_at(tau)
        self._record(step, tau, omega)
        if not spec.uses_weak_model:
            return self._run(inputs, rows)  # CFG: the pipeline's own batch, untouched
        # the weak half: θ_ω on the condition its method names (∅ for PG, the prompt for AG)
        source = prompt_half if spec.weak_on_prompt else null_half
        null_half = self.personalization.weak_condition(source, omega, prompt_side=spec.weak_on_prompt)
        inputs = _merge(inputs, null_half, prompt_half, rows)

        weak = self.personalization.weak_model
        plan = batched_plan(weak, omega, self.denoiser.device)
        if plan == ROWS:
            # One pass over both halves: LoRA scale ω on the first half, 1 on the prompt half.
            with weak.rows([omega] * (rows // 2) + [1.0] * (rows // 2)):
                return self._run(inputs, rows)
        if plan == SAME:
            return self._run(inputs, rows)  # θ_ω = θ_ft: both halves in one pass
        if plan == STACKED:
            # Tensor deltas in one call: the weights stacked [θ_ω; θ_ft], vmap over the two halves.
            stacked = weak.stacked(omega)
            return self._run(
                inputs, rows, lambda **kw: run_two_weight_sets(self._original, self.denoiser, stacked, kw, rows)
            )
        # Two calls, the same rows as CFG: θ_ω swapped in for the first half.
        with weak.at(omega):
            first = self._run(null_half, rows // 2)
        second = self._run(prompt_half, rows // 2)
        return _join(first, second)


@contextmanager
def guided_in_one_batch(
    pipe, personalization: Personalization, config: GuidanceConfig
) -> Iterator[GuidedDenoiser]:
    """`steerguide.denoiser.guided` for families that batch [null; prompt] in one denoiser call."""
    wrapper = GuidedDenoiser(pipe, personalization, config)
    gates = [Gate.enter(wrapper.denoiser)]
    recorder = None
    try:
        if not exposes_cfg(pipe) and CfgRecorder.applies_to(pipe):
            recorder = wrapper.recorder = CfgRecorder.enter(pipe)
        gates += [Gate.enter(m) for m in personalization.text_modules(pipe)]
        if config.spec.uses_weak_model:  # CFG runs the pipeline as it stands
            with gates[0].lock:
                personalization.prepare(pipe)
        wrapper._original = gates[0].original
        wrapper._signature = inspect.signature(gates[0].original)
        stack = gates[0].stack()
        stack.append(wrapper)
        try:
            yield wrapper
        finally:
            stack.remove(wrapper)
            with gates[0].lock:
                personalization.release()  # θ_ω caches do not outlive sampling
    finally:
        for gate in reversed(gates):
            gate.leave()
        if recorder is not None:
            recorder.leave()
