"""The engine against references built from diffusers and peft alone (tests/reference_impl.py).

Every method at an intermediate ω (0.3), w > 1, LoRAs on linear and 1×1/3×3 convolution layers with a
bias on B, text-encoder LoRAs, full fine-tunes, scheduled ω, the guidance interval, a second-order
scheduler: a wrong weak model, a wrong condition, a wrong step index or a wrong interval edge all change
these samples by far more than the tolerance.
"""

from __future__ import annotations

import functools

import pytest
import torch
from reference_impl import cosine, lerp_into, load, reference_latents, second_order_step

from steerguide.guidance import GuidanceConfig
from steerguide.loading import load_personalization, load_pipeline
from steerguide.sampling import sample
from steerguide.testing import save_random_lora

PROMPTS = ["a dog on the beach", "a red cat"]
ATOL = 2e-4
# 16×16 images (8×8 latents): a wrong weak model, condition, step or interval edge changes every latent
# position alike, so the size adds nothing to what these comparisons pin; SD 1.5 samples in 0.24 s, not 0.60.
SIDE = 16
TARGETS = {
    "sd15": ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "proj_in"),
    "sdxl": ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"),
    "sd3": ("to_q", "to_k", "to_v", "to_out.0", "add_k_proj"),
}
TEXT_ENCODERS = {
    "sd15": ("text_encoder",),
    "sdxl": ("text_encoder", "text_encoder_2"),
    "sd3": ("text_encoder",),
}


@pytest.fixture(scope="module")
def loras(tiny_model_dir, tmp_path_factory):
    """Per (arch, with text encoders): a LoRA folder with conv and bias layers."""
    cache = {}

    def get(arch, text=False):
        base = tiny_model_dir(arch)
        if (arch, text) not in cache:
            cache[arch, text] = save_random_lora(
                load_pipeline(base),
                tmp_path_factory.mktemp(f"ref-lora-{arch}"),
                seed=11,
                target_modules=TARGETS[arch],
                lora_bias=True,
                text_encoders=TEXT_ENCODERS[arch] if text else (),
            )
        return base, cache[arch, text]

    return get


@functools.cache
def _engine_pipe(base, personalization, scheduler):
    """The engine's pipeline with the personalization installed, loaded once per file and shared by its
    runs (`sample` leaves a pipeline as it found it); the references load their own pipelines."""
    pipe = load_pipeline(base, scheduler=scheduler)
    return pipe, load_personalization(pipe, personalization)


@functools.cache
def _reference_pipes(base, lora, scheduler):
    """The reference's two stock pipelines (`ft`, `weak`) with the LoRA as adapter "p", shared by its calls:
    `reference_latents` sets `weak`'s adapter scale before each use and puts `ft`'s forward back."""
    ft, weak = load(base), load(base)
    for pipe in (ft, weak):
        pipe.load_lora_weights(str(lora), adapter_name="p")
    if scheduler is not None:
        import diffusers

        cls = getattr(diffusers, scheduler + "Scheduler")
        ft.scheduler = cls.from_config(ft.scheduler.config)
    return ft, weak


@pytest.fixture(scope="module", autouse=True)
def _forget_loaded_pipelines():
    yield
    _engine_pipe.cache_clear()
    _reference_pipes.cache_clear()


def engine(base, personalization, config, steps=4, negative=None, scheduler=None, **kw):
    pipe, personal = _engine_pipe(base, personalization, scheduler)
    result = sample(
        pipe,
        personal,
        config,
        PROMPTS,
        num_images=2,
        seed=5,
        steps=steps,
        height=SIDE,
        width=SIDE,
        negative_prompt=negative,
        progress=False,
        output_type="latent",
        **kw,
    )
    return torch.stack([torch.stack(row) for row in result.images]), result


def reference(base, lora, method, scale, omega, scheduler=None, **kw):
    ft, weak = _reference_pipes(base, lora, scheduler)
    return reference_latents(
        ft, weak, method=method, scale=scale, omega=omega, prompts=PROMPTS, seed=5, side=SIDE, **kw
    )


