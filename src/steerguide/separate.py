"""Guidance on pipelines that run the negative branch as its own denoiser call (Flux true CFG, ...).

Each step such a pipeline calls its denoiser twice, the prompt call first and then, while it guides,
the negative call, and mixes them as `neg + w · (cond − neg)`. The family (`steerguide.families`) says
how the negative call is recognized: for `BY_CACHE_CONTEXT` families it is the call the pipeline makes
inside `transformer.cache_context("uncond")` (a stand-in on `cache_context` records the name per
thread); for `BY_CALL_ORDER` families (Chroma) the call that follows the step's prompt call on the same
latents tensor while the pipeline's `do_classifier_free_guidance` holds. Then, per step:

    prompt call      θ_ft on (x, c), untouched, for every method; its inputs and output are kept
    negative call    CFG  θ_ft on (x, ∅ or the negative prompt), untouched
                     PG   θ_ω  on the negative call's own inputs (∅ or the negative prompt)
                     AG   θ_ω  on the prompt call's inputs: the same x and t, the prompt's condition
    outside the guidance interval the negative call is not run: it returns the prompt call's output,
    so that the pipeline's neg + w · (cond − neg) is exactly D_ft(x, c) (Qwen-Image's renormalization
    then scales by |cond| / |cond| = 1).

θ_ω costs nothing here: the negative call is a call of its own, so a LoRA runs it at adapter scale ω
(`RowScaledLora.at`) and a full or partial fine-tune swaps θ_ω in for it (`ParameterDelta.at`). PG's calls
and rows are CFG's. ω(τ) and the interval are read at the step index, as in the batched engine.

Wan 2.2 calls one of two experts a step (`transformer`, `transformer_2`): each has its gate and
`cache_context` stand-in, and θ_ω is realized on the expert called (`Expert.weak`). Where the
personalization reaches into the text encoders (Flux's CLIP), the pipeline call's `encode_prompt` calls
are recorded and the weak call's condition is encoded again with the encoders at θ_ω (`EncodeRecorder`).
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from steerguide.block import BlockWrapper, step_of
from steerguide.errors import UserError
from steerguide.families import BY_CACHE_CONTEXT, BY_CALL_ORDER, family_of
from steerguide.guidance import GuidanceConfig
from steerguide.personalization import Personalization
from steerguide.weak import RowScaledLora
from steerguide.weak.choose import weak_at
from steerguide.weak.gate import Gate
from steerguide.weak.lora import row_scalable, tuner_layers
from steerguide.weak.stand_in import StandIn

NEGATIVE_CONTEXT = "uncond"  # the name diffusers' pipelines give their negative call's cache context


class ContextRecorder(StandIn):
    """Stands in for a denoiser's `cache_context` and keeps, per thread, the name of the one entered."""

    attribute = "cache_context"

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__(module)
        self.local = threading.local()

    def __call__(self, name: str, **kwargs: Any):
        return self._entered(name, kwargs)

    @contextmanager
    def _entered(self, name: str, kwargs: dict) -> Iterator[None]:
        outer = getattr(self.local, "name", None)
        self.local.name = name
        try:
            with self.original(name, **kwargs):
                yield
        finally:
            self.local.name = outer

    @property
    def name(self) -> str | None:
        return getattr(self.local, "name", None)


class EncodeRecorder(StandIn):
    """Stands in for the pipeline's `encode_prompt` and keeps the calls of the pipeline call under way:
    the prompt's first, then the negative prompt's (Flux encodes them one after the other)."""

    attribute = "encode_prompt"

    def __init__(self, pipe) -> None:
        super().__init__(pipe)
        self.signature = inspect.signature(self.original)
        self.local = threading.local()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        calls = self.calls
        if self.local.__dict__.get("denoised", False):  # a new pipeline call: forget the last one's
            calls.clear()
            self.local.denoised = False
        calls.append(dict(self.signature.bind(*args, **kwargs).arguments))
        self.local.serial = getattr(self.local, "serial", 0) + 1
        return self.original(*args, **kwargs)

    @property
    def calls(self) -> list[dict]:
        if not hasattr(self.local, "calls"):
            self.local.calls = []
        return self.local.calls

    @property
    def serial(self) -> int:
        return getattr(self.local, "serial", 0)

    def denoiser_called(self) -> None:
        self.local.denoised = True


def _bound_inputs(signature: inspect.Signature, args: tuple, kwargs: dict) -> dict:
    """The call's arguments by name, `**kwargs` of the forward flattened in."""
    inputs = dict(signature.bind(*args, **kwargs).arguments)
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            inputs.update(inputs.pop(name, {}))
    return inputs


