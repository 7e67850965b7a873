"""Base model + personalization → a pipeline ready for guidance.

`load_pipeline` takes a hub id, a local diffusers folder or a single-file checkpoint. `load_personalization`
works out what a personalization is and installs it so that θ_ω is cheap:

- LoRA (a file or folder in the diffusers, PEFT or kohya format, whatever `load_lora_weights` accepts)
  → loaded as adapter "personal", with per-row scales on the denoiser (`weak.RowScaledLora`);
- a full fine-tune (a diffusers pipeline folder, a denoiser folder, or a single file of denoiser
  weights) → its tensors replace the base ones and θ_pre is kept for those that differ
  (`weak.ParameterDelta`);
- a partial fine-tune (a file holding some denoiser tensors, e.g. Custom Diffusion's cross-attention
  k/v, in our layout or in diffusers' `save_attn_procs` layout) → the same, for those tensors only;
  a learned token embedding beside it (`learned_embeds.safetensors`) is loaded as a textual inversion.

One concern per module: `devices`, `pipelines` (the base pipeline and its scheduler), `weight_files`,
`logs` (library warnings collected while loading), `adapters` (LoRA, PEFT, LyCORIS), `finetunes` (the
tensor swap, original checkpoints), `custom_diffusion` (its layout and learned embeddings); this module
tells which a path is and dispatches.
"""

from __future__ import annotations

import os
from pathlib import Path

from steerguide.errors import UserError
from steerguide.loading.adapters import (
    ADAPTER,
    LORA_FILE,
    adapter_names,
    adapter_personalization,
    install_lora,
)
from steerguide.loading.custom_diffusion import (
    CUSTOM_DIFFUSION_FILE,
    DIFFUSERS_CUSTOM_DIFFUSION_FILES,
    LEARNED_EMBEDS_FILE,
    from_custom_diffusion_layout,
    load_learned_embeds,
)
from steerguide.loading.devices import DTYPES, resolve_device, resolve_dtype
from steerguide.loading.finetunes import (
    check_denoiser_keys,
    install_tensors,
    load_finetuned_folder,
    load_original_checkpoint,
    strip_prefix,
)
from steerguide.loading.pipelines import (
    denoiser_of_pipe,
    load_pipeline,
    scheduler_class,
    set_scheduler,
    text_encoders,
)
from steerguide.loading.weight_files import WEIGHT_SUFFIXES, is_lora_key, read_state_dict
from steerguide.personalization import Personalization
from steerguide.weak.gate import guard_modules
from steerguide.weak.lora import tuner_layers

__all__ = [
    "ADAPTER",
    "CUSTOM_DIFFUSION_FILE",
    "DIFFUSERS_CUSTOM_DIFFUSION_FILES",
    "DTYPES",
    "LEARNED_EMBEDS_FILE",
    "LORA_FILE",
    "WEIGHT_SUFFIXES",
    "denoiser_of_pipe",
    "load_personalization",
    "load_pipeline",
    "resolve_device",
    "resolve_dtype",
    "scheduler_class",
    "set_scheduler",
]


def load_personalization(
    pipe, path: str | os.PathLike | None, *, adapter_name: str | None = None
) -> Personalization:
    """Install the personalization at `path` on `pipe`; returns the `Personalization` that
    `steerguide.denoiser.guided` uses to realize θ_ω. `None` gives the base model alone (CFG only).

    θ_pre is the pipeline as it is without this personalization: a personalization loaded before by this
    function is taken off first (switching subjects guides the new one with the true pretrained weights),
    while LoRAs the user loaded (style, detail) stay on and are part of θ_pre. `adapter_name` names the
    personalization's adapter: the name to load a LoRA under (default "personal"), or, with no `path`, an
    adapter already loaded on the pipeline that is the personalization.
    """
    previous = getattr(pipe, "_steerguide_personalization", None)
    if previous is not None:
        previous.unload(pipe)
        pipe._steerguide_personalization = None
    personal = _load_personalization(pipe, path, adapter_name)
    pipe._steerguide_personalization = personal if personal.kind != "none" else None
    if personal.kind != "none":  # calls of these modules are counted from now on (`weak.gate.Guard`)
        guard_modules(denoiser_of_pipe(pipe), *(m for _, m in text_encoders(pipe)))
    return personal


