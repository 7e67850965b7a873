"""Tiny random pipelines of the real architectures (SD 1.5, SDXL, SD3, Flux, Chroma, Qwen-Image,
Wan 2.1/2.2), saved to disk.

Tests, benchmarks and examples load them through the same `from_pretrained` code as real checkpoints,
so nothing here needs the network. The tokenizers are character-level CLIP BPE vocabularies written
on the spot: every word is spelled out, which is all a random model needs.

The package's modules hold the other test doubles: `metric_models` (tiny CLIP and ViT checkpoints),
`sweep` (a model-free sampler and two cheap metrics for sweep configs) and `tuning` (a tuning problem
whose front is known). They live in the package, not in tests/, because the tests' subprocesses (a
`steerguide sweep` reading `sampler: steerguide.testing.sweep:NoiseSampler`) import them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

ARCHITECTURES = ("sd15", "sdxl", "sd3", "flux", "chroma", "qwen-image", "wan21", "wan22")

_SPECIALS = ["<|startoftext|>", "<|endoftext|>"]
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"


def write_clip_tokenizer(folder: str | Path, max_length: int = 16) -> int:
    """Write a character-level `CLIPTokenizer` to `folder`; returns its vocabulary size."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokens = list(_CHARS) + [c + "</w>" for c in _CHARS] + _SPECIALS
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return len(tokens)


