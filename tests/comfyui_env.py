"""ComfyUI for the tests: where its source is, and the tiny SD 1.5 files it loads.

The source folder is `$STEERGUIDE_COMFYUI`, else `../shared/comfyui` beside the repository. Without it the
ComfyUI tests skip on a developer's machine and FAIL in CI (`CI` set), so that CI never passes by skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def comfyui_dir() -> Path:
    folder = Path(os.environ.get("STEERGUIDE_COMFYUI") or REPO / ".." / "shared" / "comfyui").resolve()
    if not (folder / "comfy" / "samplers.py").is_file():
        message = f"ComfyUI's source is not at {folder} (set STEERGUIDE_COMFYUI to its folder)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI needs it")
        pytest.skip(message)
    return folder


def write_models(root: Path, *, with_clip: bool) -> dict[str, Path]:
    """ComfyUI's model folders under `root` with the tiny checkpoint, its LoRA (with a text-encoder part too,
    when the checkpoint has a text encoder) and a LoRA that fits nothing."""
    from steerguide.comfyui import testing

    unet = testing.unet_state_dict(seed=0)
    clip = testing.clip_state_dict() if with_clip else None
    ckpt = testing.write_checkpoint(root / "checkpoints" / "tiny-sd15.safetensors", unet=unet,
                                    with_clip=with_clip, clip=clip)
    lora = testing.write_lora(root / "loras" / "tiny-sd15-lora.safetensors", unet, scale=1.0)
    files = {}
    if with_clip:  # the same UNet LoRA with a text-encoder part
        files["te_lora"] = testing.write_lora(root / "loras" / "tiny-sd15-te-lora.safetensors", unet, clip,
                                              scale=1.0)
    # another architecture's LoRA: the same layer names at twice the widths (ComfyUI's LoraLoader only
    # logs the mismatch and goes on without those layers)
    wide = {k: torch.zeros(2 * v.shape[0], 2 * v.shape[1], *v.shape[2:]) for k, v in unet.items()
            if k.endswith(".weight") and v.ndim >= 2}
    other = testing.write_lora(root / "loras" / "other-arch-lora.safetensors", wide)
    return {"checkpoint": ckpt, "lora": lora, "other_lora": other, **files}
