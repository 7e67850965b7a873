"""docs/method.md's properties on two more pipelines that batch CFG as [uncond; cond]: Sana and PixArt-Σ.

Tiny random models of the real architectures, built here and saved to disk (their tokenizers are
character-level vocabularies written on the spot, so nothing is downloaded). Sana takes LoRAs
(diffusers' SanaLoraLoaderMixin); PixArt-Σ has no LoRA loader in diffusers, so its personalization here
is a full fine-tune of the transformer (θ_ω by tensor swaps).

PixArt-Σ's pipeline keeps `do_classifier_free_guidance` in a local variable, not as an attribute: the
engine reads the decision where the pipeline hands it to `encode_prompt` (`denoiser.CfgRecorder`). A
pipeline whose CFG decision the engine cannot see is refused for PG/AG in one line (not silent CFG).
"""

from __future__ import annotations

import inspect

import pytest
import torch

from steerguide.block import denoiser_of
from steerguide.denoiser import guided
from steerguide.errors import UserError
from steerguide.guidance import GuidanceConfig
from steerguide.loading import load_personalization, load_pipeline
from steerguide.personalization import Personalization
from steerguide.testing import char_tokenizer

PROMPTS = ["a red star", "a dog"]
STEPS = 3
ATOL = 2e-4
KWARGS = {
    "sana": dict(max_sequence_length=16, complex_human_instruction=None, use_resolution_binning=False),
    "pixart_sigma": dict(max_sequence_length=16, clean_caption=False, use_resolution_binning=False),
}


