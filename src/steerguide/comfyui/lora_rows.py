"""A LoRA kept unmerged in a ComfyUI model, its scale set row by row inside one batched forward.

ComfyUI merges a LoRA into the weights (`ModelPatcher.add_patches`), so every row of a batch sees the
same scale. Here each layer the LoRA reaches keeps its own weight and gets a `forward` object patch
(ComfyUI's `add_object_patch`, undone when the model is unpatched) computing

    y = layer(x) + s_row · (α/r) · up(down(x))

where `s_row` is 1 unless an `apply_model` wrapper (ComfyUI's WrappersMP.APPLY_MODEL) has set per-row
scales for this call. The wrapper reads which rows are which from `transformer_options["cond_or_uncond"]`
(0: positive, 1: negative; ComfyUI lists the chunks in reverse and may split them over several calls
when memory is short) and the weak model's ω from `transformer_options[OMEGA_KEY]`, which only
steerguide's guiders set: with any other guider the model is the personalized model, LoRA at 1.

The LoRA file is read by ComfyUI's own key maps and loader (comfy/lora.py), so every key layout ComfyUI's
LoraLoader reads is read here the same way. A text-encoder part goes to ComfyUI's CLIP weight patches (at
1 for the positive prompt, at ω for the negative one, see `text_encoder_at`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from steerguide.errors import UserError

OMEGA_KEY = "steerguide_omega"  # transformer_options entry: ω of the negative rows, set by our guiders
WRAPPER_KEY = "steerguide_rows"  # our key among the model's APPLY_MODEL wrappers
POSITIVE, NEGATIVE = 0, 1  # the cond_or_uncond values: indices into calc_cond_batch's [cond, uncond]


class _RowScales:
    """The per-row scales of the forward in progress (None: 1 for every row)."""

    value: torch.Tensor | None = None


_ROWS = _RowScales()


@contextmanager
def row_scales(scales: torch.Tensor | None):
    previous, _ROWS.value = _ROWS.value, scales
    try:
        yield
    finally:
        _ROWS.value = previous


def scales_for_rows(cond_or_uncond: list[int], batch: int, omega: float) -> torch.Tensor:
    """One scale per batch row: ω for the rows of the negative chunks, 1 for the positive ones."""
    if not cond_or_uncond or batch % len(cond_or_uncond):
        raise RuntimeError(f"steerguide: a batch of {batch} rows cannot be split into chunks {cond_or_uncond}")
    per_chunk = torch.tensor([omega if c == NEGATIVE else 1.0 for c in cond_or_uncond], dtype=torch.float32)
    return per_chunk.repeat_interleave(batch // len(cond_or_uncond))


def apply_model_wrapper(executor, x, t, c_concat=None, c_crossattn=None, control=None,
                        transformer_options={}, **kwargs):  # noqa: B006 (ComfyUI's signature)
    """ComfyUI APPLY_MODEL wrapper: sets the row scales for this call when a steerguide guider asks."""
    omega = transformer_options.get(OMEGA_KEY)
    if omega is None:
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
    scales = scales_for_rows(transformer_options["cond_or_uncond"], x.shape[0], float(omega))
    with row_scales(scales):
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)


@dataclass
class _Term:
    """One LoRA on one layer: the down projection as the layer's own kind of op, up as a 1×1 / linear."""

    down: torch.Tensor
    up: torch.Tensor  # already multiplied by α/r
    cache: dict

    def weights(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (like.device, like.dtype)
        if key not in self.cache:
            self.cache.clear()
            self.cache[key] = (self.down.to(like.device, like.dtype), self.up.to(like.device, like.dtype))
        return self.cache[key]


class RowScaledLoRAForward:
    """The `forward` object patch of one layer: the layer's own forward plus its LoRA terms, row-scaled."""

    def __init__(self, module: torch.nn.Module, terms: list[_Term]):
        self.module = module
        self.terms = terms
        self.conv = module.weight.ndim == 4

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = type(self.module).forward(self.module, x, *args, **kwargs)
        scales = _ROWS.value
        if scales is not None and scales.shape[0] != x.shape[0]:
            raise RuntimeError(f"steerguide: {scales.shape[0]} row scales for a batch of {x.shape[0]}")
        m = self.module
        for term in self.terms:
            down, up = term.weights(x)
            # the row scale multiplies the rank-r activations, the smallest tensor on the way
            if self.conv:
                h = F.conv2d(x, down, None, m.stride, m.padding, m.dilation)
            else:
                h = F.linear(x, down)
            if scales is not None:
                h = h * scales.to(h.device, h.dtype).view(-1, *([1] * (h.ndim - 1)))
            d = F.conv2d(h, up) if self.conv else F.linear(h, up)
            out = out + d.to(out.dtype)
        return out


def _term(key: str, adapter, weight: torch.Tensor, module: torch.nn.Module) -> _Term:
    from comfy.weight_adapter.lora import LoRAAdapter

    layer = key[len("diffusion_model."):-len(".weight")]
    if not isinstance(adapter, LoRAAdapter):
        raise UserError(f"LoRA layer {layer}: {type(adapter).__name__} weights are not supported, only LoRA")
    up, down, alpha, mid, dora_scale, reshape = adapter.weights
    if mid is not None or dora_scale is not None or reshape is not None:
        raise UserError(f"LoRA layer {layer}: LoCon mid weights, DoRA and reshaped LoRAs are not supported")
    rank = down.shape[0]
    out_features, kernel = weight.shape[0], weight.shape[1:]
    if up.shape[0] != out_features or up[0].numel() != rank or down[0].numel() != kernel.numel():
        raise UserError(
            f"LoRA layer {layer}: its matrices ({tuple(up.shape)} × {tuple(down.shape)}) do not fit the "
            f"model's weight {tuple(weight.shape)}: a LoRA for another architecture?"
        )
    if weight.ndim == 4 and getattr(module, "groups", 1) != 1:
        raise UserError(f"LoRA layer {layer}: grouped convolutions are not supported")
    if weight.ndim not in (2, 4):
        raise UserError(f"LoRA layer {layer}: a {weight.ndim}-d weight is not supported")
    ratio = float(alpha) / rank if alpha is not None else 1.0
    down = down.float().reshape(rank, *kernel)
    up = (up.float() * ratio).reshape(out_features, rank, *([1] * (weight.ndim - 2)))
    return _Term(down=down, up=up, cache={})


def read_lora(model_patcher, lora_sd: dict[str, torch.Tensor], name: str, clip=None):
    """The LoRA read with ComfyUI's key maps and loader (as LoraLoader reads it): its UNet terms by weight
    key, and its text-encoder patches (ComfyUI's adapters, for `clip.add_patches`). Every tensor must find
    its layer."""
    import comfy.lora
    import comfy.lora_convert
    import comfy.utils

    lora_sd = comfy.lora_convert.convert_lora(lora_sd)
    key_map = comfy.lora.model_lora_keys_unet(model_patcher.model, {})
    if clip is not None:
        key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    loaded = comfy.lora.load_lora(lora_sd, key_map, log_missing=False)
    used: set[str] = set()
    for adapter in loaded.values():
        used |= set(getattr(adapter, "loaded_keys", ()) or ())
    unmatched = sorted(set(lora_sd) - used)
    if not loaded:
        raise UserError(f"LoRA {name}: none of its {len(lora_sd)} tensors matches a layer of this model: "
                        "a LoRA for another architecture?")
    if unmatched:
        te = [k for k in unmatched if k.startswith(("lora_te", "text_encoder", "te_", "lora_clip"))]
        if te and clip is None:
            raise UserError(f"LoRA {name}: it also changes the text encoder ({len(te)} tensors, e.g. {te[0]}): "
                            "connect the checkpoint's CLIP to the loader")
        raise UserError(f"LoRA {name}: {len(unmatched)} of its tensors match no layer of this model "
                        f"(first: {unmatched[0]}): a LoRA for another architecture?")
    sd = model_patcher.model.state_dict()
    clip_keys = set(clip.cond_stage_model.state_dict()) if clip is not None else set()
    terms: dict[str, _Term] = {}
    text_patches = {}
    for key, adapter in loaded.items():
        if isinstance(key, str) and key in clip_keys and not key.startswith("diffusion_model."):
            text_patches[key] = adapter
            continue
        if not isinstance(key, str) or not key.startswith("diffusion_model.") or key not in sd:
            raise UserError(f"LoRA {name}: layer {key} is not a whole UNet weight; not supported")
        module = comfy.utils.get_attr(model_patcher.model, key[:-len(".weight")])
        terms[key] = _term(key, adapter, sd[key], module)
    return terms, text_patches


def add_row_scaled_lora(model_patcher, terms: dict[str, _Term]):
    """A clone of `model_patcher` with the LoRA `terms` unmerged, row-scaled by steerguide's guiders."""
    import comfy.patcher_extension
    import comfy.utils

    patched = model_patcher.clone()
    for key, term in terms.items():
        path = key[:-len(".weight")]
        patch_name = f"{path}.forward"
        existing = patched.object_patches.get(patch_name)
        if existing is not None and not isinstance(existing, RowScaledLoRAForward):
            raise UserError(f"layer {path} already has another node's forward patch; cannot add the LoRA")
        module = comfy.utils.get_attr(patched.model, path)
        before = existing.terms if existing is not None else []
        patched.add_object_patch(patch_name, RowScaledLoRAForward(module, [*before, term]))
    if not patched.get_wrappers(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY):
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY,
                                     apply_model_wrapper)
    return patched


