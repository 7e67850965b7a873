"""Qwen-Image: true CFG as two denoiser calls a step, the negative one in `cache_context("uncond")`, and
the stock renormalization to the prompt prediction's norm after the mix (kept: outside the interval the
mix is D_ft(x, c) and the renormalization scales by exactly 1).

The references (tests/reference_impl.separate_reference_latents) count the calls by hand, in the
pipeline's order, and route the negative one through a second pipeline.
"""

from __future__ import annotations

import pytest
import torch
from reference_impl import (
    cosine,
    lerp_into,
    load,
    lora_and_fused_finetune,
    lora_pipes,
    separate_reference_latents,
)

from steerguide.guidance import GuidanceConfig
from steerguide.loading import load_personalization, load_pipeline
from steerguide.sampling import sample

PROMPTS = ["a dog on the beach", "a red cat"]
SIDE = 32
ATOL = 2e-4
EXTRA = dict(max_sequence_length=16)
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "img_mlp.net.2")


@pytest.fixture(scope="module")
def qwen(tiny_model_dir, tmp_path_factory):
    base = tiny_model_dir("qwen-image")
    lora, full = lora_and_fused_finetune(base, tmp_path_factory, "qwen", TARGETS)
    engines = {}
    for name, personalization in (("lora", lora), ("full", full)):
        engine_pipe = load_pipeline(base)
        engines[name] = (engine_pipe, load_personalization(engine_pipe, personalization))
    yield base, lora, full, engines
    engines.clear()


def engine(engines, kind, config, steps=4, negative=None, batch_size=16):
    pipe, personal = engines[kind]
    result = sample(pipe, personal, config, PROMPTS, num_images=2, seed=5, steps=steps, height=SIDE, width=SIDE,
                    negative_prompt=negative, progress=False, output_type="latent", max_sequence_length=16,
                    batch_size=batch_size)  # fmt: skip
    return torch.stack([torch.stack(row) for row in result.images]), result


def reference(base, lora, method, omega, **kw):
    ft, weak = lora_pipes(base, lora)
    return separate_reference_latents(ft, weak, method=method, scale=4.0, omega=omega, prompts=PROMPTS, seed=5,
                                      side=SIDE, **EXTRA, **kw)  # fmt: skip


def test_cfg_is_the_stock_pipeline_bit_for_bit(qwen):
    base, lora, _, engines = qwen
    _, result = engine(engines, "lora", GuidanceConfig("cfg", scale=4.0), batch_size=1)
    stock = load(base)
    stock.load_lora_weights(str(lora))
    for p, prompt in enumerate(PROMPTS):
        for i in range(2):
            with torch.no_grad():
                want = stock(prompt=prompt, negative_prompt="", true_cfg_scale=4.0, num_inference_steps=4, height=SIDE, width=SIDE,
                             generator=torch.Generator().manual_seed(5 + i), output_type="latent",
                             max_sequence_length=16).images[0]  # fmt: skip
            torch.testing.assert_close(result.images[p][i], want, atol=0, rtol=0)
    assert result.counters.denoiser_calls == 8 * 4


@pytest.mark.parametrize("method,omega", [("pg", 0.0), ("pg", 0.3), ("pg", 1.0), ("ag", 0.3)])
def test_lora_methods_match_the_reference(qwen, method, omega):
    base, lora, _, engines = qwen
    ours, result = engine(engines, "lora", GuidanceConfig(method, scale=4.0, omega=omega))
    torch.testing.assert_close(ours, reference(base, lora, method, omega), atol=ATOL, rtol=1e-4)
    cfg, cfg_result = engine(engines, "lora", GuidanceConfig("cfg", scale=4.0))
    assert result.counters.denoiser_calls == cfg_result.counters.denoiser_calls == 8
    assert result.counters.denoiser_rows == cfg_result.counters.denoiser_rows
    if (method, omega) != ("pg", 1.0):
        assert (cfg - ours).abs().max() > 50 * ATOL  # the weak model matters: the test can fail


def test_full_finetune_and_a_scheduled_interval_match_the_reference(qwen):
    from diffusers import QwenImageTransformer2DModel

    base, _, full, engines = qwen
    config = GuidanceConfig("pg", scale=4.0, omega=0.0, omega_schedule="cosine:1.0", interval=(0.25, 0.75))
    ours, result = engine(engines, "full", config, steps=6, negative="blurry")
    ft = load(base, transformer=QwenImageTransformer2DModel.from_pretrained(full))
    weak = load(base)
    pre = {k: v.clone() for k, v in weak.transformer.state_dict().items()}
    fine = {k: v for k, v in ft.transformer.state_dict().items() if not torch.equal(v, pre[k])}
    ref = separate_reference_latents(ft, weak, method="pg", scale=4.0, omega=cosine(0.0, 1.0), prompts=PROMPTS,
                                     seed=5, side=SIDE, steps=6, interval=(0.25, 0.75), negative="blurry",
                                     adapter=None, full_weak=lerp_into(weak.transformer, pre, fine), **EXTRA)  # fmt: skip
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-4)
    assert [o is None for o in result.omegas] == [True, False, False, False, True, True]
    assert result.counters.denoiser_calls == 6 + 3  # no negative call outside the interval


@pytest.mark.parametrize("method", ["pg", "ag"])
def test_modular_pipeline_takes_the_guiders(qwen, method):
    """diffusers' modular Qwen-Image pipeline with `PersonalizationGuidance` / `PersonalizedAutoGuidance`
    gives the latents of `steerguide.guided` on the stock pipeline; with `ClassifierFreeGuidance` the stock
    true CFG (the modular pipeline returns them unpacked)."""
    from diffusers.guiders import ClassifierFreeGuidance

    from steerguide.denoiser import guided
    from steerguide.guiders import PersonalizationGuidance, PersonalizedAutoGuidance, modular_pipeline

    _, _, _, engines = qwen
    pipe, personal = engines["lora"]
    modular = modular_pipeline(pipe)
    call = dict(prompt="a dog", negative_prompt="", num_inference_steps=3, height=SIDE, width=SIDE,
                max_sequence_length=16)  # fmt: skip

    def stock(config):
        with guided(pipe, personal, config), torch.no_grad():
            out = pipe(**call, true_cfg_scale=4.0, generator=torch.Generator().manual_seed(0),
                       output_type="latent").images  # fmt: skip
        return pipe._unpack_latents(out, SIDE, SIDE, pipe.vae_scale_factor)

    def modular_run(guider):
        modular.update_components(guider=guider)
        return modular(**call, generator=torch.Generator().manual_seed(0), output="latents")

    guider = (PersonalizationGuidance if method == "pg" else PersonalizedAutoGuidance)(
        guidance_scale=4.0, omega=0.3, personalization=personal
    )
    ours = modular_run(guider)
    torch.testing.assert_close(ours, stock(GuidanceConfig(method, scale=4.0, omega=0.3)), atol=1e-6, rtol=1e-5)
    cfg = modular_run(ClassifierFreeGuidance(guidance_scale=4.0))
    torch.testing.assert_close(cfg, stock(GuidanceConfig("cfg", scale=4.0)), atol=0, rtol=0)
    assert (ours - cfg).abs().max() > 50 * ATOL
