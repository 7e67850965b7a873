"""DreamBooth (Ruiz et al. 2023): the whole UNet (and optionally the text encoders) is fine-tuned.

The result is a complete diffusers pipeline folder (`save_pretrained`, safetensors): the untouched
components come from the base model's files, so mixed-precision casts during training never leak in.
"""

from __future__ import annotations

from pathlib import Path

from steerguide.families import text_encoders
from steerguide.train.base import Base
from steerguide.train.config import TrainConfig
from steerguide.train.methods import Trainable, freeze


def setup(base: Base, config: TrainConfig) -> Trainable:
    freeze(base.vae, *base.text_encoders)
    base.unet.requires_grad_(True)
    modules = [base.unet]
    if config.train_text_encoder:
        for encoder in base.text_encoders:
            encoder.requires_grad_(True)
            modules.append(encoder)
    trained = [config.train_text_encoder] * len(base.text_encoders)
    return Trainable(modules=modules, text_encoders_trained=trained, prompt_token=config.token)


def save(base: Base, config: TrainConfig, trainable: Trainable, out: Path) -> list[str]:
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as dlogging

    components = {"unet": base.unet}
    if config.train_text_encoder:
        components.update(text_encoders(base.pipe))
    bars = dlogging.is_progress_bar_enabled()
    dlogging.disable_progress_bar()
    try:
        pipe = DiffusionPipeline.from_pretrained(base.path, **components)
    finally:
        if bars:
            dlogging.enable_progress_bar()
    pipe.save_pretrained(out, safe_serialization=True)
    return ["model_index.json"]
