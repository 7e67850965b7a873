"""Personalization training: LoRA, DreamBooth and Custom Diffusion on a few photos of one subject.

    from steerguide.train import TrainConfig, train
    config = TrainConfig(base="sd15/", images="photos/", token="sks", class_noun="dog", out="lora/")
    out = train(config)

Built on diffusers + peft + accelerate; outputs are read by stock diffusers (see docs/train.md). The
names are imported on first use, so that the CLI starts without torch.
"""

from typing import TYPE_CHECKING

from steerguide.lazy import lazy_attributes

_WHERE = {
    "METHODS": "steerguide.train.config",
    "TrainConfig": "steerguide.train.config",
    "TrainWarning": "steerguide.train.trainer",
    "train": "steerguide.train.trainer",
}
__all__ = [
    "METHODS",
    "TrainConfig",
    "TrainWarning",
    "train",
]
__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)

if TYPE_CHECKING:
    from steerguide.train.config import METHODS, TrainConfig
    from steerguide.train.trainer import TrainWarning, train
