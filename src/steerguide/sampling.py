"""Sampling with guidance, and `generate`: images + run.json on disk.

Seeds mean what they mean to diffusers users: image i of a prompt starts from
`torch.Generator(device).manual_seed(seed + i)`, so `method="cfg"` gives what the stock pipeline gives
for that seed. Prompts are batched; each row keeps its own generator, so batching changes nothing.
"""

from __future__ import annotations

import inspect
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from steerguide.denoiser import Counters, guided
from steerguide.errors import UserError
from steerguide.files import check_writable, save_image_atomic, versions, write_json_atomic
from steerguide.guidance import GuidanceConfig
from steerguide.personalization import Personalization


@dataclass
class SampleResult:
    """`images[p][i]`: image i of prompt p. `counters`: denoiser work during sampling. `omegas[s]`: ω at
    sampling step s (None where step s was outside the guidance interval); `steps`: per step, its index,
    τ, ω and whether it was guided."""

    images: list[list[Image.Image]]
    counters: Counters
    seconds: float
    omegas: list[float | None] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)


def _progress(total: int, enabled: bool, description: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


def sample(
    pipe,
    personalization: Personalization,
    config: GuidanceConfig,
    prompts: list[str],
    *,
    num_images: int = 1,
    seed: int = 0,
    steps: int = 30,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
    **pipe_kwargs: Any,
) -> SampleResult:
    """Sample `num_images` images for each prompt with the guidance of `config`.

    Extra keyword arguments go to the pipeline call unchanged (e.g. `callback_on_step_end`).
    """
    if steps < 1:
        raise UserError(f"steps must be >= 1, got {steps}")
    if num_images < 1:
        raise UserError(f"num_images must be >= 1, got {num_images}")
    if not prompts:
        raise UserError("no prompts given")
    call_params = inspect.signature(pipe.__call__).parameters
    if config.guidance_rescale > 0:
        if "guidance_rescale" not in call_params:
            raise UserError(f"{type(pipe).__name__} does not support guidance_rescale")
        pipe_kwargs["guidance_rescale"] = config.guidance_rescale
    device = pipe._execution_device
    gen_device = "cpu" if device.type == "mps" else device
    rows = [(p, i) for p, _ in enumerate(prompts) for i in range(num_images)]
    batches = [rows[k : k + batch_size] for k in range(0, len(rows), batch_size)]
    images: list[list[Image.Image | None]] = [[None] * num_images for _ in prompts]
    pipe.set_progress_bar_config(disable=True)
    user_callback = pipe_kwargs.pop("callback_on_step_end", None)

    start = time.perf_counter()
    with (
        _progress(len(batches) * steps, progress, f"{config.method} w={config.scale:g}") as bar,
        guided(pipe, personalization, config) as wrapper,
    ):
        task = bar.add_task(
            f"sampling {len(rows)} images ({config.method}, w={config.scale:g})", total=len(batches) * steps
        )

        def on_step_end(pipeline, step, timestep, callback_kwargs):
            bar.advance(task)
            if user_callback is not None:
                return user_callback(pipeline, step, timestep, callback_kwargs)
            return callback_kwargs

        for batch in batches:
            generators = [torch.Generator(gen_device).manual_seed(seed + i) for _, i in batch]
            kwargs = dict(
                prompt=[prompts[p] for p, _ in batch],
                num_inference_steps=steps,
                guidance_scale=config.scale,
                generator=generators,
                height=height,
                width=width,
                callback_on_step_end=on_step_end,
                **pipe_kwargs,
            )
            if negative_prompt is not None:
                kwargs["negative_prompt"] = [negative_prompt] * len(batch)
            with torch.no_grad():
                out = pipe(**kwargs).images
            for (p, i), image in zip(batch, out, strict=True):
                images[p][i] = image
    return SampleResult(
        images=images,
        counters=wrapper.counters,
        seconds=time.perf_counter() - start,
        omegas=wrapper.omegas,
        steps=[wrapper.steps[s] for s in sorted(wrapper.steps)],
    )


# -- generate: the CLI's job ----------------------------------------------------------------------------


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def generate(
    base: str,
    personalization: str | None,
    config: GuidanceConfig,
    prompts: list[str],
    out: Path,
    *,
    num_images: int = 1,
    seed: int = 0,
    steps: int = 30,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    scheduler: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> dict:
    """Load, sample and write `out/<prompt#>-<slug>-<image#>.png` and `out/run.json`; returns the run record."""
    from steerguide.loading import load_personalization, load_pipeline

    out = Path(out)
    check_writable(out)
    t0 = time.perf_counter()
    pipe = load_pipeline(base, device=device, dtype=dtype, scheduler=scheduler)
    personal = load_personalization(pipe, personalization)
    if personal.kind == "none" and config.method != "cfg":
        raise UserError(f"--method {config.method} needs --personalization (without one, θ_pre = θ_ft)")
    seconds_loading = time.perf_counter() - t0
    result = sample(
        pipe,
        personal,
        config,
        prompts,
        num_images=num_images,
        seed=seed,
        steps=steps,
        height=height,
        width=width,
        negative_prompt=negative_prompt,
        batch_size=batch_size,
        progress=progress,
    )
    files = []
    for p, prompt in enumerate(prompts):
        for i, image in enumerate(result.images[p]):
            path = out / f"{p:03d}-{_slug(prompt)}-{i:02d}.png"
            save_image_atomic(image, path)
            files.append(
                {"file": path.name, "prompt": prompt, "prompt_index": p, "image_index": i, "seed": seed + i}
            )
    record = {
        "base": str(base),
        "personalization": personal.describe(),
        "guidance": config.describe(),
        "omega_per_step": result.omegas,
        "prompts": prompts,
        "negative_prompt": negative_prompt,
        "num_images": num_images,
        "seed": seed,
        "steps": steps,
        "height": height,
        "width": width,
        "device": device,
        "dtype": dtype,
        "scheduler": type(pipe.scheduler).__name__,
        "pipeline": type(pipe).__name__,
        "images": files,
        **result.counters.as_dict(),
        "seconds_sampling": result.seconds,
        "seconds_loading": seconds_loading,
        "versions": versions(),
    }
    write_json_atomic(out / "run.json", record)
    return record