def _load_personalization(pipe, path, adapter_name: str | None) -> Personalization:
    from steerguide.block import denoiser_of

    if path is None:
        if adapter_name is None:
            return Personalization(kind="none")
        if adapter_name not in adapter_names(pipe) or not tuner_layers(denoiser_of(pipe), adapter_name):
            known = ", ".join(sorted(adapter_names(pipe))) or "none"
            raise UserError(
                f"the pipeline's denoiser has no adapter named {adapter_name!r} (adapters: {known})"
            )
        return adapter_personalization(pipe, adapter_name, None, info={"format": "adapter on the pipeline"})
    name = adapter_name or ADAPTER
    path = Path(path)
    if not path.exists():
        raise UserError(f"personalization not found: {path}")
    denoiser = denoiser_of(pipe)
    if path.is_dir():
        files = {p.name for p in path.iterdir()}
        if "adapter_config.json" in files:
            weights = [p for p in path.iterdir() if p.name.startswith("adapter_model")]
            if len(weights) != 1:
                raise UserError(f"{path} has adapter_config.json but not one adapter_model.* weights file")
            return install_lora(pipe, weights[0], name)
        if "model_index.json" in files or "config.json" in files or "unet" in files or "transformer" in files:
            return load_finetuned_folder(pipe, path)
        if CUSTOM_DIFFUSION_FILE in files or any(f in files for f in DIFFUSERS_CUSTOM_DIFFUSION_FILES):
            file_name = (
                CUSTOM_DIFFUSION_FILE
                if CUSTOM_DIFFUSION_FILE in files
                else next(f for f in DIFFUSERS_CUSTOM_DIFFUSION_FILES if f in files)
            )
            state = from_custom_diffusion_layout(read_state_dict(path / file_name))
            check_denoiser_keys(denoiser, state, path / file_name)
            tokens, token_deltas = load_learned_embeds(pipe, path)
            try:
                personal = install_tensors(
                    pipe,
                    state,
                    kind="partial",
                    source=path,
                    info={"format": "custom-diffusion", "tokens_added": tokens},
                    text_deltas=token_deltas,
                )
            except UserError:
                if tokens:
                    pipe.unload_textual_inversion(tokens)
                raise
            personal.tokens = tokens
            return personal
        if LORA_FILE in files:
            return install_lora(pipe, path / LORA_FILE, name)
        weights = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        if len(weights) == 1:
            path = weights[0]
        else:
            raise UserError(
                f"{path} is not a LoRA, a fine-tuned model or a Custom Diffusion folder "
                f"(expected {LORA_FILE}, model_index.json, config.json or {CUSTOM_DIFFUSION_FILE})"
            )
    if path.suffix not in WEIGHT_SUFFIXES:
        raise UserError(f"{path} is not a weights file (expected one of {', '.join(WEIGHT_SUFFIXES)})")
    state = read_state_dict(path)
    if any(is_lora_key(k) for k in state):
        return install_lora(pipe, path, name)
    names = set(denoiser.state_dict().keys())
    picked = strip_prefix(from_custom_diffusion_layout(state), names)
    if picked:
        kind = "full" if len(picked) == len(names) else "partial"
        return install_tensors(pipe, picked, kind=kind, source=path, info={"format": "tensors"})
    if any(k.startswith("model.diffusion_model.") for k in state):
        return load_original_checkpoint(pipe, path)
    check_denoiser_keys(denoiser, from_custom_diffusion_layout(state), path)
    raise UserError(
        f"{path} is neither a LoRA nor a checkpoint of this base model's {type(denoiser).__name__}"
    )