class Expert:
    """One denoiser module of the pipeline (Wan 2.2 has two), as a `guided` block sees it."""

    def __init__(self, module: torch.nn.Module, gate: Gate) -> None:
        self.module = module
        self.gate = gate
        self.original = gate.original
        self.signature = inspect.signature(gate.original)
        self.contexts: ContextRecorder | None = None
        self.weak: Any = None  # θ_ω's realization on this module (`at(ω)`), None where Δ is zero


class _ExpertCall:
    """What an expert's gate calls: the block's wrapper, told which expert was called."""

    def __init__(self, wrapper: SeparatePassDenoiser, expert: Expert) -> None:
        self.wrapper, self.expert = wrapper, expert

    def owns_call(self) -> bool:
        return self.wrapper.owns_call()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.wrapper.call(self.expert, args, kwargs)


class SeparatePassDenoiser(BlockWrapper):
    """What the gates call for the thread of a `guided` block on a separate-pass pipeline (see above)."""

    def __init__(self, pipe, personalization: Personalization, config: GuidanceConfig) -> None:
        super().__init__(pipe, personalization, config)
        self.family = family_of(pipe)
        self.denoiser = self.family.denoiser(pipe)
        self.experts: list[Expert] = []  # set by `guided_separately`
        self._prompt_call: tuple[torch.Tensor, dict, Any] | None = None  # (x, inputs, output) of this step
        self._negative_due = False  # BY_CALL_ORDER: the next call on the same latents is the negative one
        self._refuse_without_personalization()
        self.encodings: EncodeRecorder | None = None  # set by `guided_separately` (text-encoder Δ)
        self._encoded: dict[tuple, tuple | None] = {}
        reaches_text = personalization.weak_condition_fn is not None or bool(personalization.text_realizations)
        if config.spec.uses_weak_model and reaches_text and not self.family.condition_outputs:
            raise UserError(
                f"{personalization.source}: this personalization changes the text encoder(s); steerguide does "
                f"not yet re-encode the weak call's condition on {type(pipe).__name__} (a denoiser-only "
                "personalization is guided)"
            )

    # -- the calls -------------------------------------------------------------------------------------
    def _is_negative_call(self, expert: Expert, x: torch.Tensor) -> bool:
        if self.family.signal == BY_CACHE_CONTEXT:
            return expert.contexts is not None and expert.contexts.name == NEGATIVE_CONTEXT
        if self.family.signal == BY_CALL_ORDER:  # the call after the step's prompt call, on its latents
            prompt = self._prompt_call
            return (
                self._negative_due
                and prompt is not None
                and prompt[0] is x
                and bool(getattr(self.pipe, "do_classifier_free_guidance", False))
            )
        raise ValueError(f"{self.family.name}: unknown negative-call signal {self.family.signal!r}")

    def _run(self, expert: Expert, inputs: dict, rows: int) -> Any:
        start = time.perf_counter()
        out = expert.original(**inputs)
        if torch.cuda.is_available() and expert.module.device.type == "cuda":
            torch.cuda.synchronize()
        self.counters.seconds_denoising += time.perf_counter() - start
        self.counters.denoiser_calls += 1
        self.counters.denoiser_rows += rows
        return out

    def _weak_condition(self, inputs: dict, omega: float, prompt_side: bool) -> dict:
        """The weak call's inputs with its condition encoded by the text encoders at θ_ω (the prompt for
        AG, the negative prompt for PG), once per pipeline call and ω; unchanged where nothing differs."""
        if self.encodings is None or omega == 1.0:
            return inputs
        key = (self.encodings.serial, omega, prompt_side)
        if key not in self._encoded:
            calls = self.encodings.calls
            call = calls[0] if prompt_side else (calls[1] if len(calls) > 1 else None)
            self._encoded[key] = None if call is None else self._encode(call, omega)
        encoded = self._encoded[key]
        if encoded is None:
            return inputs
        out = dict(inputs)
        for name, value in zip(self.family.condition_outputs, encoded, strict=False):
            if name in out and isinstance(value, torch.Tensor):
                out[name] = value.to(out[name].dtype) if isinstance(out[name], torch.Tensor) else value
        return out

    def _encode(self, call: dict, omega: float) -> tuple:
        from contextlib import ExitStack

        from steerguide.weak.gate import module_lock

        with ExitStack() as stack, torch.no_grad():
            for name, realization in self.personalization.text_realizations.items():
                lock = module_lock(getattr(self.pipe, name))
                if lock is not None:
                    stack.enter_context(lock)
                stack.enter_context(realization.at(omega))
            return tuple(self.encodings.original(**call))

    def call(self, expert: Expert, args: tuple, kwargs: dict) -> Any:
        if self.encodings is not None:
            self.encodings.denoiser_called()
        inputs = _bound_inputs(expert.signature, args, kwargs)
        x = inputs[next(iter(expert.signature.parameters))]
        rows = x.shape[0]
        if not self._is_negative_call(expert, x):
            out = self._run(expert, inputs, rows)  # the prompt call (or an unguided one): D_ft(x, c)
            kept = {k: dict(v) if isinstance(v, dict) else v for k, v in inputs.items()}
            self._prompt_call = (x, kept, out)
            self._negative_due = True
            return out
        self._negative_due = False

        prompt = self._prompt_call
        if prompt is None or prompt[0] is not x:
            raise UserError(
                f"{type(self.pipe).__name__} made a negative denoiser call without a prompt call on the same "
                "latents before it: steerguide cannot pair the two calls of the step"
            )
        step, num_steps = step_of(self.pipe.scheduler, inputs.get("timestep", inputs.get("t")))
        tau = step / num_steps
        if not self.config.active_at_step(step, num_steps):
            # Outside the interval: no negative call; neg = cond makes the pipeline's mix D_ft(x, c).
            self._record(step, tau, None)
            return prompt[2]
        omega = self.config.omega_at(tau)
        self._record(step, tau, omega)
        spec = self.config.spec
        if not spec.uses_weak_model:
            return self._run(expert, inputs, rows)  # CFG: the negative call, untouched
        if spec.weak_on_prompt:
            inputs = prompt[1]  # the weak model on the prompt's condition, same x and t
        inputs = self._weak_condition(inputs, omega, prompt_side=spec.weak_on_prompt)
        # θ_ω on the expert called (LoRA scale ω, or θ_ω swapped in); an expert the personalization
        # leaves alone has no realization (Δ = 0)
        with weak_at(expert.weak, omega):
            return self._run(expert, inputs, rows)

    def release(self) -> None:
        self._prompt_call = None
        self._encoded.clear()


