"""Tiny random SD 1.5-architecture files that ComfyUI itself detects and loads (tests, examples, benchmark).

The checkpoint is in the single-file layout ComfyUI's CheckpointLoaderSimple reads: the UNet under
`model.diffusion_model.`, the text encoder under `cond_stage_model.`, the VAE under `first_stage_model.`.
ComfyUI detects SD 1.5 from the UNet's keys (comfy/model_detection.py → comfy/supported_models.SD15 wants
model_channels 320, context_dim 768, conv proj_in): the UNet keeps those widths and SD 1.5's block kinds
(res block, spatial transformer with self- and cross-attention, down/up sampling) but has one level and
one res block a level instead of four and two. The text encoder must be CLIP-L's full size (ComfyUI builds
SD 1.5's from a fixed config), so it is optional and stored in float16. The VAE is a TAESD (ComfyUI loads
one from `first_stage_model.taesd_*` keys), far smaller than SD's KL autoencoder.

The modules are ComfyUI's own classes, built and filled with seeded random numbers here; nothing is
downloaded. The LoRA is in the kohya layout (`lora_unet_<module>.lora_down/.lora_up/.alpha`) that
ComfyUI's LoraLoader reads.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

# What comfy/model_detection.py reports for the tiny UNet (and what it builds from): SD 1.5's settings
# except the depth (one level, one res block).
TINY_UNET = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [1, 1],
    "channel_mult": [1, 1],
    "transformer_depth": [1, 0],
    "transformer_depth_output": [1, 1, 0, 0],
    "transformer_depth_middle": 1,
    "context_dim": 768,
    "num_heads": 8,
    "num_head_channels": -1,
    "use_linear_in_transformer": False,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
    "use_checkpoint": False,
}

# SD 1.5's UNet as ComfyUI's detection reports it for the released checkpoint (the benchmark's model).
SD15_UNET = {
    **TINY_UNET,
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    "transformer_depth_middle": 1,
}

# The smallest SDXL-architecture UNet ComfyUI detects: KOALA-700M's block counts (supported_models.KOALA_700M
# matches model_channels 320, linear proj_in, 2048-wide context, 2816-wide ADM input and the input blocks'
# transformer depths [0, 2, 5]; it does not look at the channel multipliers or the decoder side), at 320
# channels on every level and with one transformer block a decoder level and in the middle.
TINY_SDXL = {
    **TINY_UNET,
    "num_res_blocks": [1, 1, 1],
    "channel_mult": [1, 1, 1],
    "transformer_depth": [0, 2, 5],
    "transformer_depth_output": [1, 1, 1, 1, 0, 0],
    "transformer_depth_middle": 1,
    "context_dim": 2048,
    "num_heads": -1,
    "num_head_channels": 64,
    "use_linear_in_transformer": True,
    "adm_in_channels": 2816,
    "num_classes": "sequential",
}

# A tiny SD3 (MMDiT) as comfy/model_detection.py reads it from the keys: depth 2 (hidden 64·depth = 128),
# SD3's 16 latent channels, 2048-wide pooled and 4096-wide context inputs (what ComfyUI's SD3 class needs).
TINY_SD3 = {
    "in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": 2, "input_size": None,
    "adm_in_channels": 2048,
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 128}},
    "num_patches": 256, "pos_embed_max_size": 16, "pos_embed_scaling_factor": None,
    "x_block_self_attn_layers": [],
}

# The smallest Flux (dev: with guidance_in) comfy/model_detection.py detects: it fixes the widths (hidden
# 3072, 24 heads, 4096-wide T5 context, 768-wide pooled CLIP input) and counts the blocks from the keys, so
# one double-stream and one single-stream block are kept (FLUX.1 has 19 and 38).
TINY_FLUX = {
    "in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 4096, "hidden_size": 3072,
    "mlp_ratio": 4.0, "num_heads": 24, "depth": 1, "depth_single_blocks": 1, "axes_dim": [16, 56, 56],
    "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True,
}

# The layers the test LoRA reaches. SD 1.5: every attention projection of the transformer blocks, the
# 1×1 proj_in/proj_out convolutions around them, and one 3×3 res block convolution (a LoCon-style conv
# LoRA). SD3: the attention and MLP linears of both streams of every joint block. Flux: those of both
# streams of the double blocks (fused qkv) and the fused linear1/linear2 of the single blocks.
_LORA_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                 "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.2",
                 "attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2",
                 "img_mlp.0", "img_mlp.2", "txt_mlp.0", "txt_mlp.2", ".linear1", ".linear2")


def fill_random_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded random weights of a trained model's scale (ComfyUI's layers skip their own init)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=gen)  # in place: Flux's are 545M numbers
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
    return module


def unet_state_dict(config: dict = TINY_UNET, seed: int = 0) -> dict[str, torch.Tensor]:
    """ComfyUI's SD UNet at `config` with random weights, keys as in a checkpoint (`model.diffusion_model.`)."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = fill_random_(UNetModel(**config, device="cpu"), seed)
    return {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}


