"""Guidance touches only the pipeline calls it owns: a plain call of another pipeline sharing the denoiser,
from another thread (even one already under way when guidance starts) or from the same thread inside a
`guided` block of another pipeline, computes what diffusers computes without steerguide."""

from __future__ import annotations

import pytest
import torch
from interleave import interleave

from steerguide.denoiser import guided
from steerguide.guidance import GuidanceConfig
from steerguide.loading import load_personalization, load_pipeline
from steerguide.sampling import sample
from steerguide.testing import save_random_lora

PROMPTS = ["a dog on the beach", "a red cat"]
SIDE = 16
PG = GuidanceConfig("pg", scale=4.0, omega=0.3)


@pytest.fixture(scope="module")
def personalizations(tiny_model_dir, tmp_path_factory):
    """sd15 base; a LoRA; the same LoRA fused and saved as a full fine-tune."""
    base = tiny_model_dir("sd15")
    lora = save_random_lora(load_pipeline(base), tmp_path_factory.mktemp("iso-lora"), seed=31, std=0.1)
    pipe = load_pipeline(base)
    pipe.load_lora_weights(str(lora))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    full = tmp_path_factory.mktemp("iso-full")
    pipe.save_pretrained(full, safe_serialization=True)
    return base, {"lora": lora, "full": full}


def twin_of(pipe):
    """A second pipeline sharing every component but the scheduler (how img2img/txt2img twins are made)."""
    twin = type(pipe)(**{**pipe.components, "scheduler": type(pipe.scheduler).from_config(pipe.scheduler.config)})
    twin.set_progress_bar_config(disable=True)
    return twin


def plain(pipe, scale=4.0, prompts=PROMPTS, steps=2):
    """The pipeline's own call, no steerguide in it (latents)."""
    with torch.no_grad():
        return pipe(
            prompt=[p for p in prompts for _ in range(2)],
            num_inference_steps=steps,
            guidance_scale=scale,
            generator=[torch.Generator().manual_seed(5 + i) for _ in prompts for i in range(2)],
            height=SIDE,
            width=SIDE,
            output_type="latent",
        ).images


def pg(pipe, personal, steps=2):
    return sample(pipe, personal, PG, PROMPTS, num_images=2, seed=5, steps=steps, height=SIDE, width=SIDE,
                  progress=False, output_type="latent")


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_plain_call_under_way_when_guidance_starts_in_another_thread(personalizations, kind):
    """The interleaving is forced: the plain call pauses in the middle of its first denoiser pass, the
    guided call starts (its weak pass reaches the same layer with θ_ω in place), then the plain call goes on."""
    base, paths = personalizations
    pipe = load_pipeline(base)
    pipe.set_progress_bar_config(disable=True)
    personal = load_personalization(pipe, paths[kind])
    twin = twin_of(pipe)
    want = plain(twin)

    got = interleave(pipe.unet, lambda: plain(twin, steps=1), lambda: pg(pipe, personal).images)
    alone = plain(twin, steps=1)
    torch.testing.assert_close(got["plain"], alone, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(plain(twin), want, atol=0, rtol=0)  # nothing stays behind


def test_plain_call_of_another_pipeline_inside_a_guided_block_is_not_guided(personalizations):
    base, paths = personalizations
    pipe = load_pipeline(base)
    pipe.set_progress_bar_config(disable=True)
    personal = load_personalization(pipe, paths["lora"])
    twin = twin_of(pipe)
    want_cfg, want_w1 = plain(pipe), plain(pipe, scale=1.0)  # w = 1: no CFG, 4 prompt rows
    with guided(twin, personal, PG):
        twin_pg = plain(twin)  # the block's own pipeline is guided (and now says it runs CFG)
        got_w1, got_cfg = plain(pipe, scale=1.0), plain(pipe)
    torch.testing.assert_close(got_cfg, want_cfg, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got_w1, want_w1, atol=1e-6, rtol=1e-6)
    assert (twin_pg - want_cfg).abs().max() > 1e-3
    with guided(pipe, personal, PG):  # and the other way round
        torch.testing.assert_close(plain(pipe), twin_pg, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(plain(twin), want_cfg, atol=1e-6, rtol=1e-6)
