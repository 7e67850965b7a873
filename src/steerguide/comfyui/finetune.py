"""Full fine-tunes in ComfyUI: the weak branch runs θ_ω = θ_ft + (1 − ω)(θ_pre − θ_ft) through ComfyUI's hooks.

A full fine-tune cannot give each batch row its own weights in one matmul, so the weak rows go through
the weights θ_ω and the positive rows through θ_ft: the same rows through the network as CFG, in ComfyUI's
two hook-group calls a step. θ_ω is ComfyUI's own "model_as_lora" weight patch (comfy/hooks.py
`create_hook_model_as_lora`, comfy/lora.py): the base weights as the target at strength 1 − ω, on the
weak conditioning only, and only for the weights that differ (for a Custom Diffusion-style fine-tune,
the cross-attention keys and values), so ComfyUI re-patches only those between the two calls.
"""

from __future__ import annotations

import torch

from steerguide.errors import UserError

ATTACHMENT = "steerguide_finetune_base"  # ModelPatcher attachment: the base weights that differ


def differing_base_weights(model, base_model) -> dict[str, torch.Tensor]:
    """The base model's UNet weights where they differ from the fine-tune's (keys as ComfyUI patches them)."""
    ft = model.model.state_dict()
    base = base_model.model.state_dict()
    unet = [k for k in ft if k.startswith("diffusion_model.")]
    missing = [k for k in unet if k not in base]
    if missing or len(unet) != sum(k.startswith("diffusion_model.") for k in base):
        raise UserError(f"the base model is not the fine-tune's architecture ({len(missing)} of the fine-tune's "
                        "UNet weights have no counterpart in it)")
    shapes = [k for k in unet if base[k].shape != ft[k].shape]
    if shapes:
        raise UserError(f"the base model is not the fine-tune's architecture (weight {shapes[0]}: "
                        f"{tuple(base[shapes[0]].shape)} against {tuple(ft[shapes[0]].shape)})")
    differ = {k: base[k] for k in unet if not torch.equal(base[k], ft[k])}
    if not differ:
        raise UserError("the fine-tuned model's UNet equals the base model's: nothing to guide with")
    return differ


def with_finetune_base(model, base_model):
    """A clone of the fine-tuned `model` that carries the base weights PG/AG need for θ_ω."""
    patched = model.clone()
    patched.attachments[ATTACHMENT] = differing_base_weights(model, base_model)
    return patched


def has_finetune_base(model) -> bool:
    return ATTACHMENT in getattr(model, "attachments", {})


def weak_conditioning(model, conditioning, omega: float):
    """`conditioning` with ComfyUI's weight hook that turns θ_ft into θ_ω for the rows it conditions."""
    import comfy.hooks

    hooks = comfy.hooks.create_hook_model_as_lora(weights_model=model.attachments[ATTACHMENT],
                                                  weights_clip=None, strength_model=1.0 - omega,
                                                  strength_clip=0.0)
    (weak,) = comfy.hooks.set_conds_props([conditioning], strength=1.0, set_cond_area="default", hooks=hooks)
    return weak
