"""The seven properties of docs/method.md, to float tolerance, on tiny SD 1.5, SDXL and SD3 models.

Each model is saved to disk and loaded through the same code as real checkpoints. The personalization
is a random LoRA (both matrices random, so Δ is real) and the same LoRA fused into the base weights and
saved as a full diffusers fine-tune: the cross-check between the two realizations of θ_ω.
"""

from __future__ import annotations

import functools

import pytest
import torch

from steerguide.guidance import GuidanceConfig, guide
from steerguide.loading import load_personalization, load_pipeline
from steerguide.sampling import sample
from steerguide.testing import save_random_lora

ARCHS = ["sd15", "sdxl", "sd3"]
PROMPTS = ["a dog on the beach", "a red cat"]
STEPS = 4
ATOL = 2e-4
# 16×16 images (8×8 latents): the properties are identities of the guidance rule and of θ_ω, true at
# every latent position alike, so the image size adds nothing to what they pin, and a sampling run costs
# 40-80 % of one at 32×32 (SD 1.5: 0.24 s against 0.60 s).
SIDE = 16


@pytest.fixture(scope="module")
def models(tiny_model_dir, tmp_path_factory):
    """Per arch: (base folder, LoRA folder, the LoRA fused and saved as a full fine-tune folder)."""
    cache = {}

    def get(arch):
        if arch not in cache:
            base = tiny_model_dir(arch)
            pipe = load_pipeline(base)
            lora = save_random_lora(pipe, tmp_path_factory.mktemp(f"lora-{arch}"), seed=3)
            pipe.load_lora_weights(str(lora))
            pipe.fuse_lora()
            pipe.unload_lora_weights()
            full = tmp_path_factory.mktemp(f"full-{arch}")
            pipe.save_pretrained(full, safe_serialization=True)
            (full / "model_index.json").write_text((base / "model_index.json").read_text())
            cache[arch] = (base, lora, full)
        return cache[arch]

    return get


@functools.cache
def _loaded(base, personalization):
    """The engine's pipeline with `personalization` installed, loaded once per file and shared by every
    `run`: `sample` leaves a pipeline as it found it (the guidance wrapper is taken off, θ_ω caches are
    released), which is how a caller sampling several configurations uses it. The references below load
    their own pipelines, so a state that sampling left behind would show as a mismatch, not cancel out."""
    pipe = load_pipeline(base)
    return pipe, load_personalization(pipe, personalization)


@functools.cache
def _reference_pipes(base, personalization):
    """The two-model reference's own pipelines (the personalized one, the base one), shared by its calls."""
    pipe = load_pipeline(base)
    load_personalization(pipe, personalization)
    return pipe, load_pipeline(base)


@pytest.fixture(scope="module", autouse=True)
def _forget_loaded_pipelines():
    yield
    _loaded.cache_clear()
    _reference_pipes.cache_clear()


def run(base, personalization, config, **kw):
    pipe, personal = _loaded(base, personalization)
    result = sample(
        pipe,
        personal,
        config,
        PROMPTS,
        num_images=2,
        seed=7,
        steps=STEPS,
        height=SIDE,
        width=SIDE,
        progress=False,
        output_type="latent",
        **kw,
    )
    return torch.stack([torch.stack(row) for row in result.images]), result.counters


