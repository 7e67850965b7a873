"""Sampling with guidance: `sample` returns the images of some prompts (`steerguide.generation` writes them).

Seeds mean what they mean to diffusers users: image i of a prompt starts from
`torch.Generator(device).manual_seed(seed + i)`, so `method="cfg"` gives what the stock pipeline gives
for that seed. Prompts are batched; each row keeps its own generator, so batching changes nothing.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from steerguide.block import Counters
from steerguide.denoiser import guided
from steerguide.errors import UserError
from steerguide.guidance import GuidanceConfig
from steerguide.personalization import Personalization
from steerguide.progress import bar as progress_bar


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
    distilled_guidance: float | None = None,
    num_frames: int | None = None,
    **pipe_kwargs: Any,
) -> SampleResult:
    """Sample `num_images` images for each prompt with the guidance of `config`.

    `config.scale` goes to the pipeline argument that is its real CFG scale (`true_cfg_scale` for Flux);
    `distilled_guidance` to a guidance embedding distilled into the model (Flux's `guidance_scale`; None:
    the pipeline's default). Video pipelines (Wan) make `num_frames` frames (None: the pipeline's
    default); `images[p][i]` is then the list of video i's frames. Extra keyword arguments go to the
    pipeline call unchanged (e.g. `callback_on_step_end`).
    """
    from steerguide import limits
    from steerguide.families import family_of

    family = family_of(pipe)
    limits.sampling_steps("steps", steps)
    if num_images < 1:
        raise UserError(f"num_images must be >= 1, got {num_images}")
    if not prompts:
        raise UserError("no prompts given")
    limits.seed("seed", seed, num_images)
    limits.image_side("--height", height)  # the messages of `generate` and the CLI
    limits.image_side("--width", width)
    call_params = inspect.signature(pipe.__call__).parameters
    if num_frames is not None and not family.video:
        raise UserError(f"--num-frames: {type(pipe).__name__} makes images, not videos")
    if family.video:
        for name, side in (("--height", height), ("--width", width)):
            if side is not None and side % 16:
                raise UserError(f"{name} must be a multiple of 16 for {type(pipe).__name__}, got {side}")
        if num_frames is not None:
            pipe_kwargs["num_frames"] = num_frames
        pipe_kwargs.setdefault("output_type", "pil")  # Wan's default is numpy arrays
    if family.scale_argument not in call_params:
        raise UserError(f"{type(pipe).__name__} takes no {family.scale_argument}: steerguide cannot guide it")
    if distilled_guidance is not None and family.distilled_argument is None:
        raise UserError(f"{type(pipe).__name__} has no distilled guidance embedding (--distilled-guidance)")
    if negative_prompt is None:
        negative_prompt = family.negative_prompt_default  # Flux: true CFG runs only with a negative prompt
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
        progress_bar(progress) as bar,
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
                **family.scale_kwargs(config.scale, distilled_guidance),
                generator=generators,
                height=height,
                width=width,
                callback_on_step_end=on_step_end,
                **pipe_kwargs,
            )
            if negative_prompt is not None:
                kwargs["negative_prompt"] = [negative_prompt] * len(batch)
            with torch.no_grad():
                result = pipe(**kwargs)
                out = result.frames if family.video else result.images
            for (p, i), image in zip(batch, out, strict=True):
                images[p][i] = image
    return SampleResult(
        images=images,
        counters=wrapper.counters,
        seconds=time.perf_counter() - start,
        omegas=wrapper.omegas,
        steps=[wrapper.steps[s] for s in sorted(wrapper.steps)],
    )
