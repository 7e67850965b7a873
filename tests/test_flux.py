"""Flux: true CFG as two denoiser calls a step, guided through the separate-pass engine (steerguide.separate).

A tiny random FluxPipeline built locally (steerguide.testing.build_flux). CFG through steerguide is the
stock `FluxPipeline(true_cfg_scale=w, negative_prompt="")` bit for bit; PG and AG at intermediate ω equal
references built from diffusers and peft alone (tests/reference_impl.separate_reference_latents: a
second pipeline whose adapter is at scale ω, or whose transformer holds the lerped weights), for LoRAs in
three layouts diffusers' Flux loader reads and for a full fine-tune; a schedule and an interval by step.
"""

from __future__ import annotations

import functools

import pytest
import torch
from reference_impl import cosine, lerp_into, load, lora_pipes, separate_reference_latents

from steerguide.guidance import GuidanceConfig
from steerguide.loading import load_personalization, load_pipeline
from steerguide.sampling import sample
from steerguide.testing import random_lora_state_dict, save_random_lora

PROMPTS = ["a dog on the beach", "a red cat"]
SIDE = 16
ATOL = 2e-4
EXTRA = dict(max_sequence_length=16)  # the T5 stand-in reads 16 tokens (the pipeline's default is 512)
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj", "proj_mlp", "proj_out")


@pytest.fixture(scope="module")
def flux(tiny_model_dir, tmp_path_factory):
    """(base, {layout: LoRA file or folder}, full fine-tune folder) for the tiny Flux."""
    from safetensors.torch import save_file

    base = tiny_model_dir("flux")
    pipe = load_pipeline(base)
    loras = {"diffusers": save_random_lora(pipe, tmp_path_factory.mktemp("flux-lora"), seed=3, std=0.1,
                                           target_modules=TARGETS)}  # fmt: skip
    # ai-toolkit: diffusers' module names under "transformer.", no metadata, an alpha per module.
    state = random_lora_state_dict(pipe, seed=4, std=0.1, target_modules=TARGETS)
    ai = {f"transformer.{k}": v for k, v in state.items()}
    ai.update({f"transformer.{k.split('.lora_A')[0]}.alpha": torch.tensor(8.0) for k in state if "lora_A" in k})
    folder = tmp_path_factory.mktemp("flux-ai-toolkit")
    save_file(ai, str(folder / "ai_toolkit_lora.safetensors"))
    loras["ai-toolkit"] = folder / "ai_toolkit_lora.safetensors"
    # kohya (sd-scripts): the original Flux module names, fused qkv, lora_down/lora_up/alpha.
    g = torch.Generator().manual_seed(5)
    inner, rank = pipe.transformer.inner_dim, 4
    shapes = {
        "double_blocks_0_img_attn_qkv": (inner, 3 * inner),
        "double_blocks_0_img_attn_proj": (inner, inner),
        "double_blocks_0_txt_attn_qkv": (inner, 3 * inner),
        "single_blocks_0_linear2": (inner + 4 * inner, inner),
    }
    kohya = {}
    for name, (fan_in, fan_out) in shapes.items():
        kohya[f"lora_unet_{name}.lora_down.weight"] = torch.randn(rank, fan_in, generator=g) * 0.1
        kohya[f"lora_unet_{name}.lora_up.weight"] = torch.randn(fan_out, rank, generator=g) * 0.1
        kohya[f"lora_unet_{name}.alpha"] = torch.tensor(2.0)
    folder = tmp_path_factory.mktemp("flux-kohya")
    save_file(kohya, str(folder / "kohya_lora.safetensors"))
    loras["kohya"] = folder / "kohya_lora.safetensors"
    # a full fine-tune: a LoRA fused into the transformer, saved as a transformer folder
    fused = load_pipeline(base)
    fused.load_lora_weights(str(loras["diffusers"]))
    fused.fuse_lora()
    fused.unload_lora_weights()
    full = tmp_path_factory.mktemp("flux-full")
    fused.transformer.save_pretrained(full, safe_serialization=True)
    return base, loras, full


@functools.cache
def _engine_pipe(base, personalization):
    pipe = load_pipeline(base)
    return pipe, load_personalization(pipe, personalization)


@pytest.fixture(scope="module", autouse=True)
def _forget_loaded_pipelines():
    yield
    _engine_pipe.cache_clear()