def mmdit_state_dict(config: dict = TINY_SD3, seed: int = 0) -> dict[str, torch.Tensor]:
    """ComfyUI's SD3 MMDiT at `config` with random weights, keys as in a checkpoint."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

    model = fill_random_(MMDiT(**config, device="cpu", operations=comfy.ops.disable_weight_init), seed)
    return {f"model.diffusion_model.{k}": v for k, v in model.state_dict().items()}


def flux_state_dict(config: dict = TINY_FLUX, seed: int = 0) -> dict[str, torch.Tensor]:
    """ComfyUI's Flux at `config` with random weights, keys as in a checkpoint (`model.diffusion_model.`)."""
    import comfy.ops
    from comfy.ldm.flux.model import Flux

    model = fill_random_(Flux(**config, device="cpu", operations=comfy.ops.disable_weight_init), seed)
    return {f"model.diffusion_model.{k}": v for k, v in model.state_dict().items()}


def clip_state_dict(seed: int = 1) -> dict[str, torch.Tensor]:
    """CLIP-L's text model (SD 1.5's text encoder) with random weights, in float16, as `cond_stage_model.`."""
    from comfy.sd1_clip import SDClipModel

    clip = fill_random_(SDClipModel(device="cpu", dtype=torch.float32), seed)
    out = {}
    for k, v in clip.state_dict().items():
        if k.startswith("transformer."):
            out[f"cond_stage_model.{k}"] = v.half() if v.is_floating_point() else v
    return out


def vae_state_dict(seed: int = 2) -> dict[str, torch.Tensor]:
    """A TAESD with random weights, as `first_stage_model.` (ComfyUI's VAE loader recognizes its keys)."""
    from comfy.taesd.taesd import TAESD

    vae = fill_random_(TAESD(), seed)
    with torch.no_grad():
        vae.vae_scale.fill_(1.0)
        vae.vae_shift.fill_(0.0)
    return {f"first_stage_model.{k}": v for k, v in vae.state_dict().items()}


def write_checkpoint(path: str | Path, *, seed: int = 0, with_clip: bool = True, with_vae: bool = True,
                     unet: dict[str, torch.Tensor] | None = None,
                     clip: dict[str, torch.Tensor] | None = None) -> Path:
    """A single-file checkpoint (safetensors) that CheckpointLoaderSimple loads: SD 1.5 unless `unet`
    holds another family's weights (then without VAE and text encoder: those would be SD 1.5's)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = dict(unet if unet is not None else unet_state_dict(seed=seed))
    if with_vae:
        sd.update(vae_state_dict())
    if with_clip:
        sd.update(clip if clip is not None else clip_state_dict())
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def lora_state_dict(unet: dict[str, torch.Tensor], rank: int = 4, alpha: float = 2.0, seed: int = 3,
                    scale: float = 1.0) -> dict[str, torch.Tensor]:
    """A random kohya-layout LoRA for the UNet in `unet` (checkpoint keys); ΔW is of order `scale`·W."""
    gen = torch.Generator().manual_seed(seed)
    prefix = "model.diffusion_model."
    out: dict[str, torch.Tensor] = {}
    for key, weight in sorted(unet.items()):
        module = key[len(prefix):-len(".weight")] if key.endswith(".weight") else None
        if module is None:
            continue
        conv_targets = module.endswith((".proj_in", ".proj_out")) or module == "input_blocks.1.0.in_layers.2"
        if not (module.endswith(_LORA_TARGETS) or conv_targets) or weight.ndim < 2:
            continue
        name = "lora_unet_" + module.replace(".", "_")
        fan_in = weight[0].numel()
        down = torch.randn((rank, *weight.shape[1:]), generator=gen) / math.sqrt(fan_in)
        up_shape = (weight.shape[0], rank) + (1,) * (weight.ndim - 2)
        # scaled so that (alpha / rank) · up @ down has about `scale` times the weight's own size
        up = torch.randn(up_shape, generator=gen) * scale * math.sqrt(rank / fan_in) * (rank / alpha)
        out[f"{name}.lora_down.weight"] = down
        out[f"{name}.lora_up.weight"] = up
        out[f"{name}.alpha"] = torch.tensor(alpha)
    return out


def text_encoder_lora_state_dict(clip: dict[str, torch.Tensor], rank: int = 4, seed: int = 4,
                                 scale: float = 1.0) -> dict[str, torch.Tensor]:
    """A random kohya-layout LoRA (`lora_te_...`) on the q/v projections of the CLIP in `clip`."""
    gen = torch.Generator().manual_seed(seed)
    prefix = "cond_stage_model.transformer."
    out: dict[str, torch.Tensor] = {}
    for key, weight in sorted(clip.items()):
        if not key.endswith(("self_attn.q_proj.weight", "self_attn.v_proj.weight")):
            continue
        name = "lora_te_" + key[len(prefix):-len(".weight")].replace(".", "_")
        fan_in = weight.shape[1]
        out[f"{name}.lora_down.weight"] = torch.randn(rank, fan_in, generator=gen) / math.sqrt(fan_in)
        out[f"{name}.lora_up.weight"] = torch.randn(weight.shape[0], rank, generator=gen) * scale / math.sqrt(rank)
        out[f"{name}.alpha"] = torch.tensor(float(rank))
    return out


def write_lora(path: str | Path, unet: dict[str, torch.Tensor], clip: dict[str, torch.Tensor] | None = None,
               **kwargs) -> Path:
    """The UNet LoRA (and, given the CLIP's weights, a text-encoder part) as one safetensors file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = lora_state_dict(unet, **kwargs)
    if clip is not None:
        sd.update(text_encoder_lora_state_dict(clip))
    save_file(sd, str(path))
    return path
