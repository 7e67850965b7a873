"""Personalization training: LoRA, DreamBooth and Custom Diffusion on a few photos of one subject.

    from steerguide.train import TrainConfig, train
    config = TrainConfig(base="sd15/", images="photos/", token="sks", class_noun="dog", out="lora/")
    out = train(config)

Built on diffusers + peft + accelerate; outputs are read by stock diffusers (see docs/train.md).
"""

from steerguide.train.config import METHODS, TrainConfig
from steerguide.train.trainer import TrainWarning, train

__all__ = ["METHODS", "TrainConfig", "TrainWarning", "train"]