def engine(base, personalization, config, steps=4, negative=None):
    pipe, personal = _engine_pipe(base, personalization)
    result = sample(pipe, personal, config, PROMPTS, num_images=2, seed=5, steps=steps, height=SIDE,
                    width=SIDE, negative_prompt=negative, progress=False, output_type="latent", **EXTRA)  # fmt: skip
    return torch.stack([torch.stack(row) for row in result.images]), result


def lora_reference(base, lora, method, omega, **kw):
    ft, weak = lora_pipes(base, lora)
    return separate_reference_latents(ft, weak, method=method, scale=4.0, omega=omega, prompts=PROMPTS,
                                      seed=5, side=SIDE, **EXTRA, **kw)  # fmt: skip


def full_reference(base, full, method, omega):
    from diffusers import FluxTransformer2DModel

    ft = load(base, transformer=FluxTransformer2DModel.from_pretrained(full))
    weak = load(base)
    pre = {k: v.clone() for k, v in weak.transformer.state_dict().items()}
    fine = {k: v for k, v in ft.transformer.state_dict().items() if not torch.equal(v, pre[k])}
    return separate_reference_latents(ft, weak, method=method, scale=4.0, omega=omega, prompts=PROMPTS,
                                      seed=5, side=SIDE, adapter=None,
                                      full_weak=lerp_into(weak.transformer, pre, fine), **EXTRA)  # fmt: skip


def test_cfg_is_the_stock_true_cfg_pipeline_bit_for_bit(flux):
    """Image by image, as a user calls `FluxPipeline(prompt, negative_prompt="", true_cfg_scale=w)`. (A
    batch given one "" broadcasts one negative embedding over its rows: other sums, 1e-6 apart.)"""
    base, loras, _ = flux
    pipe, personal = _engine_pipe(base, loras["diffusers"])
    result = sample(pipe, personal, GuidanceConfig("cfg", scale=4.0), PROMPTS, num_images=2, seed=5, steps=4,
                    height=SIDE, width=SIDE, batch_size=1, progress=False, output_type="latent", **EXTRA)  # fmt: skip
    stock = load(base)
    stock.load_lora_weights(str(loras["diffusers"]))
    for p, prompt in enumerate(PROMPTS):
        for i in range(2):
            with torch.no_grad():
                want = stock(prompt=prompt, negative_prompt="", true_cfg_scale=4.0, num_inference_steps=4,
                             generator=torch.Generator().manual_seed(5 + i), height=SIDE, width=SIDE,
                             output_type="latent", **EXTRA).images[0]  # fmt: skip
            torch.testing.assert_close(result.images[p][i], want, atol=0, rtol=0)
    assert result.counters.denoiser_calls == 8 * 4  # true CFG: a prompt call and a negative call a step
    assert result.counters.denoiser_rows == 8 * 4
    unguided, _ = engine(base, loras["diffusers"], GuidanceConfig("cfg", scale=1.0))
    guided_, _ = engine(base, loras["diffusers"], GuidanceConfig("cfg", scale=4.0))
    assert (unguided - guided_).abs().max() > 100 * ATOL  # the guidance matters


@pytest.mark.parametrize("method,omega", [("pg", 0.0), ("pg", 0.3), ("pg", 1.0), ("ag", 0.3)])
def test_lora_methods_match_the_two_pipeline_reference(flux, method, omega):
    base, loras, _ = flux
    ours, result = engine(base, loras["diffusers"], GuidanceConfig(method, scale=4.0, omega=omega))
    ref = lora_reference(base, loras["diffusers"], method, omega)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-4)
    _, cfg = engine(base, loras["diffusers"], GuidanceConfig("cfg", scale=4.0))
    assert result.counters.denoiser_calls == cfg.counters.denoiser_calls  # PG's calls and rows are CFG's
    assert result.counters.denoiser_rows == cfg.counters.denoiser_rows
    if (method, omega) != ("pg", 1.0):
        cfg_latents, _ = engine(base, loras["diffusers"], GuidanceConfig("cfg", scale=4.0))
        assert (cfg_latents - ref).abs().max() > 50 * ATOL  # the weak model matters: the test can fail


