"""ω schedules, the guidance config's checks, the guidance interval and guidance_rescale."""

from __future__ import annotations

import math

import pytest
import torch

from steerguide.errors import UserError
from steerguide.guidance import GuidanceConfig, guide
from steerguide.loading import load_personalization, load_pipeline
from steerguide.sampling import sample
from steerguide.schedules import Constant, Cosine, Linear, Piecewise, parse_schedule
from steerguide.testing import save_random_lora


def test_schedules():
    assert parse_schedule("constant", 0.3)(0.7) == 0.3
    lin = parse_schedule("linear:1.0", 0.2)
    assert isinstance(lin, Linear) and lin(0.0) == 0.2 and lin(0.5) == pytest.approx(0.6) and lin(1.0) == 1.0
    cos = parse_schedule("cosine:1.0", 0.0)
    assert isinstance(cos, Cosine) and cos(0.0) == 0.0 and cos(0.5) == pytest.approx(0.5)
    assert cos(0.25) == pytest.approx((1 - math.cos(math.pi / 4)) / 2)
    pw = parse_schedule("piecewise:0.5=1.0,0.25=0.5", 0.0)
    assert isinstance(pw, Piecewise) and [pw(t) for t in (0.0, 0.3, 0.6)] == [0.0, 0.5, 1.0]
    assert isinstance(parse_schedule(None, 0.4), Constant)


@pytest.mark.parametrize(
    "spec,needle",
    [
        ("zigzag", "unknown omega schedule"),
        ("linear", "needs an end"),
        ("piecewise:", "needs knots"),
        ("piecewise:0.5", "TAU=OMEGA"),
        ("piecewise:1.5=0.2", "outside [0, 1]"),
        ("cosine:x", "not a number"),
    ],
)
def test_bad_schedules(spec, needle):
    with pytest.raises(UserError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        parse_schedule(spec, 0.0)


def test_config_checks_and_defaults():
    assert GuidanceConfig("pg").omega == 0.5 and GuidanceConfig("ag").omega == 0.0
    assert GuidanceConfig("cfg", omega=0.2).omega_at(0.5) == 1.0  # CFG's weak model is θ_ft
    with pytest.raises(UserError, match="outside"):
        GuidanceConfig("pg", omega=0.5, omega_schedule="piecewise:0.5=1.2")
    assert (
        GuidanceConfig("pg", omega=0.5, omega_schedule="linear:1.5", allow_extrapolation=True).omega_at(1.0)
        == 1.5
    )
    config = GuidanceConfig("pg", omega_schedule=lambda tau: tau * tau)
    assert config.omega_at(0.5) == 0.25
    with pytest.raises(UserError, match="outside"):  # a callable is checked on a grid of τ up front
        GuidanceConfig("pg", omega_schedule=lambda tau: 2 * tau)
    for bad in [dict(method="nope"), dict(scale=-0.5), dict(interval=(0.6, 0.4)), dict(guidance_rescale=2.0)]:
        with pytest.raises(UserError):
            GuidanceConfig(**bad)


@pytest.mark.parametrize("method", ["cfg", "ag", "pg"])
def test_scale_below_one_is_refused_in_one_line(method):
    """Pipelines do not duplicate the batch at w <= 1: a scale of 0.5 would be recorded, never applied."""
    with pytest.raises(UserError, match="scale must be a number >= 1"):
        GuidanceConfig(method, scale=0.5)
    assert GuidanceConfig(method, scale=1.0).scale == 1.0


@pytest.mark.parametrize(
    "interval", [(0.25, 0.75), (0.0, 1.0), (0.1, 0.9), (0.3, 0.7), (0.0, 0.5), (0.5, 1.0), (0.34, 0.66)]
)
@pytest.mark.parametrize("steps", [4, 7, 10, 30, 50])
def test_guidance_interval_edges_follow_diffusers_guiders(interval, steps):
    """Step i of N is guided exactly where diffusers' guiders (BaseGuidance start/stop) guide it."""
    from diffusers.guiders import ClassifierFreeGuidance

    guider = ClassifierFreeGuidance(guidance_scale=5.0, start=interval[0], stop=interval[1])
    config = GuidanceConfig("pg", interval=interval)
    for step in range(steps):
        guider.set_state(step=step, num_inference_steps=steps, timestep=torch.tensor(0))
        assert config.active_at_step(step, steps) == guider._is_cfg_enabled(), (interval, steps, step)


def test_guide_formula():
    first, cond = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.0])
    torch.testing.assert_close(guide(first, cond, 2.0), torch.tensor([5.0, 2.0]))
    torch.testing.assert_close(guide(first, cond, 0.0), first)


@pytest.fixture(scope="module")
def sd15_lora(tiny_model_dir, tmp_path_factory):
    base = tiny_model_dir("sd15")
    return base, save_random_lora(load_pipeline(base), tmp_path_factory.mktemp("lora"), seed=4)


def _latents(base, lora, config, **kw):
    pipe = load_pipeline(base)
    personal = load_personalization(pipe, lora)
    result = sample(
        pipe,
        personal,
        config,
        ["a dog", "a cat"],
        steps=4,
        seed=1,
        height=32,
        width=32,
        progress=False,
        output_type="latent",
        **kw,
    )
    return torch.stack([r[0] for r in result.images]), result.counters


