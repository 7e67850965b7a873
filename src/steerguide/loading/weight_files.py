"""Reading weight files: a state dict from one file, the safetensors of a model folder (read lazily), and
the key patterns that tell a LoRA from a checkpoint."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from steerguide.errors import UserError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors / .bin / .ckpt file; a corrupt or foreign file is a UserError."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
    except Exception as e:  # safetensors, pickle and zip errors have no common base class
        raise UserError(f"cannot read {path}: corrupt or not a weights file ({type(e).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} does not hold a dictionary of tensors")
    if not state:
        raise UserError(f"{path} holds no tensors")
    return state


def is_lora_key(key: str) -> bool:
    return any(
        tag in key
        for tag in (
            "lora_A",
            "lora_B",
            "lora_down",
            "lora_up",
            "lora.down",
            "lora.up",
            "lora_unet_",
            "lora_te",
            "lora_linear_layer",
        )
    )


class LazyTensors(Mapping):
    """The tensors of safetensors files, read one at a time on access (a fine-tuned T5-XXL is compared
    with the base tensor by tensor, never loaded whole only to find it unchanged)."""

    def __init__(self, files: list[Path]) -> None:
        from safetensors import safe_open

        self._handles = [safe_open(str(f), framework="pt") for f in files]
        self._where = {k: h for h in self._handles for k in h.keys()}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._where[key].get_tensor(key)

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def safetensors_files(folder: Path) -> list[Path] | None:
    """The safetensors files of a diffusers/transformers model folder (sharded or not); None if none."""
    for index_name in ("diffusion_pytorch_model.safetensors.index.json", "model.safetensors.index.json"):
        index = folder / index_name
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [folder / f for f in files]
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        if (folder / name).is_file():
            return [folder / name]
    return None
