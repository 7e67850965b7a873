"""The diffusers guiders where they used to part from `steerguide.guided`: a second-order scheduler (Heun
lists 2N−1 timesteps: a step's predictor and corrector are one step, τ = step/N), and a LoRA that diffusers
loaded into the text encoders too (the guider sees only embeddings: refused in one line)."""

from __future__ import annotations

import json

import pytest
import torch
from interleave import interleave
from reference_impl import load, reference_latents, second_order_step

from steerguide.errors import UserError
from steerguide.guiders import PersonalizationGuidance, modular_pipeline
from steerguide.loading import load_personalization, load_pipeline
from steerguide.testing import save_random_lora

PROMPTS = ["a red star", "a dog on the beach"]
SIDE = 16
STEPS = 4


def _saved(base, name):
    entry = json.loads((base / "model_index.json").read_text()).get(name)
    return isinstance(entry, list) and entry[0] is not None


def test_guider_on_heun_counts_predictor_and_corrector_as_one_step(tiny_model_dir, tmp_path):
    from diffusers import HeunDiscreteScheduler

    base = tiny_model_dir("sdxl")
    lora = save_random_lora(load_pipeline(base), tmp_path / "lora", seed=5, std=0.1)
    pipe = load_pipeline(base)
    personal = load_personalization(pipe, lora)
    modular = modular_pipeline(pipe)
    modular.set_progress_bar_config(disable=True)
    modular.update_components(scheduler=HeunDiscreteScheduler.from_config(pipe.scheduler.config))
    # ω moves with τ and guidance stops after step 2 of 4: a wrong step count changes both
    modular.update_components(guider=PersonalizationGuidance(
        guidance_scale=5.0, omega=0.2, omega_schedule="linear:1.0", stop=0.75, personalization=personal))
    got = modular(prompt=PROMPTS, negative_prompt=[""] * 2, num_inference_steps=STEPS, height=SIDE, width=SIDE,
                  generator=[torch.Generator().manual_seed(11) for _ in range(2)], output="latents")

    ft, weak = load(base), load(base)
    for p in (ft, weak):
        p.load_lora_weights(str(lora), adapter_name="p")
    ft.scheduler = HeunDiscreteScheduler.from_config(ft.scheduler.config)
    ref = reference_latents(ft, weak, method="pg", scale=5.0, omega=lambda tau: 0.2 + 0.8 * tau, prompts=PROMPTS,
                            num_images=1, seed=11, steps=STEPS, negative="", interval=(0.0, 0.75),
                            step_of_call=second_order_step, side=SIDE)
    torch.testing.assert_close(got, ref.reshape(got.shape), atol=1e-4, rtol=1e-4)


def test_a_text_encoder_lora_loaded_by_diffusers_is_refused_in_one_line(tiny_model_dir, tmp_path):
    from diffusers import ModularPipeline

    base = tiny_model_dir("sdxl")
    lora = save_random_lora(load_pipeline(base), tmp_path / "lora", seed=6, std=0.1,
                            text_encoders=("text_encoder", "text_encoder_2"))
    modular = ModularPipeline.from_pretrained(str(base))
    modular.load_components(names=[n for n in modular.component_names if _saved(base, n)])
    modular.set_progress_bar_config(disable=True)
    modular.load_lora_weights(str(lora))
    modular.update_components(guider=PersonalizationGuidance(guidance_scale=5.0, omega=0.5))
    with pytest.raises(UserError, match="also in the text_encoder") as err:
        modular(prompt=PROMPTS, negative_prompt=[""] * 2, num_inference_steps=2, height=SIDE, width=SIDE,
                output="latents")
    assert "\n" not in str(err.value)


def test_a_plain_call_from_another_thread_never_sees_the_guiders_weak_model(tiny_model_dir, tmp_path):
    """The interleaving is forced: a plain call of the stock pipeline (sharing the UNet with the modular
    one) pauses inside its denoiser pass; the guider's weak pass then reaches the same layer with θ_ω in
    place; the plain call goes on. It must compute what it computes alone."""
    base = tiny_model_dir("sdxl")
    lora = save_random_lora(load_pipeline(base), tmp_path / "lora", seed=7, std=0.1)
    pipe = load_pipeline(base)
    pipe.set_progress_bar_config(disable=True)
    personal = load_personalization(pipe, lora)
    modular = modular_pipeline(pipe)
    modular.set_progress_bar_config(disable=True)
    modular.update_components(guider=PersonalizationGuidance(guidance_scale=4.0, omega=0.3,
                                                             personalization=personal))  # fmt: skip

    def plain():
        with torch.no_grad():
            return pipe(prompt=PROMPTS[0], num_inference_steps=1, guidance_scale=4.0, height=SIDE, width=SIDE,
                        generator=torch.Generator().manual_seed(5), output_type="latent").images  # fmt: skip

    want = plain()
    got = interleave(pipe.unet, plain, lambda: modular(
        prompt=PROMPTS[0], negative_prompt="", num_inference_steps=2, height=SIDE, width=SIDE,
        generator=torch.Generator().manual_seed(5), output="latents"),
        weak_now=lambda: personal.lora._row_scale is not None)  # the guider's weak pass, θ_ω in place
    torch.testing.assert_close(got["plain"], want, atol=1e-6, rtol=1e-6)
