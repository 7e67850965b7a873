"""Guidance references built from diffusers and peft alone (no steerguide code): two pipelines.

`ft` is the stock pipeline with the personalization at full strength; `weak` is a second copy of the
same pipeline whose personalization adapter is set to scale ω with peft's own `set_adapters` (other
adapters keep their weights: they are part of θ_pre). The stock CFG loop runs on `ft`; its denoiser is
replaced by a function that computes the first half of every CFG batch with `weak`'s denoiser on `weak`'s
own text embeddings (of the negative prompt for PG, of the prompt for AG) and the prompt half with `ft`.
The step index is counted by hand from the denoiser calls, so ω(step / N) and the guidance interval are
the reference's own.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable

import torch


def load(base, **kwargs):
    from diffusers import DiffusionPipeline

    index = (base / "model_index.json").read_text()
    extra = {"text_encoder_3": None, "tokenizer_3": None} if '"text_encoder_3": [\n    null' in index else {}
    pipe = DiffusionPipeline.from_pretrained(base, **extra, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def denoiser(pipe):
    return pipe.transformer if getattr(pipe, "transformer", None) is not None else pipe.unet


def _half(value, rows, which):
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == rows:
        return value[: rows // 2] if which == 0 else value[rows // 2 :]
    if isinstance(value, dict):
        return {k: _half(v, rows, which) for k, v in value.items()}
    return value


def encode(pipe, prompts: list[str], negative: str | None, **extra) -> tuple:
    """(prompt_embeds, negative_embeds, pooled, negative_pooled) as the stock pipeline computes them."""
    params = inspect.signature(pipe.encode_prompt).parameters
    kwargs = dict(prompt=prompts, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    kwargs.update({k: v for k, v in extra.items() if k in params})
    kwargs["negative_prompt"] = None if negative is None else [negative] * len(prompts)
    for key in ("prompt_2", "prompt_3"):
        if key in params:
            kwargs[key] = None
    with torch.no_grad():
        out = pipe.encode_prompt(**kwargs)
    return tuple(out) + (None,) * (4 - len(out))


def second_order_step(call: int) -> int:
    """Heun/KDPM2 list 2N−1 timesteps: calls 2i (predictor) and 2i + 1 (corrector) belong to step i, the
    last step has its predictor only."""
    return call // 2


def reference_latents(
    ft,
    weak,
    *,
    method: str,
    scale: float,
    omega: Callable[[float], float] | float,
    prompts: list[str],
    num_images: int = 2,
    seed: int = 0,
    steps: int = 4,
    negative: str | None = None,
    interval: tuple[float, float] = (0.0, 1.0),
    adapter: str = "p",
    other_adapters: dict[str, float] | None = None,
    full_weak: Callable[[float], None] | None = None,
    step_of_call: Callable[[int], int] = lambda call: call,
    side: int = 32,
    **call_kwargs,
) -> torch.Tensor:
    """Latents [prompt, image, ...] of `method` ("pg" or "ag") computed from the two pipelines.

    `full_weak(ω)`, when given, puts θ_ω into `weak` itself (full fine-tunes) instead of adapter scales.
    The interval follows diffusers' guiders: step i is guided iff int(start·N) ≤ i < int(stop·N). Images
    are `side` pixels square.
    """
    omega_fn = omega if callable(omega) else (lambda tau, value=omega: value)
    others = other_adapters or {}
    rows_prompts = [p for p in prompts for _ in range(num_images)]
    original = denoiser(ft).forward
    names = list(inspect.signature(original).parameters)
    weak_denoiser = denoiser(weak)
    calls = {"n": 0}
    cache: dict = {}

    def forward(*args, **kwargs):
        kwargs.update(dict(zip(names, args, strict=False)))
        if kwargs.get("skip_layers") is not None:  # SD3 skip-layer guidance: θ_ft on the prompt rows
            return original(**kwargs)
        rows = kwargs[names[0]].shape[0]
        step = step_of_call(calls["n"])
        calls["n"] += 1
        tau = step / steps
        cond = {k: _half(v, rows, 1) for k, v in kwargs.items()}
        if not int(interval[0] * steps) <= step < int(interval[1] * steps):
            out = original(**cond)[0]
            return (torch.cat([out, out]),)
        w = float(omega_fn(tau))
        if full_weak is not None:
            full_weak(w)
        elif adapter is not None:
            weak.set_adapters([adapter, *others], [w, *others.values()])
        key = (w, method)
        if key not in cache:
            pe, npe, pooled, npooled = encode(weak, rows_prompts, negative, **call_kwargs)
            cache[key] = (pe, pooled) if method == "ag" else (npe, npooled)
        embeds, pooled = cache[key]
        first = {k: _half(v, rows, 0) for k, v in kwargs.items()}
        first["encoder_hidden_states"] = embeds
        if "pooled_projections" in first:
            first["pooled_projections"] = pooled
        if isinstance(first.get("added_cond_kwargs"), dict):
            first["added_cond_kwargs"] = {**first["added_cond_kwargs"], "text_embeds": pooled}
        a = weak_denoiser(**first)[0]
        b = original(**cond)[0]
        return (torch.cat([a, b]),)

    denoiser(ft).forward = forward
    try:
        generators = [torch.Generator().manual_seed(seed + i) for _ in prompts for i in range(num_images)]
        with torch.no_grad():
            out = ft(
                prompt=rows_prompts,
                negative_prompt=None if negative is None else [negative] * len(rows_prompts),
                num_inference_steps=steps,
                guidance_scale=scale,
                generator=generators,
                height=side,
                width=side,
                output_type="latent",
                **call_kwargs,
            ).images
    finally:
        del denoiser(ft).forward
    return out.reshape(len(prompts), num_images, *out.shape[1:])


def lora_layers(module) -> list:
    """The peft LoRA layers inside `module` (empty when it carries no LoRA)."""
    from peft.tuners.lora import LoraLayer

    return [m for m in module.modules() if isinstance(m, LoraLayer) and len(m.lora_A) > 0]


def lerp_into(module, pre: dict[str, torch.Tensor], ft: dict[str, torch.Tensor]) -> Callable[[float], None]:
    """`set(ω)`: write θ_pre + ω·(θ_ft − θ_pre) into `module`'s parameters (a full fine-tune's weak model)."""
    params = dict(module.named_parameters())

    def set_omega(omega: float) -> None:
        with torch.no_grad():
            for name, value in ft.items():
                params[name].copy_(pre[name] + omega * (value - pre[name]))

    return set_omega


def cosine(start: float, end: float) -> Callable[[float], float]:
    return lambda tau: start + (end - start) * (1 - math.cos(math.pi * tau)) / 2


def lora_and_fused_finetune(base, tmp_path_factory, name: str, targets) -> tuple:
    """(LoRA file, fine-tune folder): a random LoRA on `base`'s transformer and the same LoRA fused into it
    by diffusers, saved as a transformer folder (a full fine-tune whose Δ is the LoRA's)."""
    from steerguide.testing import save_random_lora

    pipe = load(base)
    lora = save_random_lora(pipe, tmp_path_factory.mktemp(f"{name}-lora"), seed=3, std=0.1, target_modules=targets)
    pipe.load_lora_weights(str(lora))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    full = tmp_path_factory.mktemp(f"{name}-full")
    pipe.transformer.save_pretrained(full, safe_serialization=True)
    return lora, full


@functools.cache
def lora_pipes(base, lora, second_expert: bool = False) -> tuple:
    """(`ft`, `weak`): two stock pipelines with the LoRA as adapter "p" (also on Wan 2.2's `transformer_2`
    with `second_expert`), loaded once and shared: `separate_reference_latents` sets `weak`'s adapter scale
    before each use and puts `ft`'s forwards back."""
    pipes = load(base), load(base)
    for pipe in pipes:
        pipe.load_lora_weights(str(lora), adapter_name="p")
        if second_expert:
            pipe.load_lora_weights(str(lora), adapter_name="p", load_into_transformer_2=True)
    return pipes


def separate_reference_latents(
    ft,
    weak,
    *,
    method: str,
    scale: float,
    omega: Callable[[float], float] | float,
    prompts: list[str],
    num_images: int = 2,
    seed: int = 0,
    steps: int = 4,
    negative: str = "",
    interval: tuple[float, float] = (0.0, 1.0),
    adapter: str | None = "p",
    full_weak: Callable[[float], None] | None = None,
    side: int = 16,
    scale_argument: str = "true_cfg_scale",
    experts: tuple[str, ...] = ("transformer",),
    weak_condition: Callable[[dict, list[str]], dict] | None = None,
    **call_kwargs,
) -> torch.Tensor:
    """PG / AG latents for a pipeline whose CFG makes two denoiser calls a step (Flux, Chroma, Qwen-Image,
    Wan), from diffusers and peft alone: `ft`'s stock loop runs; its denoisers' calls (every one of
    `experts`: Wan 2.2 switches between two) are counted by hand, in the pipelines' documented order (call
    2i: the prompt call of step i, θ_ft; call 2i + 1: the negative call), and the negative call is computed
    by `weak`'s same expert at ω(i / N) (adapter `adapter` at scale ω with `set_adapters`, or `full_weak(ω)`
    writing lerped weights) on the negative call's own inputs (PG) or on the prompt call's (AG). Outside the
    interval the negative call returns the prompt call's output, so that the stock mix is D_ft(x, c).
    `weak_condition(kwargs, texts)`, when given, replaces the weak call's condition by `weak`'s own encoding
    of `texts` (the prompts for AG, the negative prompts for PG): a text-encoder personalization at ω.
    """
    omega_fn = omega if callable(omega) else (lambda tau, value=omega: value)
    rows = [p for p in prompts for _ in range(num_images)]
    state: dict = {"calls": 0, "prompt": None}
    originals = {name: getattr(ft, name).forward for name in experts}

    def forward_of(name):
        original = originals[name]
        names = list(inspect.signature(original).parameters)

        def forward(*args, **kwargs):
            kwargs.update(dict(zip(names, args, strict=False)))
            call = state["calls"]
            state["calls"] += 1
            step = call // 2
            if call % 2 == 0:
                out = original(**kwargs)
                state["prompt"] = (kwargs, out)
                return out
            prompt_kwargs, prompt_out = state["prompt"]
            if not int(interval[0] * steps) <= step < int(interval[1] * steps):
                return prompt_out
            w = float(omega_fn(step / steps))
            if full_weak is not None:
                full_weak(w)
            else:
                weak.set_adapters([adapter], [w])
            inputs = prompt_kwargs if method == "ag" else kwargs
            if weak_condition is not None:
                inputs = weak_condition(inputs, rows if method == "ag" else [negative] * len(rows))
            return getattr(weak, name)(**inputs)

        return forward

    for name in experts:
        getattr(ft, name).forward = forward_of(name)
    try:
        generators = [torch.Generator().manual_seed(seed + i) for _ in prompts for i in range(num_images)]
        with torch.no_grad():
            result = ft(
                prompt=rows,
                negative_prompt=[negative] * len(rows),
                **{scale_argument: scale},
                num_inference_steps=steps,
                generator=generators,
                height=side,
                width=side,
                output_type="latent",
                **call_kwargs,
            )
    finally:
        for name in experts:
            del getattr(ft, name).forward
    assert state["calls"] == 2 * steps, "the stock pipeline made no negative call every step"
    out = result.frames if hasattr(result, "frames") else result.images
    return out.reshape(len(prompts), num_images, *out.shape[1:])