@pytest.mark.parametrize("method", ["pg", "ag"])
def test_text_encoder_lora_reencodes_the_weak_call_at_omega(flux, text_lora, method):
    """A LoRA on CLIP too: the weak call's condition (∅ for PG, c for AG) is encoded by CLIP at θ_ω."""
    base, lora = flux[0], text_lora
    ours, _ = engine(base, lora, GuidanceConfig(method, scale=4.0, omega=0.3), negative="blurry")
    ft, weak = load(base), load(base)
    for pipe in (ft, weak):
        pipe.load_lora_weights(str(lora), adapter_name="p")

    def weak_condition(kwargs, texts):
        embeds, pooled, ids = weak.encode_prompt(prompt=texts, prompt_2=None, max_sequence_length=16)
        return {**kwargs, "encoder_hidden_states": embeds, "pooled_projections": pooled, "txt_ids": ids}

    ref = separate_reference_latents(ft, weak, method=method, scale=4.0, omega=0.3, prompts=PROMPTS, seed=5,
                                     side=SIDE, negative="blurry", weak_condition=weak_condition, **EXTRA)  # fmt: skip
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-4)
    stale = separate_reference_latents(ft, weak, method=method, scale=4.0, omega=0.3, prompts=PROMPTS, seed=5,
                                       side=SIDE, negative="blurry", **EXTRA)  # fmt: skip
    assert (stale - ref).abs().max() > 20 * ATOL  # CLIP at θ_ω matters: the test can fail


@pytest.fixture(scope="module")
def text_lora(flux, tmp_path_factory):
    """A LoRA on the transformer and on CLIP (diffusers' Flux loader reads no T5 LoRA)."""
    return save_random_lora(load_pipeline(flux[0]), tmp_path_factory.mktemp("flux-te-lora"), seed=6, std=0.1,
                            target_modules=TARGETS, text_encoders=("text_encoder",), text_encoder_std=0.5)  # fmt: skip


@pytest.mark.parametrize("layout", ["ai-toolkit", "kohya"])
def test_other_lora_layouts_load_and_match_the_reference(flux, layout):
    base, loras, _ = flux
    ours, _ = engine(base, loras[layout], GuidanceConfig("pg", scale=4.0, omega=0.3))
    ref = lora_reference(base, loras[layout], "pg", 0.3)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-4)
    cfg, _ = engine(base, loras[layout], GuidanceConfig("cfg", scale=4.0))
    assert (cfg - ref).abs().max() > 50 * ATOL


@pytest.mark.parametrize("method", ["pg", "ag"])
def test_full_finetune_matches_the_lerped_reference(flux, method):
    base, _, full = flux
    ours, result = engine(base, full, GuidanceConfig(method, scale=4.0, omega=0.3))
    torch.testing.assert_close(ours, full_reference(base, full, method, 0.3), atol=ATOL, rtol=1e-4)
    assert result.counters.denoiser_calls == 8 and result.counters.denoiser_rows == 8 * 4


def test_scheduled_omega_and_interval_follow_the_step_index(flux):
    """ω(step/N) on a cosine schedule and diffusers' interval rule; outside it no negative call runs."""
    base, loras, _ = flux
    config = GuidanceConfig("pg", scale=4.0, omega=0.0, omega_schedule="cosine:1.0", interval=(0.25, 0.75))
    ours, result = engine(base, loras["diffusers"], config, steps=6, negative="blurry")
    ref = lora_reference(base, loras["diffusers"], "pg", cosine(0.0, 1.0), steps=6, interval=(0.25, 0.75),
                         negative="blurry")  # fmt: skip
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-4)
    # int(0.25·6) = 1 ≤ step < int(0.75·6) = 4: steps 1, 2, 3 guided
    assert [o is None for o in result.omegas] == [True, False, False, False, True, True]
    assert [o for o in result.omegas if o is not None] == pytest.approx([cosine(0.0, 1.0)(s / 6) for s in (1, 2, 3)])
    assert result.counters.denoiser_calls == 6 + 3
    _, cfg = engine(base, loras["diffusers"], GuidanceConfig("cfg", scale=4.0, interval=(0.25, 0.75)), steps=6)
    assert cfg.counters.denoiser_calls == result.counters.denoiser_calls


# -- the command line ------------------------------------------------------------------------------------


def _cli(base, out, *extra):
    from steerguide.cli import run

    return run(["generate", "--base", str(base), "-p", "a dog", "--steps", "3", "--height", str(SIDE),
                "--width", str(SIDE), "--out", str(out), *map(str, extra)])  # fmt: skip


def _bad(capsys, code):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("steerguide: error:"), err
    return err[0]


