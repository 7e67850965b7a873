"""Samplers: what turns a batch of rows into images. The default samples with steerguide's pipeline loading
and guided `sample`; a config's `sampler: module:callable` swaps in another (tests use a model-free one)."""

from __future__ import annotations

import importlib

from steerguide.errors import UserError
from steerguide.evaluate.benchmarks import BenchSubject
from steerguide.evaluate.sweep_config import Setting, SweepConfig


class DiffusersSampler:
    """Samples with steerguide's pipeline loading and guided `sample` (one pipeline per subject)."""

    def __init__(self, config: SweepConfig):
        self.config = config

    def open(
        self, base: str, personalization: str | None, subject: BenchSubject
    ) -> DiffusersSampler._Session:
        from steerguide.loading import load_personalization, load_pipeline

        pipe = load_pipeline(
            base,
            device=self.config.device,
            dtype=self.config.dtype,
            scheduler=self.config.sampling.get("scheduler"),
        )
        return DiffusersSampler._Session(self.config, pipe, load_personalization(pipe, personalization))

    class _Session:
        def __init__(self, config: SweepConfig, pipe, personal):
            self.config, self.pipe, self.personal = config, pipe, personal

        def generate(self, setting: Setting, prompts: list[str], seed: int) -> list:
            from steerguide.sampling import sample

            s = self.config.sampling
            kwargs = {
                k: s[k] for k in ("steps", "height", "width", "negative_prompt") if s.get(k) is not None
            }
            result = sample(
                self.pipe,
                self.personal,
                setting.guidance_config(),
                prompts,
                num_images=1,
                seed=seed,
                batch_size=len(prompts),
                progress=False,
                **kwargs,
            )
            return [images[0] for images in result.images]  # images[p][i]: image i of prompt p

        def close(self) -> None:
            self.pipe = self.personal = None


def make_sampler(config: SweepConfig):
    if config.sampler is None:
        return DiffusersSampler(config)
    module_name, _, attr = config.sampler.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise UserError(f"config key sampler: cannot import {config.sampler!r} ({e})") from None
    return factory(config)