def has_row_scaled_lora(model_patcher) -> bool:
    return any(isinstance(v, RowScaledLoRAForward) for v in model_patcher.object_patches.values())


# The text encoder encodes each prompt on its own, before sampling: there the LoRA can be merged, at 1 for
# the positive prompt and at ω for the negative one (ComfyUI's own CLIP weight patches, as LoraLoader's).
TEXT_ATTACHMENT = "steerguide_text_lora"  # on the loader's CLIP: (the CLIP without the LoRA, its patches)


def text_encoder_at(clip, scale: float):
    """The loader's CLIP with its LoRA's text-encoder part at `scale` instead of 1."""
    base, patches = clip.patcher.attachments[TEXT_ATTACHMENT]
    out = base.clone()
    if patches:
        out.add_patches(patches, scale)
    out.patcher.attachments[TEXT_ATTACHMENT] = (base, patches)
    return out


def has_text_lora(clip) -> bool:
    return TEXT_ATTACHMENT in getattr(getattr(clip, "patcher", None), "attachments", {})


def personalize_text_encoder(clip, patches: dict):
    """The CLIP for the positive prompt: the LoRA's text-encoder part at 1, the way to θ_ω kept."""
    base = clip.clone()
    base.patcher.attachments[TEXT_ATTACHMENT] = (clip, patches)
    return text_encoder_at(base, 1.0)
