"""Embeddings given instead of prompts, with a personalization that changes the text encoder: the user's
embeddings are θ_ft's. PG's null half needs the negative prompt encoded at θ_ω: re-encoded from its text
(a batch of len(prompt_embeds)), exactly; given only as embeddings, refused in one line, as is AG with
`prompt_embeds` (its weak half needs the prompt itself encoded at θ_ω)."""

from __future__ import annotations

import pytest
import torch
from reference_impl import load, reference_latents

from steerguide.denoiser import guided
from steerguide.errors import UserError
from steerguide.guidance import GuidanceConfig
from steerguide.loading import load_personalization, load_pipeline
from steerguide.testing import save_random_lora

PROMPTS = ["a dog on the beach", "a red cat"]
ROWS = [p for p in PROMPTS for _ in range(2)]
SIDE = 16


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    base = tiny_model_dir("sd15")
    lora = save_random_lora(load_pipeline(base), tmp_path_factory.mktemp("embeds-lora"), seed=21,
                            text_encoders=("text_encoder",))
    pipe = load_pipeline(base)
    pipe.set_progress_bar_config(disable=True)
    personal = load_personalization(pipe, lora)
    with torch.no_grad():
        embeds, negative = pipe.encode_prompt(ROWS, "cpu", 1, True)  # θ_ft's, as a user would make them
    return base, lora, pipe, personal, embeds, negative


def call(pipe, personal, config, **kw):
    with guided(pipe, personal, config), torch.no_grad():
        return pipe(num_inference_steps=4, guidance_scale=4.0, height=SIDE, width=SIDE, output_type="latent",
                    generator=[torch.Generator().manual_seed(5 + i) for _ in PROMPTS for i in range(2)],
                    **kw).images


def test_pg_with_prompt_embeds_re_encodes_the_negative_prompt_at_theta_omega(setup):
    base, lora, pipe, personal, embeds, _ = setup
    ours = call(pipe, personal, GuidanceConfig("pg", scale=4.0, omega=0.3), prompt_embeds=embeds)
    ft, weak = load(base), load(base)
    for p in (ft, weak):
        p.load_lora_weights(str(lora), adapter_name="p")
    ref = reference_latents(ft, weak, method="pg", scale=4.0, omega=0.3, prompts=PROMPTS, seed=5, side=SIDE)
    torch.testing.assert_close(ours, ref.reshape(ours.shape), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize(("method", "needed"), [("pg", "negative_prompt_embeds"), ("ag", "prompt_embeds")])
def test_embeddings_the_weak_half_would_need_at_theta_omega_are_refused(setup, method, needed):
    _, _, pipe, personal, embeds, negative = setup
    kw = {"prompt_embeds": embeds, "negative_prompt_embeds": negative} if method == "pg" else {
        "prompt_embeds": embeds}
    with pytest.raises(UserError, match=f"{needed}.*text encoder") as err:
        call(pipe, personal, GuidanceConfig(method, scale=4.0, omega=0.3), **kw)
    assert "\n" not in str(err.value)
    call(pipe, personal, GuidanceConfig("cfg", scale=4.0), **kw)  # CFG needs no θ_ω: it runs