@pytest.mark.parametrize("arch", ["sd15", "sdxl", "sd3"])
@pytest.mark.parametrize("method", ["pg", "ag"])
def test_methods_match_the_two_pipeline_reference(loras, arch, method):
    base, lora = loras(arch)
    ours, result = engine(base, lora, GuidanceConfig(method, scale=4.0, omega=0.3))
    ref = reference(base, lora, method, 4.0, 0.3)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-4)
    assert result.counters.denoiser_calls == 4  # one batched pass per step, as CFG
    cfg, _ = engine(base, lora, GuidanceConfig("cfg", scale=4.0))
    assert (cfg - ref).abs().max() > 50 * ATOL  # the weak model matters at this size: the test can fail


@pytest.mark.parametrize(
    "arch,method,negative",
    [("sd15", "pg", None), ("sd15", "ag", None), ("sdxl", "pg", "blurry"), ("sd3", "ag", None)],
)
def test_text_encoder_lora_at_intermediate_omega(loras, arch, method, negative):
    base, lora = loras(arch, text=True)
    ours, _ = engine(base, lora, GuidanceConfig(method, scale=4.0, omega=0.3), negative=negative)
    ref = reference(base, lora, method, 4.0, 0.3, negative=negative)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-4)


@pytest.fixture(scope="module")
def full_finetune(loras, tmp_path_factory):
    """A conv+bias LoRA fused into the base and saved as a full fine-tune folder (targets that all carry a
    bias, which peft needs to merge B's bias)."""
    base, _ = loras("sd15")
    lora = save_random_lora(
        load_pipeline(base),
        tmp_path_factory.mktemp("ref-lora-fusable"),
        seed=12,
        target_modules=("to_out.0", "conv1", "conv2", "proj_in"),
        lora_bias=True,
    )
    pipe = load(base)
    pipe.load_lora_weights(str(lora))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    folder = tmp_path_factory.mktemp("ref-full")
    pipe.save_pretrained(folder, safe_serialization=True)
    return base, folder


@pytest.mark.parametrize("method", ["pg", "ag"])
def test_full_finetune_matches_the_reference(full_finetune, method):
    base, full = full_finetune
    ours, _ = engine(base, full, GuidanceConfig(method, scale=4.0, omega=0.3))
    ft, weak = load(full), load(base)
    pre = {k: v.clone() for k, v in weak.unet.state_dict().items()}
    fine = {k: v for k, v in ft.unet.state_dict().items() if not torch.equal(v, pre[k])}
    ref = reference_latents(
        ft,
        weak,
        method=method,
        scale=4.0,
        omega=0.3,
        prompts=PROMPTS,
        seed=5,
        side=SIDE,
        adapter=None,
        full_weak=lerp_into(weak.unet, pre, fine),
    )
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-4)


def test_scheduled_omega_and_interval_follow_the_step_index(loras):
    """ω(step/N) with a cosine schedule and diffusers' interval rule: a τ one step late, or an interval
    edge one step off, moves the samples."""
    base, lora = loras("sd15")
    config = GuidanceConfig("pg", scale=4.0, omega=0.0, omega_schedule="cosine:1.0", interval=(0.25, 0.75))
    ours, result = engine(base, lora, config, steps=6)
    ref = reference(base, lora, "pg", 4.0, cosine(0.0, 1.0), steps=6, interval=(0.25, 0.75))
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-4)
    # int(0.25·6) = 1 ≤ step < int(0.75·6) = 4: steps 1, 2, 3 guided, at ω = cosine(step / 6)
    expected = [None] + [cosine(0.0, 1.0)(s / 6) for s in (1, 2, 3)] + [None, None]
    assert [o is None for o in result.omegas] == [e is None for e in expected]
    assert [o for o in result.omegas if o is not None] == pytest.approx(
        [e for e in expected if e is not None]
    )


@pytest.mark.parametrize("scheduler", ["HeunDiscrete", "KDPM2Discrete"])
def test_second_order_scheduler_guides_predictor_and_corrector_alike(loras, scheduler):
    base, lora = loras("sd15")
    config = GuidanceConfig("pg", scale=4.0, omega=0.0, omega_schedule="linear:1.0", interval=(0.25, 1.0))
    ours, result = engine(base, lora, config, steps=4, scheduler=scheduler)
    ref = reference(
        base,
        lora,
        "pg",
        4.0,
        lambda tau: tau,
        steps=4,
        interval=(0.25, 1.0),
        scheduler=scheduler,
        step_of_call=second_order_step,
    )
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-4)
    assert result.omegas == [None, 0.25, 0.5, 0.75]