def char_tokenizer(specials: dict[str, str], max_length: int = 16):
    """A character-level fast tokenizer (T5, Gemma and Qwen stand-ins): every character is a token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    names = list(dict.fromkeys(["<pad>", *specials.values(), "<unk>"]))
    vocab = {name: i for i, name in enumerate(names)}
    vocab.update({c: len(vocab) + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz0123456789 ")})
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", model_max_length=max_length, **specials
    )
    return tokenizer, len(vocab)


def _clip_config(vocab_size: int, hidden: int = 32, projection_dim: int = 32, max_length: int = 16):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=max_length,
        projection_dim=projection_dim,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        hidden_act="gelu",
    )


def _vae(scaling_factor: float = 0.18215, **kwargs):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=scaling_factor,
        **kwargs,
    )


SD15_UNET_CONFIG = dict(  # runwayml/stable-diffusion-v1-5 unet/config.json (860 M parameters)
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)


def build_pipeline(
    arch: str = "sd15",
    seed: int = 0,
    unet_channels: tuple[int, ...] = (32, 64),
    full_size_unet: bool = False,
    t5: bool = False,
):
    """A tiny random diffusers text-to-image pipeline of the given architecture (32×32 images).

    `unet_channels` sets the SD 1.5 UNet's widths (one down block per entry, cross-attention in all but
    the last): (64, 128, 128) gives a UNet of about 6 M parameters, for benchmarks. `full_size_unet`
    (SD 1.5 only) puts the real SD 1.5 UNet configuration in, with random weights, beside a one-layer
    768-wide text encoder and the tiny VAE: what the denoiser costs at real size. `t5` (SD3 only) adds a
    one-layer T5 encoder as `text_encoder_3` (its embedding tied, as in T5-XXL), with the character
    tokenizer.
    """
    import tempfile

    from diffusers import (
        DDIMScheduler,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")
    if arch == "flux":
        return build_flux(seed)
    if arch == "chroma":
        return build_chroma(seed)
    if arch == "qwen-image":
        return build_qwen_image(seed)
    if arch in ("wan21", "wan22"):
        return build_wan(seed, two_experts=arch == "wan22")
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_size = write_clip_tokenizer(tmp)
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    scheduler_kwargs = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")

    if arch == "sd15" and full_size_unet:
        config = _clip_config(vocab_size, hidden=768, projection_dim=768)
        config.num_hidden_layers, config.num_attention_heads = 1, 12
        return StableDiffusionPipeline(
            vae=_vae(),
            text_encoder=CLIPTextModel(config),
            tokenizer=tokenizer,
            unet=UNet2DConditionModel(**SD15_UNET_CONFIG),
            scheduler=DDIMScheduler(
                **scheduler_kwargs, clip_sample=False, set_alpha_to_one=False, steps_offset=1
            ),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    if arch == "sd15":
        n = len(unet_channels)
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            block_out_channels=tuple(unet_channels),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        return StableDiffusionPipeline(
            vae=_vae(),
            text_encoder=CLIPTextModel(_clip_config(vocab_size)),
            tokenizer=tokenizer,
            unet=unet,
            scheduler=DDIMScheduler(
                **scheduler_kwargs, clip_sample=False, set_alpha_to_one=False, steps_offset=1
            ),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    if arch == "sdxl":
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(4, 8),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 1),
            projection_class_embeddings_input_dim=6 * 8 + 32,
            cross_attention_dim=64,
            norm_num_groups=8,
        )
        return StableDiffusionXLPipeline(
            vae=_vae(scaling_factor=0.13025),
            text_encoder=CLIPTextModel(_clip_config(vocab_size)),
            text_encoder_2=CLIPTextModelWithProjection(_clip_config(vocab_size)),
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=unet,
            scheduler=DDIMScheduler(
                **scheduler_kwargs, clip_sample=False, set_alpha_to_one=False, steps_offset=1
            ),
            add_watermarker=False,
        )
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,
        caption_projection_dim=32,
        pooled_projection_dim=64,
        pos_embed_max_size=32,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(scaling_factor=1.5035, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=CLIPTextModelWithProjection(_clip_config(vocab_size)),
        tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(vocab_size)),
        tokenizer_2=tokenizer,
        text_encoder_3=_t5(vocab_size) if t5 else None,
        tokenizer_3=tokenizer if t5 else None,
    )


FLUX_DEV_TRANSFORMER = dict(  # black-forest-labs/FLUX.1-dev transformer/config.json (12 B parameters)
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)


def build_flux(seed: int = 0, layers: tuple[int, int] = (1, 1), real_width: bool = False):
    """A tiny random `FluxPipeline` (CLIP and T5 text encoders, guidance embedding, 32×32 images).

    `layers`: the transformer's (double-stream, single-stream) blocks. `real_width` gives the transformer
    FLUX.1-dev's real configuration but for the number of blocks (3072 wide, 24 heads, 4096-wide text,
    16 latent channels; random weights), with one-layer text encoders of the widths it reads: what the
    denoiser costs at real size (benchmarks).
    """
    import tempfile

    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    if real_width:
        config = {**FLUX_DEV_TRANSFORMER, "num_layers": layers[0], "num_single_layers": layers[1]}
    else:
        config = dict(patch_size=1, in_channels=16, num_layers=layers[0], num_single_layers=layers[1],
                      attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                      pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 4, 8))  # fmt: skip
    transformer = FluxTransformer2DModel(**config)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_size = write_clip_tokenizer(tmp)
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    text_width, pooled_width = config["joint_attention_dim"], config["pooled_projection_dim"]
    clip = _clip_config(vocab_size, hidden=pooled_width, projection_dim=pooled_width)
    clip.num_hidden_layers, clip.num_attention_heads = 1, 4
    t5, t5_tokenizer = _char_t5(width=text_width)
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_flux_vae(latent_channels=config["in_channels"] // 4),
        text_encoder=CLIPTextModel(clip),
        tokenizer=tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )


def _char_t5(width: int = 32):
    """A one-layer T5 encoder of `width` channels and its character tokenizer."""
    from transformers import T5Config, T5EncoderModel

    tokenizer, vocab = char_tokenizer({"eos_token": "</s>"})
    config = T5Config(vocab_size=vocab, d_model=width, d_ff=37, d_kv=8, num_layers=1, num_heads=4)
    return T5EncoderModel(config), tokenizer


def _flux_vae(latent_channels: int = 4):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=4, sample_size=32, scaling_factor=0.3611,
        shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
    )  # fmt: skip


def build_chroma(seed: int = 0):
    """A tiny random `ChromaPipeline` (Flux's layout without CLIP and the guidance embedding; T5 only)."""
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(seed)
    transformer = ChromaTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 4, 8), approximator_num_channels=8,
        approximator_hidden_dim=32, approximator_layers=1,
    )  # fmt: skip
    t5, tokenizer = _char_t5()
    return ChromaPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_flux_vae(),
        text_encoder=t5,
        tokenizer=tokenizer,
        transformer=transformer,
    )


