"""Validation samples: a few seeded images of a prompt, and a grid of them."""

from __future__ import annotations

import math

import torch
from PIL import Image


def sample(
    pipe, prompt: str, n: int, steps: int, guidance: float, resolution: int, seed: int
) -> list[Image.Image]:
    """`n` samples of `prompt`, image i seeded with `seed + i` (its own generator), so that the same
    call on a reloaded model gives the same images; the global RNG is left untouched for training."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        generators = [torch.Generator(device="cpu").manual_seed(seed + i) for i in range(n)]
        return pipe(
            [prompt] * n,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
            height=resolution,
            width=resolution,
        ).images


def grid(images: list[Image.Image], columns: int | None = None) -> Image.Image:
    """Images side by side in rows of `columns` (default: as square as possible)."""
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    w, h = images[0].size
    out = Image.new("RGB", (columns * w, rows * h), "white")
    for i, image in enumerate(images):
        out.paste(image, ((i % columns) * w, (i // columns) * h))
    return out
