"""The weak model's condition when the personalization reaches into the text encoder(s).

The pipeline encodes the prompts once, with the personalized text encoder. The weak model is θ_ω as a
whole, text encoder included, so its half of the batch must be conditioned on what the text encoder at
θ_ω makes of its prompt: the negative (null) prompt for PG, the prompt itself for AG. We record the
pipeline's `encode_prompt` call, re-encode with the text encoder(s) at θ_ω (once per distinct ω), and hand
that to the denoiser's first half. Where the pipeline zeroes the empty negative prompt (SDXL's
`force_zeros_for_empty_prompt`) the text encoder plays no part in PG's null half and nothing changes.

Embeddings passed instead of text are θ_ft's. With `prompt_embeds` alone, PG's null half is still the
negative prompt's text (or ""), re-encoded at θ_ω for a batch of len(prompt_embeds), as the stock
pipeline batches it. Where the weak half's own condition is given only as embeddings
(`negative_prompt_embeds` for PG, `prompt_embeds` for AG) there is no text to encode at θ_ω: refused.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from contextlib import ExitStack

import torch

from steerguide.errors import UserError
from steerguide.weak.gate import module_lock


class WeakCondition:
    """`fn(inputs, omega, prompt_side) -> inputs`, with `clear()` (drop the cached embeddings) and
    `uninstall()` (give the pipeline its own `encode_prompt` back)."""

    def __init__(self, pipe, fn, clear, uninstall) -> None:
        self._fn, self.clear, self.uninstall = fn, clear, uninstall
        self.pipe = weakref.ref(pipe)  # the pipeline whose `encode_prompt` calls are recorded

    def __call__(self, inputs: dict, omega: float, prompt_side: bool) -> dict:
        return self._fn(inputs, omega, prompt_side)


def text_encoder_weak_condition(pipe, realizations: dict) -> WeakCondition:
    """`realizations` maps text encoder names to objects whose `at(ω)` makes that encoder θ_ω for a block
    (per-row LoRA scales or a `ParameterDelta`); the dict is read at every call, so the personalization
    may switch an encoder from one realization to the other (e.g. after `fuse_lora`)."""
    had_own = "encode_prompt" in vars(pipe)
    original = pipe.encode_prompt
    signature = inspect.signature(original)
    record: dict = {"call": None, "serial": 0}
    cache: dict[tuple[int, float], tuple] = {}

    @functools.wraps(original)  # keeps the signature visible (one_batch.CfgRecorder reads it)
    def recording_encode_prompt(*args, **kwargs):
        record["call"] = dict(signature.bind(*args, **kwargs).arguments)
        record["serial"] += 1
        cache.clear()
        return original(*args, **kwargs)

    pipe.encode_prompt = recording_encode_prompt

    def uninstall() -> None:
        if had_own:
            pipe.encode_prompt = original
        else:
            vars(pipe).pop("encode_prompt", None)

    is_sdxl = "prompt_2" in signature.parameters and "prompt_3" not in signature.parameters

    def encode(omega: float, prompt_side: bool) -> tuple | None:
        call = record["call"]
        if call is None:
            return None
        new_call = dict(call)
        given = "prompt_embeds" if prompt_side else "negative_prompt_embeds"
        if call.get(given) is not None:
            # θ_ft's embeddings, and no text to encode at θ_ω: the weak half's condition is unknown
            raise UserError(
                f"{given} given with a personalization that changes the text encoder(s): the weak half "
                f"needs {'the prompt' if prompt_side else 'the negative prompt'} encoded by the text encoder "
                f"at θ_ω; pass {'prompt' if prompt_side else 'negative_prompt'} as text instead"
            )
        if not prompt_side:
            prompt = call.get("prompt")
            if prompt is None and call.get("prompt_embeds") is not None:
                batch = call["prompt_embeds"].shape[0]  # the stock pipeline's batch size then
            else:
                batch = len(prompt) if isinstance(prompt, list) else 1
            negative = call.get("negative_prompt")
            if is_sdxl and negative is None and pipe.config.get("force_zeros_for_empty_prompt", False):
                return None
            for key in ("prompt", "prompt_2", "prompt_3"):
                if key in signature.parameters:
                    value = call.get("negative" + "_" + key) if key != "prompt" else negative
                    value = negative if value is None else value
                    value = "" if value is None else value
                    new_call[key] = [value] * batch if isinstance(value, str) else value
            if "clip_skip" in new_call:
                new_call["clip_skip"] = None  # the stock negative branch ignores clip_skip
        for key in list(new_call):
            if key.startswith("negative_") or key.endswith("prompt_embeds"):
                new_call[key] = None
        new_call["do_classifier_free_guidance"] = False
        with ExitStack() as stack, torch.no_grad():
            for name, realization in realizations.items():
                lock = module_lock(getattr(pipe, name))
                if lock is not None:  # other threads may be encoding with this encoder
                    stack.enter_context(lock)
                stack.enter_context(realization.at(omega))
            return original(**new_call)

    def weak_condition(inputs: dict, omega: float, prompt_side: bool) -> dict:
        key = (record["serial"], omega, prompt_side)
        if key not in cache:
            cache[key] = encode(omega, prompt_side)
        encoded = cache[key]
        if encoded is None:
            return inputs
        embeds = encoded[0]
        out = dict(inputs)
        out["encoder_hidden_states"] = embeds.to(inputs["encoder_hidden_states"].dtype)
        if len(encoded) >= 3 and encoded[2] is not None:
            pooled = encoded[2]
            if "pooled_projections" in out:
                out["pooled_projections"] = pooled.to(out["pooled_projections"].dtype)
            elif isinstance(out.get("added_cond_kwargs"), dict) and "text_embeds" in out["added_cond_kwargs"]:
                out["added_cond_kwargs"] = {**out["added_cond_kwargs"], "text_embeds": pooled}
        return out

    return WeakCondition(pipe, weak_condition, cache.clear, uninstall)
