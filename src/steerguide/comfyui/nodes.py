"""steerguide's ComfyUI nodes and their NODE_CLASS_MAPPINGS (what `custom_nodes/steerguide` exports).

- PersonalizationLoRALoader: MODEL (+ CLIP) + a LoRA from ComfyUI's `loras` folder → MODEL with the LoRA
  kept unmerged (lora_rows), at 1 on every row unless one of the guiders below sets ω for the negative
  rows, and CLIP with the LoRA's text-encoder part at 1 (for the positive prompt).
  With ComfyUI's own CFGGuider/KSampler it is the personalized model, as after LoraLoader.
- PersonalizationWeakTextEncoder: the loader's CLIP with the LoRA's text-encoder part at ω, for the
  negative prompt (text is encoded once per prompt, so there the LoRA is merged: ComfyUI's own patches).
- PersonalizationFineTuneLoader: a fine-tuned MODEL and its base MODEL → MODEL whose weak rows PG/AG run
  through θ_ω (finetune.py).
- PersonalizationGuider (PG) and PersonalizationAGGuider (AG): GUIDERs for SamplerCustomAdvanced.

Bad input is reported through ComfyUI's own channels: numbers outside their range are refused by ComfyUI's
prompt validation (the min/max below) before anything runs; what only the model can tell (a LoRA for
another architecture, a model without a personalization) raises `UserError` with one line, which
ComfyUI shows as the node's error.
"""

from __future__ import annotations

import functools

import folder_paths

from steerguide.comfyui.finetune import has_finetune_base, with_finetune_base
from steerguide.comfyui.guiders import PersonalizationGuider
from steerguide.comfyui.lora_rows import (
    add_row_scaled_lora,
    has_row_scaled_lora,
    has_text_lora,
    personalize_text_encoder,
    read_lora,
    text_encoder_at,
)
from steerguide.errors import UserError
from steerguide.methods.ag import AG
from steerguide.methods.pg import PG
from steerguide.schedules import Constant, Cosine, Linear

CATEGORY = "sampling/custom_sampling/guiders"
SCHEDULES = ("constant", "linear", "cosine")


def _one_line(function):
    """Our bad-input error re-raised from the node's own function: ComfyUI shows its one line, and the
    traceback ComfyUI attaches ends at the node instead of running through steerguide's internals."""

    @functools.wraps(function)
    def node_function(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except UserError as e:
            message = str(e)
        raise UserError(message)  # outside the except block: no chained traceback

    return node_function


def _float(default: float, low: float, high: float, step: float = 0.01, tooltip: str = "") -> tuple:
    return ("FLOAT", {"default": default, "min": low, "max": high, "step": step, "tooltip": tooltip})


def _schedule(kind: str, omega: float, omega_end: float):
    if kind == "constant":
        return Constant(omega)
    if kind == "linear":
        return Linear(omega, omega_end)
    if kind == "cosine":
        return Cosine(omega, omega_end)
    raise UserError(f"unknown omega schedule {kind!r}; expected one of {', '.join(SCHEDULES)}")


def _check_interval(start: float, stop: float) -> None:
    if not 0.0 <= start <= stop <= 1.0:
        raise UserError(f"guidance interval must satisfy 0 <= start <= stop <= 1, got start {start}, stop {stop}")


def _check_model(model) -> None:
    if not (has_row_scaled_lora(model) or has_finetune_base(model)):
        raise UserError("the model has no steerguide personalization: pass it through "
                        "PersonalizationLoRALoader or PersonalizationFineTuneLoader first")


_GUIDE_INPUTS = {
    "cfg": _float(7.5, 0.0, 100.0, 0.1, "guidance scale w (1: no guidance)"),
    "omega": _float(PG.default_omega, 0.0, 1.0, 0.01, "share of the personalization the weak model keeps at the start"),
    "omega_schedule": (list(SCHEDULES), {"default": "constant", "tooltip": "ω over the sampling steps"}),
    "omega_end": _float(1.0, 0.0, 1.0, 0.01, "ω at the end (linear and cosine schedules)"),
    "start": _float(0.0, 0.0, 1.0, 0.01, "fraction of the steps where guidance starts"),
    "stop": _float(1.0, 0.0, 1.0, 0.01, "fraction of the steps where guidance stops"),
}


class PersonalizationLoRALoader:
    """Load a personalization LoRA unmerged, so that PG/AG can give each batch row its own scale."""

    CATEGORY = "loaders"
    RETURN_TYPES = ("MODEL", "CLIP")
    RETURN_NAMES = ("model", "clip")
    FUNCTION = "load"
    DESCRIPTION = ("A LoRA kept unmerged: scale 1 for the prompt rows, ω for the weak rows of PG/AG. The CLIP "
                   "output has the LoRA's text-encoder part at 1 (for the positive prompt); encode the "
                   "negative prompt with Weak Text Encoder at the guider's ω.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "lora_name": (folder_paths.get_filename_list("loras"),)},
                "optional": {"clip": ("CLIP", {"tooltip": "needed when the LoRA reaches the text encoder"})}}

    @_one_line
    def load(self, model, lora_name, clip=None):
        import comfy.utils

        path = folder_paths.get_full_path("loras", lora_name)
        if path is None:
            raise UserError(f"LoRA {lora_name!r} is not in ComfyUI's loras folder")
        lora = comfy.utils.load_torch_file(path, safe_load=True)
        terms, text_patches = read_lora(model, lora, lora_name, clip)
        if not terms:
            raise UserError(f"LoRA {lora_name}: it changes no UNet layer; nothing to guide with")
        clip_out = personalize_text_encoder(clip, text_patches) if clip is not None else None
        return (add_row_scaled_lora(model, terms), clip_out)


class PersonalizationWeakTextEncoder:
    """The loader's CLIP with the LoRA's text-encoder part at ω: for the negative prompt of PG."""

    CATEGORY = "loaders"
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "weaken"
    DESCRIPTION = "The text encoder of θ_ω (the LoRA's text-encoder part at ω), to encode PG's negative prompt."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip": ("CLIP", {"tooltip": "the CLIP output of Load Personalization LoRA"}),
                             "omega": _float(0.5, 0.0, 1.0, 0.01, "the same ω as the guider's")}}

    @_one_line
    def weaken(self, clip, omega):
        if not has_text_lora(clip):
            raise UserError("this CLIP does not come from Load Personalization LoRA (steerguide): connect "
                            "that node's clip output")
        return (text_encoder_at(clip, omega),)


