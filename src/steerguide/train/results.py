"""Reading a training output folder back: its record, and its model as a stock diffusers pipeline."""

from __future__ import annotations

import json
from pathlib import Path

from steerguide.errors import UserError


def read_record(folder: str | Path) -> dict:
    """The `train.json` of a finished run."""
    path = Path(folder) / "train.json"
    if not path.is_file():
        raise UserError(f"{folder} is not a finished training output (no train.json)")
    return json.loads(path.read_text())


def load_trained(folder: str | Path, base: str | Path | None = None):
    """The personalized pipeline of a run, loaded with stock diffusers calls only (`base` defaults to
    the one it was trained from); returns `(pipe, record)`."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as dlogging

    from steerguide.train import custom_diffusion

    folder = Path(folder)
    record = read_record(folder)
    bars = dlogging.is_progress_bar_enabled()
    dlogging.disable_progress_bar()
    try:
        if record["method"] == "dreambooth":
            pipe = DiffusionPipeline.from_pretrained(folder)
        else:
            pipe = DiffusionPipeline.from_pretrained(base or record["base"])
            if record["method"] == "lora":
                pipe.load_lora_weights(folder)
            else:
                custom_diffusion.load(pipe, folder)
    finally:
        if bars:  # as the caller had it (the demo keeps them off)
            dlogging.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    return pipe, record
