"""The base pipeline: from a hub id, a diffusers folder or a single-file checkpoint, with its scheduler;
and the pipeline's denoiser and text encoders, as the loaders see them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from steerguide.errors import UserError, first_line
from steerguide.families import family_of
from steerguide.loading.devices import resolve_device, resolve_dtype
from steerguide.loading.weight_files import read_state_dict


def _null_components(folder: Path) -> dict:
    """Components a folder's model_index.json leaves out ([null, null]), to pass as None (SD3 without T5)."""
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        return {}
    index = json.loads(index_path.read_text())
    return {k: None for k, v in index.items() if isinstance(v, list) and v == [None, None]}


def _pipeline_class_for_checkpoint(keys: list[str]):
    import diffusers

    if any(k.startswith("conditioner.embedders.1") for k in keys):
        return diffusers.StableDiffusionXLPipeline
    if any("joint_blocks" in k for k in keys):
        return diffusers.StableDiffusion3Pipeline
    return diffusers.StableDiffusionPipeline


def set_scheduler(pipe, name: str | None) -> None:
    """Swap the pipeline's scheduler for diffusers' `<name>` (with or without the 'Scheduler' suffix)."""
    if not name:
        return
    pipe.scheduler = scheduler_class(name).from_config(pipe.scheduler.config)


def scheduler_class(name: str):
    """diffusers' scheduler class `<name>` (with or without the 'Scheduler' suffix), or one line naming
    the known ones (checked before any model loads)."""
    import diffusers

    cls_name = name if name.endswith("Scheduler") else name + "Scheduler"
    cls = getattr(diffusers, cls_name, None)
    if cls is None or not hasattr(cls, "from_config"):
        known = sorted(
            n[: -len("Scheduler")] for n in dir(diffusers) if n.endswith("Scheduler") and n[0].isupper()
        )
        raise UserError(f"unknown scheduler {name!r}; known: {', '.join(k for k in known if k)}")
    return cls


def load_pipeline(
    base: str | os.PathLike,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    scheduler: str | None = None,
):
    """Load a text-to-image pipeline from a hub id, a local diffusers folder or a single-file checkpoint."""
    import diffusers

    from steerguide.bases import resolve_base

    base = resolve_base(base)  # a named base ("toy": the toy world's) is its folder
    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    path = Path(base)
    try:
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise UserError(
                    f"base model folder {path} has no model_index.json (not a diffusers pipeline)"
                )
            pipe = diffusers.DiffusionPipeline.from_pretrained(
                path, dtype=torch_dtype, **_null_components(path)
            )
        elif path.is_file():
            keys = list(read_state_dict(path).keys())
            pipe = _pipeline_class_for_checkpoint(keys).from_single_file(str(path), dtype=torch_dtype)
        elif str(base).startswith((".", "/", "~")) or os.sep in str(base) and str(base).count("/") > 1:
            raise UserError(f"base model not found: {base} (no such file or folder)")
        else:
            pipe = diffusers.DiffusionPipeline.from_pretrained(str(base), dtype=torch_dtype)
    except UserError:
        raise
    except (OSError, ValueError) as e:
        first = first_line(e) or type(e).__name__
        if not path.exists():
            raise UserError(
                f"base model {base!r} not found: not a local folder or file, and the hub is "
                f"unreachable or has no such model offline ({first})"
            ) from None
        raise UserError(f"cannot load base model {base}: {first}") from None
    for name in ("unet", "transformer"):
        if getattr(pipe, name, None) is not None:
            break
    else:
        raise UserError(
            f"{base} is a {type(pipe).__name__}, not a text-to-image pipeline with a unet or transformer"
        )
    set_scheduler(pipe, scheduler)
    pipe.to(dev)
    if hasattr(pipe, "safety_checker"):
        pipe.safety_checker = None
    return pipe


def text_encoders(pipe) -> list[tuple[str, torch.nn.Module]]:
    return [(n, getattr(pipe, n)) for n in family_of(pipe).text_encoders if getattr(pipe, n, None) is not None]


def denoiser_of_pipe(pipe):
    from steerguide.block import denoiser_of

    return denoiser_of(pipe)
