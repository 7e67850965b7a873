"""The diffusers guiders where they used to part from `steerguide.guided`: a second-order scheduler (Heun
lists 2N−1 timesteps: a step's predictor and corrector are one step, τ = step/N), and a LoRA that diffusers
loaded into the text encoders too (the guider sees only embeddings: refused in one line)."""

from __future__ import annotations

import json

import pytest

from steerguide.errors import UserError
from steerguide.guiders import PersonalizationGuidance
from steerguide.loading import load_pipeline
from steerguide.testing import save_random_lora

PROMPTS = ["a red star", "a dog on the beach"]
SIDE = 16
STEPS = 4


def _saved(base, name):
    entry = json.loads((base / "model_index.json").read_text()).get(name)
    return isinstance(entry, list) and entry[0] is not None


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