def test_guidance_interval(sd15_lora):
    base, lora = sd15_lora
    never, counters = _latents(base, lora, GuidanceConfig("pg", scale=5.0, omega=0.0, interval=(0.0, 0.0)))
    unguided, _ = _latents(base, lora, GuidanceConfig("cfg", scale=1.0))
    torch.testing.assert_close(never, unguided, atol=1e-5, rtol=1e-5)
    assert counters.denoiser_rows == 4 * 2  # outside the interval only the prompt half runs
    late, counters = _latents(base, lora, GuidanceConfig("pg", scale=5.0, omega=0.0, interval=(0.5, 1.0)))
    assert counters.denoiser_rows == 2 * 2 + 2 * 4
    full, _ = _latents(base, lora, GuidanceConfig("pg", scale=5.0, omega=0.0))
    assert (late - full).abs().max() > 1e-4 and (late - unguided).abs().max() > 1e-4


def test_guidance_rescale_reaches_the_pipeline(sd15_lora):
    base, lora = sd15_lora
    pg, _ = _latents(base, lora, GuidanceConfig("pg", scale=5.0, omega=1.0, guidance_rescale=0.7))
    cfg, _ = _latents(base, lora, GuidanceConfig("cfg", scale=5.0, guidance_rescale=0.7))
    plain, _ = _latents(base, lora, GuidanceConfig("cfg", scale=5.0))
    torch.testing.assert_close(pg, cfg, atol=0, rtol=0)
    assert (cfg - plain).abs().max() > 1e-4


def test_negative_prompt_is_the_null_condition(sd15_lora):
    base, lora = sd15_lora
    with_negative, _ = _latents(
        base, lora, GuidanceConfig("pg", scale=5.0, omega=0.3), negative_prompt="blurry"
    )
    without, _ = _latents(base, lora, GuidanceConfig("pg", scale=5.0, omega=0.3))
    assert (with_negative - without).abs().max() > 1e-4


def test_drop_in_on_the_stock_call_keeps_pipeline_features(tiny_model_dir, tmp_path):
    """`guided()` around a plain SDXL pipeline call: several images per prompt, callbacks and a negative
    prompt keep working; PG at ω = 1 gives the stock CFG images and the same denoiser rows."""
    from steerguide import guided

    base = tiny_model_dir("sdxl")
    lora = save_random_lora(load_pipeline(base), tmp_path / "lora", seed=2)
    pipe = load_pipeline(base)
    personal = load_personalization(pipe, lora)
    steps_seen = []

    def callback(pipeline, step, timestep, kwargs):
        steps_seen.append(step)
        return kwargs

    def call(config):
        with guided(pipe, personal, config) as wrapper:
            out = pipe(
                "a dog",
                negative_prompt="blurry",
                num_images_per_prompt=2,
                num_inference_steps=3,
                guidance_scale=config.scale,
                height=32,
                width=32,
                output_type="latent",
                generator=torch.Generator().manual_seed(0),
                callback_on_step_end=callback,
            ).images
        return out, wrapper.counters

    stock = pipe(
        "a dog",
        negative_prompt="blurry",
        num_images_per_prompt=2,
        num_inference_steps=3,
        guidance_scale=5.0,
        height=32,
        width=32,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
    ).images
    pg1, counters = call(GuidanceConfig("pg", scale=5.0, omega=1.0))
    torch.testing.assert_close(pg1, stock, atol=0, rtol=0)
    pg0, counters0 = call(GuidanceConfig("pg", scale=5.0, omega=0.0))
    assert counters.denoiser_rows == counters0.denoiser_rows == 3 * 2 * 2
    assert (pg0 - stock).abs().max() > 1e-4
    assert steps_seen == [0, 1, 2, 0, 1, 2]
    assert "forward" not in vars(pipe.unet)  # uninstalled after the block


@pytest.mark.parametrize(
    "name,kwargs,expected",
    [
        ("HeunDiscreteScheduler", {}, [(0, 4), (0, 4), (1, 4), (1, 4), (2, 4), (2, 4), (3, 4)]),
        ("KDPM2DiscreteScheduler", {}, [(0, 4), (0, 4), (1, 4), (1, 4), (2, 4), (2, 4), (3, 4)]),
        ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, [(i, 8) for i in range(8)]),
        ("UniPCMultistepScheduler", {"use_karras_sigmas": True}, [(i, 8) for i in range(8)]),
        ("PNDMScheduler", {"skip_prk_steps": True}, [(i, 5) for i in range(5)]),
        ("DDIMScheduler", {}, [(i, 4) for i in range(4)]),
    ],
)
def test_step_index_from_the_scheduler(name, kwargs, expected):
    """Stepping a real scheduler by hand: the step under way at every denoiser call, even where integer
    timesteps repeat (Karras sigmas near the end, Heun's pairs, PNDM's first step)."""
    import diffusers

    from steerguide.block import step_of

    scheduler = getattr(diffusers, name)(**kwargs)
    steps = 8 if "Multistep" in name else 4
    scheduler.set_timesteps(steps)
    sample = torch.zeros(1, 4, 4, 4)
    seen = []
    for t in scheduler.timesteps:
        seen.append(step_of(scheduler, t))
        sample = scheduler.step(torch.zeros_like(sample), t, sample).prev_sample
    assert seen == expected
