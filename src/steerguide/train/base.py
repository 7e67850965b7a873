"""The base model being personalized: loading a diffusers folder, prompt encoding, SDXL time ids."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from steerguide.bases import named_base, resolve_base
from steerguide.errors import UserError, first_line
from steerguide.families import text_encoders


@dataclass
class Base:
    """A loaded base pipeline and the parts training touches. `arch` is "sd" (SD 1.x/2.x) or "sdxl"."""

    pipe: object
    arch: str
    path: Path

    @property
    def unet(self) -> torch.nn.Module:
        return self.pipe.unet

    @property
    def vae(self) -> torch.nn.Module:
        return self.pipe.vae

    @property
    def tokenizers(self) -> list:
        return [t for t in (self.pipe.tokenizer, getattr(self.pipe, "tokenizer_2", None)) if t is not None]

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        return list(text_encoders(self.pipe).values())

    @property
    def native_resolution(self) -> int:
        return int(self.unet.config.sample_size) * self.pipe.vae_scale_factor


def resolve_base_path(base: str | Path) -> Path:
    """A named base ("toy": the toy world's) as its folder (as in `generate` and sweep configs)."""
    return Path(resolve_base(base))


def training_note(base: str | Path, extra: dict) -> str | None:
    """The warning a named base (by name or folder) gives for a training on it, if any."""
    found = named_base(base)
    return found[1].training_note(extra) if found else None


def load_base(path: str | Path) -> Base:
    """Load a diffusers pipeline folder for training (SD 1.x/2.x or SDXL; SD3 is not supported yet).
    A named base (`toy`, the toy world's) is resolved first."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as dlogging

    path = resolve_base_path(path)
    if not path.exists():
        raise UserError(f"base model {path} does not exist")
    if not (path / "model_index.json").is_file():
        raise UserError(f"base model {path} is not a diffusers pipeline folder (no model_index.json)")
    from transformers.utils import logging as tlogging

    bars = (dlogging.is_progress_bar_enabled(), tlogging.is_progress_bar_enabled())
    dlogging.disable_progress_bar()
    tlogging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe = DiffusionPipeline.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 (a broken or partial folder: one line, no traceback)
        first = first_line(e) or type(e).__name__
        raise UserError(f"cannot load base model {path}: {first}") from None
    finally:  # as the caller had them (the demo keeps them off)
        if bars[0]:
            dlogging.enable_progress_bar()
        if bars[1]:
            tlogging.enable_progress_bar()
    if getattr(pipe, "unet", None) is None:
        raise UserError(
            f"base model {path} is a {type(pipe).__name__}: "
            "training supports UNet pipelines (SD 1.x/2.x, SDXL)"
        )
    arch = "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd"
    pipe.set_progress_bar_config(disable=True)
    return Base(pipe=pipe, arch=arch, path=path)


def tokenize(tokenizers: list, prompt: str) -> list[torch.Tensor]:
    """Input ids `(1, L)` of `prompt` for each tokenizer, padded to its length as the pipelines do."""
    return [
        tok(
            prompt,
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        for tok in tokenizers
    ]


def encode(text_encoders: list, input_ids: list[torch.Tensor], arch: str):
    """Prompt embeddings (and SDXL's pooled embedding) exactly as the stock pipelines compute them."""
    if arch == "sd":
        return text_encoders[0](input_ids[0].to(text_encoders[0].device))[0], None
    hidden, pooled = [], None
    for encoder, ids in zip(text_encoders, input_ids, strict=True):
        out = encoder(ids.to(encoder.device), output_hidden_states=True)
        pooled = out[
            0
        ]  # the last encoder's projected pooled output (StableDiffusionXLPipeline.encode_prompt)
        hidden.append(out.hidden_states[-2])
    return torch.cat(hidden, dim=-1), pooled


def time_ids(original_size: torch.Tensor, crop_top_left: torch.Tensor, resolution: int) -> torch.Tensor:
    """SDXL micro-conditioning `(b, 6)`: original size, crop offset, target size."""
    target = torch.tensor([resolution, resolution], device=original_size.device).expand_as(original_size)
    return torch.cat([original_size, crop_top_left, target], dim=1).float()


def token_pieces(tokenizer, token: str) -> list[str]:
    """The pieces the tokenizer splits `token` into (one piece for a rare token like "sks" in CLIP)."""
    return [p.replace("</w>", "") for p in tokenizer.tokenize(token)]