def build(arch: str):
    torch.manual_seed(0)
    if arch == "sana":
        from diffusers import (
            AutoencoderDC,
            FlowMatchEulerDiscreteScheduler,
            SanaPipeline,
            SanaTransformer2DModel,
        )
        from transformers import Gemma2Config, Gemma2Model

        tokenizer, vocab_size = char_tokenizer({"eos_token": "<eos>", "bos_token": "<bos>"})
        transformer = SanaTransformer2DModel(
            patch_size=1, in_channels=4, out_channels=4, num_layers=2, num_attention_heads=2,
            attention_head_dim=4, num_cross_attention_heads=2, cross_attention_head_dim=4,
            cross_attention_dim=8, caption_channels=8, sample_size=16,
        )  # fmt: skip
        vae = AutoencoderDC(
            in_channels=3, latent_channels=4, attention_head_dim=2,
            encoder_block_types=("ResBlock", "EfficientViTBlock"), decoder_block_types=("ResBlock", "EfficientViTBlock"),
            encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
            encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
            encoder_layers_per_block=(1, 1), decoder_layers_per_block=[1, 1], downsample_block_type="conv",
            upsample_block_type="interpolate", decoder_norm_types="rms_norm", decoder_act_fns="silu",
            scaling_factor=0.41407,
        )  # fmt: skip
        text_encoder = Gemma2Model(
            Gemma2Config(
                head_dim=16, hidden_size=8, intermediate_size=64, max_position_embeddings=64, num_attention_heads=2,
                num_hidden_layers=1, num_key_value_heads=2, vocab_size=vocab_size, attn_implementation="eager",
            )
        )  # fmt: skip
        return SanaPipeline(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        )
    from diffusers import DDIMScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from steerguide.testing import _vae

    tokenizer, vocab_size = char_tokenizer({"eos_token": "</s>"})
    text_encoder = T5EncoderModel(
        T5Config(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4)
    )
    transformer = PixArtTransformer2DModel(
        sample_size=16, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3,
        caption_channels=32, in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, use_additional_conditions=False,
    )  # fmt: skip
    return PixArtSigmaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=_vae(),
        transformer=transformer,
        scheduler=DDIMScheduler(),
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Per arch: (base folder, personalization, the same personalization as a full fine-tune)."""
    from steerguide.testing import save_random_lora

    cache = {}

    def get(arch):
        if arch in cache:
            return cache[arch]
        base = tmp_path_factory.mktemp(f"base-{arch}")
        build(arch).save_pretrained(base, safe_serialization=True)
        full = tmp_path_factory.mktemp(f"full-{arch}")
        pipe = load_pipeline(base)
        if arch == "sana":
            lora = save_random_lora(pipe, tmp_path_factory.mktemp(f"lora-{arch}"), seed=3, std=0.1)
            pipe.load_lora_weights(str(lora))
            pipe.fuse_lora()
            pipe.unload_lora_weights()
        else:  # no LoRA loader for PixArt in diffusers: a random full fine-tune of the transformer
            lora = None
            generator = torch.Generator().manual_seed(5)
            with torch.no_grad():
                for param in pipe.transformer.parameters():
                    param.add_(torch.randn(param.shape, generator=generator) * 0.02)
        pipe.transformer.save_pretrained(full, safe_serialization=True)
        cache[arch] = (base, lora or full, full)
        return cache[arch]

    return get


def run(arch, base, personalization, config):
    pipe = load_pipeline(base)
    pipe.set_progress_bar_config(disable=True)
    personal = load_personalization(pipe, personalization)
    with guided(pipe, personal, config) as wrapper, torch.no_grad():
        out = pipe(
            prompt=PROMPTS,
            guidance_scale=config.scale,
            num_inference_steps=STEPS,
            height=32,
            width=32,
            generator=[torch.Generator().manual_seed(7 + i) for i in range(len(PROMPTS))],
            output_type="latent",
            **KWARGS[arch],
        ).images
    return out, wrapper.counters


def reference_base_null(arch, base, personalization, scale):
    """A CFG loop whose null half runs a separately loaded base model (PG at ω = 0, written independently)."""
    pipe = load_pipeline(base)
    pipe.set_progress_bar_config(disable=True)
    load_personalization(pipe, personalization)
    base_denoiser = denoiser_of(load_pipeline(base))
    denoiser = denoiser_of(pipe)
    names = list(inspect.signature(denoiser.forward).parameters)
    original = denoiser.forward

    def half(value, rows, which):
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == rows:
            return value[: rows // 2] if which == 0 else value[rows // 2 :]
        if isinstance(value, dict):
            return {k: half(v, rows, which) for k, v in value.items()}
        return value

    def forward(*args, **kwargs):
        kwargs.update(dict(zip(names, args, strict=False)))
        rows = kwargs[names[0]].shape[0]
        null = base_denoiser(**{k: half(v, rows, 0) for k, v in kwargs.items()})
        cond = original(**{k: half(v, rows, 1) for k, v in kwargs.items()})
        return (torch.cat([null[0], cond[0]]),)

    denoiser.forward = forward
    with torch.no_grad():
        return pipe(
            prompt=PROMPTS,
            guidance_scale=scale,
            num_inference_steps=STEPS,
            height=32,
            width=32,
            generator=[torch.Generator().manual_seed(7 + i) for i in range(len(PROMPTS))],
            output_type="latent",
            **KWARGS[arch],
        ).images


ARCHS = ["sana", "pixart_sigma"]


@pytest.mark.parametrize("arch", ARCHS)
def test_p1_scale_one_is_the_personalized_prediction(models, arch):
    base, personal, _ = models(arch)
    pg, counters = run(arch, base, personal, GuidanceConfig("pg", scale=1.0, omega=0.3))
    cfg, _ = run(arch, base, personal, GuidanceConfig("cfg", scale=1.0))
    torch.testing.assert_close(pg, cfg, atol=0, rtol=0)
    assert counters.denoiser_rows == STEPS * len(PROMPTS)  # only the prompt half ran


@pytest.mark.parametrize("arch", ARCHS)
def test_p2_pg_at_omega_one_is_cfg(models, arch):
    base, personal, _ = models(arch)
    pg, _ = run(arch, base, personal, GuidanceConfig("pg", scale=5.0, omega=1.0))
    cfg, _ = run(arch, base, personal, GuidanceConfig("cfg", scale=5.0))
    torch.testing.assert_close(pg, cfg, atol=0, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_p3_pg_at_omega_zero_uses_the_base_model_null_prediction(models, arch):
    base, personal, _ = models(arch)
    pg, _ = run(arch, base, personal, GuidanceConfig("pg", scale=5.0, omega=0.0))
    torch.testing.assert_close(pg, reference_base_null(arch, base, personal, 5.0), atol=ATOL, rtol=1e-4)
    cfg, _ = run(arch, base, personal, GuidanceConfig("cfg", scale=5.0))
    assert (pg - cfg).abs().max() > 100 * ATOL  # the personalization matters: the test can fail


def test_p4_p5_lora_and_merged_lora_give_the_same_pg_at_every_omega(models):
    base, lora, full = models("sana")
    for omega in (0.0, 0.3, 0.7):
        config = GuidanceConfig("pg", scale=5.0, omega=omega)
        separate, _ = run("sana", base, lora, config)  # one batched pass, per-row LoRA scales
        merged, _ = run("sana", base, full, config)  # two passes, θ_ω swapped in
        torch.testing.assert_close(separate, merged, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_p6_ag_with_the_model_itself_is_the_personalized_prediction(models, arch):
    base, personal, _ = models(arch)
    ag, _ = run(arch, base, personal, GuidanceConfig("ag", scale=5.0, omega=1.0))
    cond, _ = run(arch, base, personal, GuidanceConfig("cfg", scale=1.0))
    torch.testing.assert_close(ag, cond, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_p7_pg_rows_equal_cfg_rows(models, arch):
    base, personal, full = models(arch)
    for personalization in (personal, full):
        _, pg = run(arch, base, personalization, GuidanceConfig("pg", scale=5.0, omega=0.3))
        _, cfg = run(arch, base, personalization, GuidanceConfig("cfg", scale=5.0))
        assert pg.denoiser_rows == cfg.denoiser_rows == STEPS * 2 * len(PROMPTS)


def test_pixart_denoiser_called_before_encode_prompt_is_one_line(models):
    """Outside a pipeline call the engine has not seen PixArt's CFG decision: refused, not guessed."""
    base, personal, _ = models("pixart_sigma")
    pipe = load_pipeline(base)
    personalization = load_personalization(pipe, personal)
    x = torch.zeros(2, 4, 4, 4)
    with guided(pipe, personalization, GuidanceConfig("pg", scale=5.0, omega=0.3)), torch.no_grad():
        with pytest.raises(UserError, match="called its denoiser before encode_prompt"):
            pipe.transformer(x, encoder_hidden_states=torch.zeros(2, 3, 32), timestep=torch.tensor([1, 1]))
    assert "encode_prompt" not in vars(pipe)  # the recorder is gone with the block


def test_pipeline_whose_cfg_cannot_be_seen_is_refused_for_pg_and_ag():
    class OpaquePipeline:  # batches CFG somewhere the engine cannot see (no attribute, no argument)
        transformer = torch.nn.Linear(2, 2)

        def encode_prompt(self, prompt):
            return prompt

    pipe = OpaquePipeline()
    personalization = Personalization(kind="full")
    for method in ("pg", "ag"):
        with pytest.raises(UserError, match="cannot tell when OpaquePipeline batches CFG") as error:
            with guided(pipe, personalization, GuidanceConfig(method, scale=5.0)):
                pass
        assert "\n" not in str(error.value)
    with guided(pipe, personalization, GuidanceConfig("cfg", scale=5.0)):  # CFG runs the pipeline as it is
        pass
