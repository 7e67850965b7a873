"""Toy-world personalization: a subject of `steerguide.toyworld` with defaults tuned for a 2-core CPU,
and the fidelity check of a trained subject (`python -m steerguide.toyworld.recipes DIR...`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from steerguide.errors import UserError
from steerguide.train.config import TrainConfig

# LoRA reaches the ResNet convolutions and feed-forward layers as well as the attention projections:
# attention alone learns too little of a subject in the toy UNet (docs/train.md, recipes A-C).
TOY_LORA_TARGETS = (
    "to_k",
    "to_q",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
)
# The LoRA recipe is calibrated by `steerguide toyworld check-personalization` (text >= 0.80 x the base
# model's, normalized fidelity in [0.35, 0.85] at CFG w=5; chosen by that criterion only, before any
# guidance was run; docs/train.md has the runs). DreamBooth's default, checked the same way, passes on 7
# of 10 subjects; Custom Diffusion's on none (its k/v rewrite loses the prompt), and no recipe tried in its
# recalibration (the token at its own rate, --embedding-lr; prior preservation) passed on any subject: the
# candidates keep the prompt but learn too little of the subject, so the default is left as it was.
TOY_DEFAULTS: dict[str, dict[str, Any]] = {
    "lora": {
        "steps": 400,
        "learning_rate": 1e-3,
        "lr_scheduler": "constant",
        "rank": 4,
        "target_modules": TOY_LORA_TARGETS,
    },
    "dreambooth": {"steps": 300, "learning_rate": 2e-4},
    "custom-diffusion": {"steps": 400, "learning_rate": 5e-3},
}
TOY_COMMON: dict[str, Any] = {
    "latents": "mode",  # the toy base model was trained on posterior modes (its VAE's posterior is wide)
    "batch_size": 4,
    "checkpoint_every": 50,
    "validation_images": 8,
    "validation_inference_steps": 20,
    "validation_guidance_scale": 5.0,
}
SAMPLING = {"num_inference_steps": 20, "guidance_scale": 5.0}  # as the toy world's own checks sample


def toy_config(subject: str, method: str = "lora", subjects_file: str | Path | None = None,
               **overrides: Any) -> TrainConfig:
    """A `TrainConfig` for toy subject `subject` ("sks_star" or "sks", from `subjects_file` or the built-in
    subjects): its photos, token, class noun and instance prompt, the toy base model, and the tuned toy
    defaults; `overrides` win over all of them. The subject's definition is recorded in `extra`, so that
    the trained folder says what it was trained on."""
    from steerguide import toyworld

    found = toyworld.get_subject(subject, subjects_file)  # UserError for an unknown name or a bad file
    for name in ("token", "class_noun"):  # the subject's prompt has its own: the record would say another
        if overrides.get(name) not in (None, getattr(found, name)) and "instance_prompt" not in overrides:
            raise UserError(
                f"--{name.replace('_', '-')} {overrides[name]}: toy subject {found.name} trains on "
                f"{found.instance_prompt!r}; give --instance-prompt too to train on other words"
            )
    values: dict[str, Any] = {
        "base": toyworld.base_model_path(),
        "images": found.reference_images(),
        "token": found.token,
        "class_noun": found.class_noun,
        "instance_prompt": found.instance_prompt,
        "method": method,
        "extra": {"toy_subject": found.name, "toy_subject_definition": found.to_dict()},
    }
    values.update(TOY_COMMON)
    values.update(TOY_DEFAULTS.get(overrides.get("method", method), {}))
    values.update(overrides)
    return TrainConfig(**values)


def identity(method: str) -> dict:
    """What of the recipe a sweep's cache key hashes: only the defaults of the method trained, so that
    recalibrating another method keeps caches (and the shipped personalizations) valid."""
    return {"toy": {"defaults": {method: TOY_DEFAULTS.get(method, {})}, "common": TOY_COMMON}}


def trained_subject(record: dict[str, Any]):
    """The toy subject a trained folder's `train.json` record was trained on (its recorded definition;
    records of older versions name a built-in subject only)."""
    from steerguide import toyworld
    from steerguide.toyworld.subjects import subject_from_dict

    extra = (record.get("config") or {}).get("extra") or {}
    if "toy_subject_definition" in extra:
        return subject_from_dict(extra["toy_subject_definition"])
    if "toy_subject" in extra:
        return toyworld.get_subject(extra["toy_subject"])
    return None


def toy_fidelity(folder: str | Path, n: int = 32, seed: int = 0) -> dict[str, Any]:
    """Subject fidelity (the toy world's judge) of a trained toy subject's samples for its training prompt,
    beside that of the subject's held-out renders and of the base model's samples, all against the
    subject's reference photos."""
    import torch

    from steerguide import toyworld
    from steerguide.train.results import load_trained

    pipe, record = load_trained(folder)
    subject = trained_subject(record)
    judge = toyworld.FidelityJudge()
    references = subject.reference_images()

    def samples(p, prompt: str) -> list:
        generators = [torch.Generator().manual_seed(seed + i) for i in range(n)]
        return p([prompt] * n, generator=generators, height=32, width=32, **SAMPLING).images

    def mean_fidelity(images) -> float:
        return float(sum(judge.fidelity(images, references)) / len(images))

    base = toyworld.load_base_pipeline(record["base"])
    return {
        "subject": subject.name,
        "method": record["method"],
        "steps": record["steps"],
        "train_seconds": round(record["wall_seconds"], 1),
        "fidelity_samples": round(mean_fidelity(samples(pipe, record["instance_prompt"])), 4),
        "fidelity_heldout": round(mean_fidelity(subject.heldout_images(n)), 4),
        # the user's prompt: Custom Diffusion's new token means nothing to the base model
        "fidelity_base_samples": round(mean_fidelity(samples(base, record["config"]["instance_prompt"])), 4),
    }


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(json.dumps(toy_fidelity(arg)))
