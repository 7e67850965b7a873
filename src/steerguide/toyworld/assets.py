"""Where the toy world's shipped files lie, and loading the base pipeline."""

from __future__ import annotations

from pathlib import Path

from steerguide.errors import UserError

ASSETS = Path(__file__).parent / "assets"


def base_model_path() -> Path:
    """The shipped base model: a diffusers `StableDiffusionPipeline` folder."""
    return ASSETS / "base"


def train_log_path() -> Path:
    """Timings, settings and loss curve of the run that produced the shipped base model."""
    return ASSETS / "base_train_log.json"


def shipped_personalizations_path() -> Path:
    """Personalizations trained here and shipped so that the demo need not train them first (one folder a
    subject, named `<subject>-<cache key[:12]>` as the sweep's cache names it)."""
    return ASSETS / "personalizations"


def shipped_personalization(subject: str, key: str) -> Path | None:
    """The shipped personalization of `subject` whose training had cache key `key`, if there is one: the
    same base, photos, recipe and steerguide version, so it is what training here would produce."""
    import json

    folder = shipped_personalizations_path() / f"{subject}-{key[:12]}"
    marker = folder / "steerguide-cache.json"
    if not marker.is_file():
        return None
    try:
        return folder if json.loads(marker.read_text()).get("key") == key else None
    except json.JSONDecodeError:
        return None


def load_base_pipeline(path: str | Path | None = None):
    """Load the base model (or the pipeline folder at `path`) with stock `StableDiffusionPipeline`."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as dlogging

    folder = Path(path) if path is not None else base_model_path()
    if not (folder / "model_index.json").exists():
        raise UserError(f"no diffusers pipeline at {folder} (model_index.json missing)")
    dlogging.set_verbosity_error()
    bars = dlogging.is_progress_bar_enabled()
    dlogging.disable_progress_bar()  # a sub-second load needs no "Loading pipeline components" bar
    try:
        pipe = StableDiffusionPipeline.from_pretrained(folder)
    finally:
        if bars:
            dlogging.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    return pipe
