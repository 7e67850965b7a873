"""The toy world's entries in the generic registries (imported by `steerguide.plugins.discover`): its
base model, training recipe, benchmark, judges and stopping rule. Light: each entry imports its work when used."""

from __future__ import annotations

from steerguide.bases import BASES, NamedBase
from steerguide.evaluate.benchmarks import BENCHMARKS
from steerguide.evaluate.metrics import METRICS
from steerguide.train.recipes import RECIPES, Recipe
from steerguide.train.stopping import register_rule

TOY_BASE_NOTE = (
    "the toy base model knows only the toy world (32×32 shapes on plain backgrounds): trained on other "
    "photos it makes coloured blobs; for real photos give a real base, a hub id such as "
    "stable-diffusion-v1-5/stable-diffusion-v1-5 or a local diffusers folder"
)


def _base_path():
    from steerguide.toyworld.assets import base_model_path

    return base_model_path()


def _training_note(extra: dict) -> str | None:
    return None if extra.get("toy_subject") else TOY_BASE_NOTE


def _config(*args, **kwargs):
    from steerguide.toyworld.recipes import toy_config

    return toy_config(*args, **kwargs)


def _identity(method: str) -> dict:
    from steerguide.toyworld.recipes import identity

    return identity(method)


def _shipped(subject: str, key: str):
    from steerguide.toyworld.assets import shipped_personalization

    return shipped_personalization(subject, key)


def _calibrated(config, **judges):
    from steerguide.toyworld.stopping import Calibrated

    return Calibrated(config, **judges)


def _benchmark(spec: dict):
    from steerguide.toyworld.benchmark import load_toy_benchmark

    return load_toy_benchmark(spec)


BASES.register("toy", NamedBase(path=_base_path, training_note=_training_note))
RECIPES.register("toy", Recipe(config=_config, identity=_identity, shipped=_shipped))
BENCHMARKS.register("toy", _benchmark)
METRICS.register("toy_text", "steerguide.toyworld.metrics:ToyTextMetric")
METRICS.register("toy_fidelity", "steerguide.toyworld.metrics:ToyFidelityMetric")
register_rule("calibrated", _calibrated)
