"""Training photos: loading and checking a folder, preprocessing, the per-step dataset, class images."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from steerguide.errors import UserError
from steerguide.images import open_rgb
from steerguide.progress import bar as progress_bar

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as RGB: EXIF rotation applied, transparency flattened onto white (not black)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16/32-bit grayscale: rescale to 8 bits
        array = np.asarray(image, dtype=np.float32)
        lo, hi = float(array.min()), float(array.max())
        array = (array - lo) / max(hi - lo, 1e-8) * 255
        image = Image.fromarray(array.round().astype(np.uint8))
    return image.convert("RGB")


def load_images(source: str | Path | Sequence[Image.Image]) -> list[tuple[str, Image.Image]]:
    """`(name, RGB image)` for each photo in a folder (sorted by name) or in a list of PIL images.

    Files without an image suffix and hidden files are skipped; a file with an image suffix that does
    not decode is an error that names it, since silently training on fewer photos changes the result.
    """
    if not isinstance(source, (str, Path)):
        images = list(source)
        if not images:
            raise UserError("no training images were given")
        bad = [i for i, im in enumerate(images) if not isinstance(im, Image.Image)]
        if bad:
            raise UserError(f"training image #{bad[0]} is a {type(images[bad[0]]).__name__}, not a PIL image")
        return [(f"image-{i:02d}", to_rgb(im)) for i, im in enumerate(images)]

    folder = Path(source)
    if not folder.exists():
        raise UserError(f"image folder {folder} does not exist")
    if not folder.is_dir():
        raise UserError(f"--images must be a folder of photos, and {folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise UserError(f"image folder {folder} is empty")
    candidates = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not candidates:
        shown = ", ".join(p.name for p in files[:3]) + (", ..." if len(files) > 3 else "")
        raise UserError(f"no usable image in {folder}: found {shown} (expected {', '.join(IMAGE_SUFFIXES)})")
    loaded = []
    for path in candidates:
        loaded.append((path.name, open_rgb(path, convert=to_rgb)))
    return loaded


def preprocess(image: Image.Image, resolution: int, crop: str, rng: random.Random | None = None):
    """Resize and crop to `resolution`²; returns (tensor in [-1, 1] CHW, original (h, w), crop (top, left)).

    The original size and crop offset are what SDXL's micro-conditioning expects (in pixels of the
    resized image, as in diffusers' train_dreambooth_lora_sdxl.py).
    """
    original = (image.height, image.width)
    if crop == "resize":
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
        top = left = 0
    else:
        scale = resolution / min(image.width, image.height)
        size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
        if crop == "random" and rng is not None:
            top = rng.randint(0, image.height - resolution)
            left = rng.randint(0, image.width - resolution)
        else:
            top = (image.height - resolution) // 2
            left = (image.width - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
    array = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(resolution, resolution, 3)
    tensor = array.permute(2, 0, 1).float() / 127.5 - 1.0
    return tensor, original, (top, left)


@dataclass
class Example:
    pixels: torch.Tensor
    original_size: tuple[int, int]
    crop_top_left: tuple[int, int]


class PersonalizationDataset(torch.utils.data.Dataset):
    """Item k is the k-th training example of the whole run: a pure function of (seed, k).

    Each epoch over the photos is a fresh permutation drawn from (seed, epoch), and random crops and
    flips are drawn from (seed, k). Nothing depends on iteration state, so resuming at step s is
    `skip_first_batches(loader, s · accumulation)` and gives the batches the uninterrupted run saw,
    on one process or many (the sequential sampler shards it without a shared RNG).
    """

    def __init__(
        self,
        instance: list[Image.Image],
        length: int,
        resolution: int,
        crop: str = "center",
        random_flip: bool = False,
        seed: int = 0,
        class_images: list[Image.Image] | None = None,
    ):
        self.instance, self.class_images = instance, class_images or []
        self.length, self.resolution, self.crop, self.flip, self.seed = (
            length,
            resolution,
            crop,
            random_flip,
            seed,
        )
        # Deterministic crops of few photos: preprocess once.
        self._fixed = None if crop == "random" else [preprocess(im, resolution, crop) for im in instance]
        self._fixed_class = (
            None if crop == "random" else [preprocess(im, resolution, crop) for im in self.class_images]
        )

    def __len__(self) -> int:
        return self.length

    def _pick(self, k: int, images: list, fixed: list | None, salt: int) -> Example:
        n = len(images)
        epoch, i = divmod(k, n)
        order = list(range(n))
        random.Random(f"{self.seed}/{salt}/{epoch}").shuffle(order)
        rng = random.Random(f"{self.seed}/{salt}/item/{k}")
        pixels, original, crop = (
            fixed[order[i]]
            if fixed is not None
            else preprocess(images[order[i]], self.resolution, self.crop, rng)
        )
        if self.flip and rng.random() < 0.5:
            pixels = pixels.flip(-1)
        return Example(pixels, original, crop)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        item = {}
        examples = [self._pick(k, self.instance, self._fixed, 0)]
        if self.class_images:
            examples.append(self._pick(k, self.class_images, self._fixed_class, 1))
        for prefix, ex in zip(("", "class_")[: len(examples)], examples, strict=True):
            item[prefix + "pixels"] = ex.pixels
            item[prefix + "original_size"] = torch.tensor(ex.original_size)
            item[prefix + "crop_top_left"] = torch.tensor(ex.crop_top_left)
        return item


def ensure_class_images(
    pipe,
    folder: Path,
    count: int,
    prompt: str,
    resolution: int,
    seed: int,
    steps: int,
    guidance: float,
    batch_size: int = 4,
    progress: bool = True,
) -> list[Image.Image]:
    """The first `count` class images of `folder`, generating the missing ones with the base model.

    Generated images are written one by one (`class-NNNN.png`, seeded by their index), so an
    interrupted generation resumes where it stopped and gives the same images.
    """
    folder.mkdir(parents=True, exist_ok=True)
    existing = [p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    missing = count - len(existing)
    if missing > 0:
        pipe.set_progress_bar_config(disable=True)
        index = 0
        with progress_bar(progress, transient=True) as bar:
            task = bar.add_task(f"class images ({prompt!r})", total=missing)
            made = 0
            while made < missing:
                n = min(batch_size, missing - made)
                names = []
                while len(names) < n:  # next free names
                    path = folder / f"class-{index:04d}.png"
                    if not path.exists():
                        names.append(path)
                    index += 1
                generators = [torch.Generator().manual_seed(seed * 100_003 + int(p.stem[6:])) for p in names]
                images = pipe(
                    [prompt] * n,
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    generator=generators,
                    height=resolution,
                    width=resolution,
                ).images
                for path, image in zip(names, images, strict=True):
                    image.save(path)
                made += n
                bar.advance(task, n)
    return [image for _, image in load_images(folder)[:count]]