def _weak_realization(personalization: Personalization, module: torch.nn.Module, main: bool) -> Any:
    """θ_ω's realization on one expert: the personalization's own on the main denoiser; on another
    expert (Wan 2.2's low-noise `transformer_2`), per-row scales of the adapter where it carries it."""
    if main:
        realization = personalization.weak_model
        if realization is None:
            raise UserError(f"personalization {personalization.source} has no weak model")
        return realization
    if personalization.kind != "lora" or not tuner_layers(module, personalization.adapter):
        return None  # a fine-tune of the main denoiser: this expert is the same in θ_pre and θ_ft
    reason = row_scalable(module, personalization.adapter)
    if reason is not None:
        raise UserError(
            f"the personalization adapter on {type(module).__name__} #2 is a {reason}: only a plain LoRA is "
            "guided on a second expert"
        )
    return RowScaledLora(module, adapter=personalization.adapter)


@contextmanager
def guided_separately(
    pipe, personalization: Personalization, config: GuidanceConfig
) -> Iterator[SeparatePassDenoiser]:
    """`steerguide.denoiser.guided` for separate-pass families (installed, nested and undone alike)."""
    wrapper = SeparatePassDenoiser(pipe, personalization, config)
    modules = wrapper.family.denoiser_modules(pipe)
    gates: list[Gate] = []
    recorders: list[ContextRecorder] = []
    calls: list[tuple[list, _ExpertCall]] = []
    extra: list[RowScaledLora] = []
    encoder: EncodeRecorder | None = None
    try:
        for module in modules:
            gates.append(Gate.enter(module))
            expert = Expert(module, gates[-1])
            if wrapper.family.signal == BY_CACHE_CONTEXT:
                recorders.append(ContextRecorder.enter(module))
                expert.contexts = recorders[-1]
            wrapper.experts.append(expert)
        text_gates = [Gate.enter(m) for m in personalization.text_modules(pipe)]
        gates += text_gates
        uses_weak = config.spec.uses_weak_model
        if uses_weak and personalization.text_realizations:
            encoder = wrapper.encodings = EncodeRecorder.enter(pipe)
        if uses_weak:
            with gates[0].lock:
                personalization.prepare(pipe)
            for i, expert in enumerate(wrapper.experts):
                expert.weak = _weak_realization(personalization, expert.module, main=i == 0)
                if i and expert.weak is not None:
                    extra.append(expert.weak)
        for expert in wrapper.experts:
            call = _ExpertCall(wrapper, expert)
            stack = expert.gate.stack()
            stack.append(call)
            calls.append((stack, call))
        try:
            yield wrapper
        finally:
            for stack, call in calls:
                stack.remove(call)
            wrapper.release()
            with gates[0].lock:
                personalization.release()
    finally:
        for realization in extra:
            realization.remove()
        for gate in reversed(gates):
            gate.leave()
        for recorder in recorders:
            recorder.leave()
        if encoder is not None:
            encoder.leave()