def build_qwen_image(seed: int = 0):
    """A tiny random `QwenImagePipeline` (a one-layer Qwen2.5-VL text encoder with the character tokenizer)."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    tokenizer, vocab = char_tokenizer({"eos_token": "<|endoftext|>"}, max_length=1024)
    text = dict(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=2, vocab_size=vocab, eos_token_id=1, pad_token_id=0, bos_token_id=None,
                rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"})  # fmt: skip
    vision = dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16)
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, hidden_size=16, vocab_size=vocab,
                              vision_start_token_id=vocab, vision_end_token_id=vocab + 1,
                              vision_token_id=vocab + 2)  # fmt: skip
    vae = AutoencoderKLQwenImage(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)  # fmt: skip
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=1,
                                              attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                              axes_dims_rope=(8, 4, 4))  # fmt: skip
    return QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=Qwen2_5_VLForConditionalGeneration(config),
        tokenizer=tokenizer,
        transformer=transformer,
    )


def build_wan(seed: int = 0, two_experts: bool = False):
    """A tiny random `WanPipeline` (text to video; frames a multiple of 4 plus 1, sides a multiple of 16).

    `two_experts` builds Wan 2.2's layout: a high-noise `transformer` for timesteps ≥ 875 and a low-noise
    `transformer_2` below (`boundary_ratio=0.875`): of four steps, the first runs on the high-noise expert."""
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    tokenizer, vocab = char_tokenizer({"eos_token": "</s>"})
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=vocab, d_model=32, d_ff=37, d_kv=8, num_layers=1,
                                               num_heads=4))  # fmt: skip

    def transformer():
        return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                     in_channels=16, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32,
                                     num_layers=1, rope_max_seq_len=32)  # fmt: skip

    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                             temperal_downsample=[False, True, True]),  # fmt: skip
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=transformer(),
        transformer_2=transformer() if two_experts else None,
        boundary_ratio=0.875 if two_experts else None,
    )


def _t5(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(vocab_size=vocab_size, d_model=64, d_ff=37, d_kv=16, num_layers=1, num_heads=4)
    )


def save_pipeline(arch: str, folder: str | Path, seed: int = 0, **build_kwargs) -> Path:
    """Build a tiny pipeline and save it as a diffusers folder (safetensors); returns the folder."""
    folder = Path(folder)
    pipe = build_pipeline(arch, seed=seed, **build_kwargs)
    pipe.save_pretrained(folder, safe_serialization=True)
    # Optional components left out (SD3 without T5) are written as [null, null], as the hub's SD3 repos
    # loaded with `text_encoder_3=None` are, so that a plain `from_pretrained(folder)` accepts the folder.
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    expected, _ = type(pipe)._get_signature_keys(pipe)
    for name in expected:
        index.setdefault(name, [None, None])
    index_path.write_text(json.dumps(index, indent=2))
    return folder


def random_lora_state_dict(
    pipe,
    rank: int = 4,
    seed: int = 1,
    std: float = 0.05,
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0"),
    lora_bias: bool = False,
    component: str | None = None,
) -> dict[str, torch.Tensor]:
    """A random LoRA on the denoiser's attention projections, as `save_lora_weights` writes it.

    Both A and B are random (a freshly initialised LoRA has B = 0 and would change nothing), so the tests
    see a real personalization delta. `lora_bias` gives B a bias (peft's `lora_bias=True`); `component`
    names another module of the pipeline than its denoiser (e.g. "text_encoder", with targets such as
    "q_proj").
    """
    import copy

    from peft import LoraConfig, get_peft_model_state_dict

    if component is not None:
        denoiser = getattr(pipe, component)
    else:
        denoiser = (
            pipe.transformer if hasattr(pipe, "transformer") and pipe.transformer is not None else pipe.unet
        )
    denoiser = copy.deepcopy(denoiser)  # leave the caller's model untouched
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(target_modules), lora_bias=lora_bias)
    denoiser.add_adapter(config, adapter_name="random")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in denoiser.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    return get_peft_model_state_dict(denoiser, adapter_name="random")


def save_random_lora(
    pipe,
    folder: str | Path,
    rank: int = 4,
    seed: int = 1,
    text_encoders: tuple[str, ...] = (),
    text_encoder_std: float = 0.3,
    **lora_kwargs,
) -> Path:
    """Save a random denoiser LoRA for `pipe` in the diffusers format; returns the folder.

    `text_encoders` (e.g. ("text_encoder",)) adds a random LoRA on those text encoders' attention too.
    """
    folder = Path(folder)
    state = random_lora_state_dict(pipe, rank=rank, seed=seed, **lora_kwargs)
    key = (
        "transformer_lora_layers"
        if hasattr(pipe, "transformer") and pipe.transformer is not None
        else ("unet_lora_layers")
    )
    layers = {key: state}
    for n, name in enumerate(text_encoders):
        layers[name + "_lora_layers"] = random_lora_state_dict(
            pipe,
            rank=rank,
            seed=seed + 100 + n,
            std=text_encoder_std,
            target_modules=("q_proj", "k_proj", "v_proj"),
            component=name,
        )
    type(pipe).save_lora_weights(folder, **layers, safe_serialization=True)
    return folder
