"""Samplers: what turns a batch of rows into images. The default samples with steerguide's pipeline loading
and guided `sample`; a config's `sampler: module:callable` swaps in another (tests use a model-free one)."""

from __future__ import annotations

import importlib

from steerguide.errors import UserError
from steerguide.evaluate.benchmarks import BenchSubject
from steerguide.guidance import Setting
from steerguide.sweep.config import SweepConfig


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
    return sampler_factory(config)(config)


def sampler_factory(config: SweepConfig):
    """The callable `sampler: module:callable` names (importable and callable), without calling it."""
    module_name, _, attr = (config.sampler or "").partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise UserError(f"config key sampler: cannot import {config.sampler!r} ({e})") from None
    if not callable(factory):
        raise UserError(f"config key sampler: {config.sampler!r} is not a callable")
    return factory


def check_inputs(
    config: SweepConfig, subjects: list[BenchSubject], base: str, *, sampler_given: bool = False, fits: bool = False
) -> None:
    """What the sweep will load, checked before anything is written (and by `--dry-run`): the device and
    dtype, the sampler, and for steerguide's own sampler the base and the personalization paths; `fits`
    also loads the base with each path (whether a LoRA fits it is known only once loaded).
    `sampler_given`: the caller passed its own sampler object (only the device and dtype are checked)."""
    from pathlib import Path

    from steerguide.loading import resolve_device, resolve_dtype, scheduler_class
    from steerguide.sweep.cache import personalization_path

    resolve_device(config.device)
    resolve_dtype(config.dtype)
    if sampler_given:
        return
    if config.sampler is not None:
        sampler_factory(config)
        return  # another sampler: the base and personalizations are its to read
    folder = Path(base).expanduser()
    local = folder.exists() or str(base).startswith((".", "/", "~")) or str(base).count("/") > 1
    if local and not folder.exists():
        raise UserError(f"config key base: {base} does not exist (a diffusers folder, a checkpoint, or 'toy')")
    if folder.is_dir() and not (folder / "model_index.json").is_file():
        raise UserError(f"config key base: {base} has no model_index.json (not a diffusers pipeline)")
    if config.sampling.get("scheduler"):
        scheduler_class(config.sampling["scheduler"])
    paths = dict.fromkeys(personalization_path(config, s) for s in subjects) if "paths" in config.personalization else {}
    for path in paths:
        if path is not None and not Path(path).expanduser().exists():
            raise UserError(f"config key personalization.paths: {path} does not exist")
    if fits and local and any(paths):
        from steerguide.loading import load_personalization, load_pipeline

        scheduler = config.sampling.get("scheduler")
        for path in paths:  # one pipeline each: a personalization is loaded onto a fresh base
            pipe = load_pipeline(base, device="cpu", dtype="float32", scheduler=scheduler)
            load_personalization(pipe, path).release()
