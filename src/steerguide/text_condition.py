"""The null condition of θ_ω when the personalization reaches into the text encoder(s).

The null prompt's embedding is computed once by the pipeline with the personalized text encoder. PG's
weak model is θ_ω as a whole, text encoder included, so its null half must be conditioned on the null
prompt as encoded by the text encoder at θ_ω. We record the pipeline's `encode_prompt` call, re-encode
the negative prompt(s) with the text encoder(s) at θ_ω (once per distinct ω), and hand that to the
denoiser's null half. Where the pipeline zeroes the empty negative prompt (SDXL's
`force_zeros_for_empty_prompt`) the text encoder plays no part and nothing changes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import ExitStack

import torch

from steerguide.weak import ParameterDelta, RowScaledLora


def text_encoder_null_condition(pipe, *, lora_scalers: dict[str, RowScaledLora] | None = None,
                                deltas: dict[str, ParameterDelta] | None = None
                                ) -> Callable[[dict, float], dict]:
    original = pipe.encode_prompt
    signature = inspect.signature(original)
    record: dict = {"call": None, "serial": 0}
    cache: dict[tuple[int, float], tuple] = {}

    def recording_encode_prompt(*args, **kwargs):
        record["call"] = dict(signature.bind(*args, **kwargs).arguments)
        record["serial"] += 1
        cache.clear()
        return original(*args, **kwargs)

    pipe.encode_prompt = recording_encode_prompt
    is_sdxl = "prompt_2" in signature.parameters and "prompt_3" not in signature.parameters

    def encode_null(omega: float) -> tuple | None:
        call = record["call"]
        if call is None or call.get("negative_prompt_embeds") is not None:
            return None  # the caller passed embeddings: nothing to re-encode
        prompt = call.get("prompt")
        batch = len(prompt) if isinstance(prompt, list) else 1
        negative = call.get("negative_prompt")
        if is_sdxl and negative is None and pipe.config.get("force_zeros_for_empty_prompt", False):
            return None
        new_call = dict(call)
        for key in ("prompt", "prompt_2", "prompt_3"):
            if key in signature.parameters:
                value = call.get("negative" + "_" + key) if key != "prompt" else negative
                value = negative if value is None else value
                value = "" if value is None else value
                new_call[key] = [value] * batch if isinstance(value, str) else value
        for key in list(new_call):
            if key.startswith("negative_") or key.endswith("prompt_embeds"):
                new_call[key] = None
        new_call["do_classifier_free_guidance"] = False
        if "clip_skip" in new_call:
            new_call["clip_skip"] = None  # the stock negative branch ignores clip_skip
        with ExitStack() as stack, torch.no_grad():
            for scaler in (lora_scalers or {}).values():
                stack.enter_context(scaler.uniform(omega))
            for delta in (deltas or {}).values():
                stack.enter_context(delta.at(omega))
            return original(**new_call)

    def null_condition(null_inputs: dict, omega: float) -> dict:
        key = (record["serial"], omega)
        if key not in cache:
            cache[key] = encode_null(omega)
        encoded = cache[key]
        if encoded is None:
            return null_inputs
        embeds = encoded[0]
        out = dict(null_inputs)
        out["encoder_hidden_states"] = embeds.to(null_inputs["encoder_hidden_states"].dtype)
        if len(encoded) >= 3 and encoded[2] is not None:
            pooled = encoded[2]
            if "pooled_projections" in out:
                out["pooled_projections"] = pooled.to(out["pooled_projections"].dtype)
            elif isinstance(out.get("added_cond_kwargs"), dict) and "text_embeds" in out["added_cond_kwargs"]:
                out["added_cond_kwargs"] = {**out["added_cond_kwargs"], "text_embeds": pooled}
        return out

    return null_condition
