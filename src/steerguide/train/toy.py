"""Toy-world personalization: a subject of `steerguide.toyworld` with defaults tuned for a 2-core CPU."""

from __future__ import annotations

from typing import Any

from steerguide.errors import UserError
from steerguide.train.config import TrainConfig

# Tuned on the shipped toy base model (32×32 images) so that LoRA personalizes in under 3 minutes on
# 2 CPU cores; see docs/train.md for the measured times and judge scores.
TOY_DEFAULTS: dict[str, dict[str, Any]] = {
    "lora": {"steps": 200, "learning_rate": 1e-3, "rank": 8},
    "dreambooth": {"steps": 200, "learning_rate": 1e-4},
    "custom-diffusion": {"steps": 200, "learning_rate": 1e-3},
}
TOY_COMMON: dict[str, Any] = {"batch_size": 4, "checkpoint_every": 50, "validation_images": 8}


def toy_config(subject: str, method: str = "lora", **overrides: Any) -> TrainConfig:
    """A `TrainConfig` for toy subject `subject`: its photos, token, class noun and instance prompt,
    the toy base model, and the tuned toy defaults; `overrides` win over all of them."""
    from steerguide import toyworld

    try:
        found = toyworld.get_subject(subject)
    except (KeyError, ValueError) as e:
        raise UserError(f"unknown toy subject {subject!r}: {e}") from None
    values: dict[str, Any] = {
        "base": toyworld.base_model_path(), "images": found.reference_images(), "token": found.token,
        "class_noun": found.class_noun, "instance_prompt": found.instance_prompt, "method": method,
    }
    values.update(TOY_COMMON)
    values.update(TOY_DEFAULTS.get(overrides.get("method", method), {}))
    values.update(overrides)
    return TrainConfig(**values)