def _half(value, rows, which):
    """Slice every batched tensor of a denoiser call to one half (written independently of steerguide)."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == rows:
        return value[: rows // 2] if which == 0 else value[rows // 2 :]
    if isinstance(value, dict):
        return {k: _half(v, rows, which) for k, v in value.items()}
    return value


def reference_two_models(base, personalization, scale, null_model_personalized: bool):
    """A reference CFG loop whose null half runs a separately loaded model: the base model with no
    personalization (PG at ω = 0), and whose prompt half runs the personalized model."""
    pipe, base_pipe = _reference_pipes(base, personalization)
    denoiser = pipe.transformer if getattr(pipe, "transformer", None) is not None else pipe.unet
    null_denoiser = (
        base_pipe.transformer if getattr(base_pipe, "transformer", None) is not None else base_pipe.unet
    )
    names = list(__import__("inspect").signature(denoiser.forward).parameters)
    original = denoiser.forward

    def forward(*args, **kwargs):
        kwargs.update(dict(zip(names, args, strict=False)))
        rows = kwargs[names[0]].shape[0]
        null = {k: _half(v, rows, 0) for k, v in kwargs.items()}
        cond = {k: _half(v, rows, 1) for k, v in kwargs.items()}
        a = original(**null) if null_model_personalized else null_denoiser(**null)
        b = original(**cond)
        return (torch.cat([a[0], b[0]]),)

    denoiser.forward = forward
    generators = [torch.Generator().manual_seed(7 + i) for _ in PROMPTS for i in range(2)]
    try:
        with torch.no_grad():
            out = pipe(
                prompt=[p for p in PROMPTS for _ in range(2)],
                num_inference_steps=STEPS,
                guidance_scale=scale,
                generator=generators,
                height=SIDE,
                width=SIDE,
                output_type="latent",
            ).images
    finally:
        del denoiser.forward  # the pipelines are shared: the next reference gets the stock forward
    return out.reshape(len(PROMPTS), 2, *out.shape[1:])


# -- property 1 ---------------------------------------------------------------------------------------


def _always_duplicating(pipe):
    """Make the stock pipeline run its CFG batch [null; prompt] even at w = 1 (it skips it at w <= 1), so
    that property 1 is checked where the weak half really runs: uncond + 1·(cond − uncond) = cond."""
    cls = type(pipe)
    pipe.__class__ = type(cls.__name__, (cls,), {"do_classifier_free_guidance": property(lambda self: True)})
    return pipe


@pytest.mark.parametrize("arch", ["sd15", "sd3"])
@pytest.mark.parametrize("method", ["cfg", "ag", "pg"])
def test_p1_scale_one_returns_the_personalized_prediction(models, arch, method):
    from steerguide.denoiser import guided

    base, lora, _ = models(arch)
    want, _ = run(base, lora, GuidanceConfig("cfg", scale=1.0))  # the stock pipeline: D_ft(x, c) alone
    pipe = _always_duplicating(load_pipeline(base))
    personal = load_personalization(pipe, lora)
    config = GuidanceConfig(method, scale=1.0, omega=0.3 if method != "cfg" else None)
    generators = [torch.Generator().manual_seed(7 + i) for _ in PROMPTS for i in range(2)]
    with torch.no_grad(), guided(pipe, personal, config) as wrapper:
        got = pipe(
            prompt=[p for p in PROMPTS for _ in range(2)],
            num_inference_steps=STEPS,
            guidance_scale=1.0,
            generator=generators,
            height=SIDE,
            width=SIDE,
            output_type="latent",
        ).images
    torch.testing.assert_close(got.reshape(want.shape), want, atol=1e-5, rtol=1e-5)
    assert wrapper.counters.denoiser_rows == STEPS * len(PROMPTS) * 2 * 2  # the weak half did run
    first, cond = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(guide(first, cond, 1.0), cond)


# -- property 2 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["lora", "full"])
def test_p2_pg_at_omega_one_is_cfg(models, arch, kind):
    base, lora, full = models(arch)
    personalization = lora if kind == "lora" else full
    pg, _ = run(base, personalization, GuidanceConfig("pg", scale=5.0, omega=1.0))
    cfg, _ = run(base, personalization, GuidanceConfig("cfg", scale=5.0))
    torch.testing.assert_close(pg, cfg, atol=0, rtol=0)


def test_p2_cfg_reproduces_the_stock_pipeline(models):
    from diffusers import DiffusionPipeline

    base, lora, _ = models("sd15")
    ours, _ = run(base, lora, GuidanceConfig("cfg", scale=5.0))
    ours_one_by_one, _ = run(base, lora, GuidanceConfig("cfg", scale=5.0), batch_size=1)
    stock = DiffusionPipeline.from_pretrained(base)
    stock.load_lora_weights(str(lora))
    for p, prompt in enumerate(PROMPTS):
        for i in range(2):
            with torch.no_grad():
                img = stock(
                    prompt,
                    num_inference_steps=STEPS,
                    guidance_scale=5.0,
                    height=SIDE,
                    width=SIDE,
                    generator=torch.Generator().manual_seed(7 + i),
                    output_type="latent",
                ).images[0]
            torch.testing.assert_close(ours_one_by_one[p, i], img, atol=0, rtol=0)  # bit for bit
            torch.testing.assert_close(ours[p, i], img, atol=1e-4, rtol=1e-4)  # batching reorders sums


# -- property 3 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["lora", "full"])
def test_p3_pg_at_omega_zero_uses_the_base_model_null_prediction(models, arch, kind):
    base, lora, full = models(arch)
    personalization = lora if kind == "lora" else full
    pg, _ = run(base, personalization, GuidanceConfig("pg", scale=5.0, omega=0.0))
    ref = reference_two_models(base, personalization, 5.0, null_model_personalized=False)
    torch.testing.assert_close(pg, ref, atol=ATOL, rtol=1e-4)
    cfg_ref = reference_two_models(base, personalization, 5.0, null_model_personalized=True)
    assert (pg - cfg_ref).abs().max() > 1e-3  # the personalization matters: the test can fail


# -- property 4 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_p4_row_scaled_batch_equals_two_separate_passes(models, arch):
    from steerguide.block import denoiser_of

    base, lora, _ = models(arch)
    pipe = load_pipeline(base)
    personal = load_personalization(pipe, lora)
    denoiser = denoiser_of(pipe)
    torch.manual_seed(0)
    b = 3
    if arch == "sd3":
        inputs = dict(
            hidden_states=torch.randn(2 * b, 4, 8, 8),
            timestep=torch.full((2 * b,), 500.0),
            encoder_hidden_states=torch.randn(2 * b, 16, 64),
            pooled_projections=torch.randn(2 * b, 64),
        )
    else:
        inputs = dict(
            sample=torch.randn(2 * b, 4, 8, 8),
            timestep=torch.tensor(500),
            encoder_hidden_states=torch.randn(2 * b, 16, denoiser.config.cross_attention_dim),
        )
        if arch == "sdxl":
            inputs["added_cond_kwargs"] = {
                "text_embeds": torch.randn(2 * b, 32),
                "time_ids": torch.randn(2 * b, 6),
            }
    omega = 0.35
    with torch.no_grad(), personal.lora.rows([omega] * b + [1.0] * b):
        batched = denoiser(**inputs, return_dict=False)[0]
    # Reference: peft's own adapter weights, one half at a time.
    with torch.no_grad():
        pipe.set_adapters(["personal"], adapter_weights=[omega])
        first = denoiser(**{k: _half(v, 2 * b, 0) for k, v in inputs.items()}, return_dict=False)[0]
        pipe.set_adapters(["personal"], adapter_weights=[1.0])
        second = denoiser(**{k: _half(v, 2 * b, 1) for k, v in inputs.items()}, return_dict=False)[0]
    torch.testing.assert_close(batched, torch.cat([first, second]), atol=1e-5, rtol=1e-5)


# -- property 5 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("omega", [0.0, 0.3, 0.7, 1.0])
def test_p5_merged_lora_equals_separate_lora(models, arch, omega):
    base, lora, full = models(arch)
    config = GuidanceConfig("pg", scale=5.0, omega=omega)
    separate, _ = run(base, lora, config)
    merged, _ = run(base, full, config)
    torch.testing.assert_close(separate, merged, atol=ATOL, rtol=1e-4)


def test_p5_holds_for_scheduled_omega(models):
    base, lora, full = models("sd15")
    config = GuidanceConfig("pg", scale=5.0, omega=0.1, omega_schedule="cosine:0.9")
    separate, _ = run(base, lora, config)
    merged, _ = run(base, full, config)
    torch.testing.assert_close(separate, merged, atol=ATOL, rtol=1e-4)


# -- property 6 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["lora", "full"])
def test_p6_autoguidance_by_the_model_itself_is_the_conditional_prediction(models, arch, kind):
    base, lora, full = models(arch)
    personalization = lora if kind == "lora" else full
    ag, _ = run(base, personalization, GuidanceConfig("ag", scale=5.0, omega=1.0))
    unguided, _ = run(base, personalization, GuidanceConfig("cfg", scale=1.0))
    torch.testing.assert_close(ag, unguided, atol=ATOL, rtol=1e-4)
    ag_pre, _ = run(base, personalization, GuidanceConfig("ag", scale=5.0, omega=0.0))
    assert (ag_pre - unguided).abs().max() > 1e-3


# -- property 7 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_p7_pg_costs_the_rows_of_cfg(models, arch):
    base, lora, full = models(arch)
    _, cfg_lora = run(base, lora, GuidanceConfig("cfg", scale=5.0))
    _, pg_lora = run(base, lora, GuidanceConfig("pg", scale=5.0, omega=0.4))
    _, pg_sched = run(base, lora, GuidanceConfig("pg", scale=5.0, omega=0.0, omega_schedule="linear:1.0"))
    _, cfg_full = run(base, full, GuidanceConfig("cfg", scale=5.0))
    _, pg_full = run(base, full, GuidanceConfig("pg", scale=5.0, omega=0.4))
    _, ag_full = run(base, full, GuidanceConfig("ag", scale=5.0))
    assert cfg_lora.denoiser_rows == STEPS * len(PROMPTS) * 2 * 2
    assert pg_lora.denoiser_rows == cfg_lora.denoiser_rows == pg_sched.denoiser_rows
    assert pg_lora.denoiser_calls == cfg_lora.denoiser_calls == pg_sched.denoiser_calls == STEPS
    assert pg_full.denoiser_rows == cfg_full.denoiser_rows == ag_full.denoiser_rows == cfg_lora.denoiser_rows