class PersonalizationFineTuneLoader:
    """A full fine-tune and its base: PG/AG run the weak rows through θ_ω, the others through θ_ft."""

    CATEGORY = "loaders"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    DESCRIPTION = "A fine-tuned MODEL with its base MODEL, for PG/AG's weak model θ_ω between them."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL", {"tooltip": "the personalized (fine-tuned) model"}),
                             "base_model": ("MODEL", {"tooltip": "the pretrained model it was tuned from"})}}

    @_one_line
    def load(self, model, base_model):
        return (with_finetune_base(model, base_model),)


class PersonalizationGuiderNode:
    """PG: the negative branch is the weak model θ_ω (the LoRA at ω), in CFG's one batched call."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("GUIDER",)
    FUNCTION = "get_guider"
    DESCRIPTION = "Personalization guidance: CFG whose negative branch keeps ω of the personalization."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "positive": ("CONDITIONING",),
                             "negative": ("CONDITIONING",), **_GUIDE_INPUTS}}

    @_one_line
    def get_guider(self, model, positive, negative, cfg, omega, omega_schedule, omega_end, start, stop):
        _check_model(model)
        _check_interval(start, stop)
        guider = PersonalizationGuider(model, _schedule(omega_schedule, omega, omega_end), start, stop,
                                       weak_on_prompt=PG.weak_on_prompt)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return (guider,)


class PersonalizationAGGuiderNode:
    """AG: the weak model θ_ω on the prompt (ω = 0: the base model), in one batched call."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("GUIDER",)
    FUNCTION = "get_guider"
    DESCRIPTION = "Autoguidance with the weak model θ_ω (the LoRA at ω) on the prompt."

    @classmethod
    def INPUT_TYPES(cls):
        inputs = dict(_GUIDE_INPUTS)
        inputs["omega"] = _float(AG.default_omega, 0.0, 1.0, 0.01, "share of the personalization the weak model keeps")
        weak = ("CONDITIONING", {"tooltip": "the prompt encoded by Weak Text Encoder, when the LoRA reaches "
                                            "the text encoder (default: positive)"})
        return {"required": {"model": ("MODEL",), "positive": ("CONDITIONING",), **inputs},
                "optional": {"weak_positive": weak}}

    @_one_line
    def get_guider(self, model, positive, cfg, omega, omega_schedule, omega_end, start, stop,
                   weak_positive=None):
        _check_model(model)
        _check_interval(start, stop)
        schedule = _schedule(omega_schedule, omega, omega_end)
        guider = PersonalizationGuider(model, schedule, start, stop, weak_on_prompt=AG.weak_on_prompt)
        guider.set_conds(positive, weak_positive)
        guider.set_cfg(cfg)
        return (guider,)


NODE_CLASS_MAPPINGS = {
    "PersonalizationLoRALoader": PersonalizationLoRALoader,
    "PersonalizationWeakTextEncoder": PersonalizationWeakTextEncoder,
    "PersonalizationFineTuneLoader": PersonalizationFineTuneLoader,
    "PersonalizationGuider": PersonalizationGuiderNode,
    "PersonalizationAGGuider": PersonalizationAGGuiderNode,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "PersonalizationLoRALoader": "Load Personalization LoRA (steerguide)",
    "PersonalizationWeakTextEncoder": "Weak Text Encoder (θ_ω, steerguide)",
    "PersonalizationFineTuneLoader": "Load Personalization Fine-Tune (steerguide)",
    "PersonalizationGuider": "Personalization Guider (PG, steerguide)",
    "PersonalizationAGGuider": "Autoguidance Guider (AG, steerguide)",
}