def test_generate_cfg_is_true_cfg_and_pg_costs_its_calls(flux, tmp_path):
    """`--scale` is true_cfg_scale, the negative prompt "" by default: CFG is the stock true CFG image."""
    import json

    import numpy as np
    from PIL import Image

    base, loras, _ = flux
    assert _cli(base, tmp_path / "cfg", "--personalization", loras["diffusers"], "--method", "cfg", "--scale", 4) == 0
    assert _cli(base, tmp_path / "pg", "--personalization", loras["diffusers"], "--method", "pg", "--omega", 0.3,
                "--scale", 4) == 0  # fmt: skip
    stock = load(base)
    stock.load_lora_weights(str(loras["diffusers"]))
    with torch.no_grad():
        want = stock(prompt="a dog", negative_prompt="", true_cfg_scale=4.0, num_inference_steps=3,
                     generator=torch.Generator().manual_seed(0), height=SIDE, width=SIDE).images[0]  # fmt: skip
    cfg = json.loads((tmp_path / "cfg" / "run.json").read_text())
    pg = json.loads((tmp_path / "pg" / "run.json").read_text())
    got = Image.open(tmp_path / "cfg" / cfg["images"][0]["file"])
    assert np.array_equal(np.asarray(got), np.asarray(want))
    assert cfg["family"] == "flux" and cfg["negative_prompt_used"] == ""
    assert cfg["denoiser_calls"] == pg["denoiser_calls"] == 6  # two calls a step, for PG as for CFG
    assert cfg["denoiser_rows"] == pg["denoiser_rows"] == 6
    assert pg["omega_per_step"] == [0.3, 0.3, 0.3]


def test_distilled_guidance_is_its_own_option(flux, tiny_model_dir, tmp_path, capsys):
    import json

    base, _, _ = flux
    assert _cli(base, tmp_path / "a", "--method", "cfg", "--scale", 1, "--distilled-guidance", 1.0) == 0
    assert _cli(base, tmp_path / "b", "--method", "cfg", "--scale", 1, "--distilled-guidance", 9.0) == 0
    a, b = (json.loads((tmp_path / n / "run.json").read_text()) for n in "ab")
    assert a["distilled_guidance"] == 1.0 and a["denoiser_calls"] == 3  # scale 1: no true CFG
    image_a, image_b = ((tmp_path / n / r["images"][0]["file"]).read_bytes() for n, r in (("a", a), ("b", b)))
    assert image_a != image_b  # the embedding got the value
    capsys.readouterr()
    line = _bad(capsys, _cli(tiny_model_dir("sd15"), tmp_path / "c", "--method", "cfg", "--distilled-guidance", 3))
    assert "no distilled guidance" in line


def test_a_lora_for_another_family_is_refused_in_one_line(flux, tiny_model_dir, tmp_path, capsys):
    base, loras, _ = flux
    sd15 = tiny_model_dir("sd15")
    sd_lora = save_random_lora(load_pipeline(sd15), tmp_path / "sd-lora")
    line = _bad(capsys, _cli(base, tmp_path / "a", "--personalization", sd_lora, "--method", "pg"))
    assert "does not fit" in line and "FluxPipeline" in line
    for lora in (loras["diffusers"], loras["kohya"]):
        line = _bad(capsys, _cli(sd15, tmp_path / "b", "--personalization", lora, "--method", "pg"))
        assert "does not fit" in line and "StableDiffusionPipeline" in line


def test_a_call_of_another_pipeline_inside_a_guided_block_is_not_guided(flux):
    """Dispatch follows the pipeline call on separate-pass families too: a twin pipeline sharing the
    transformer, called inside `guided(pipe)`, runs its own plain true CFG."""
    from diffusers import FluxPipeline

    from steerguide.denoiser import guided

    base, loras, _ = flux
    pipe, personal = _engine_pipe(base, loras["diffusers"])
    twin = FluxPipeline(**pipe.components)
    for p in (pipe, twin):
        p.set_progress_bar_config(disable=True)

    def call(p):
        with torch.no_grad():
            return p(prompt=PROMPTS[0], negative_prompt="", true_cfg_scale=4.0, num_inference_steps=2,
                     generator=torch.Generator().manual_seed(5), height=SIDE, width=SIDE,
                     output_type="latent", **EXTRA).images[0]  # fmt: skip

    want = call(twin)
    config = GuidanceConfig("pg", scale=4.0, omega=0.3)
    with guided(pipe, personal, config) as wrapper:
        guided_latents = call(pipe)
        other = call(twin)
    torch.testing.assert_close(other, want, atol=0, rtol=0)
    assert (guided_latents - want).abs().max() > 100 * ATOL  # the block's own pipeline was guided
    assert wrapper.counters.denoiser_calls == 2 * 2  # the twin's calls were not the block's
