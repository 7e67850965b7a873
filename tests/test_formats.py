"""Every way a personalization arrives gives the same θ_ω: LoRA in diffusers, PEFT and kohya layouts,
full fine-tunes as folders and single files, partial fine-tunes (Custom Diffusion), and text-encoder
personalization, whose null prompt must be encoded by the text encoder at θ_ω."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from steerguide.errors import UserError
from steerguide.guidance import GuidanceConfig
from steerguide.loading import load_personalization, load_pipeline
from steerguide.sampling import sample
from steerguide.testing import random_lora_state_dict

PROMPTS = ["a dog", "a cat"]


def latents(base, personalization, config, steps=3):
    pipe = load_pipeline(base)
    personal = load_personalization(pipe, personalization)
    result = sample(
        pipe,
        personal,
        config,
        PROMPTS,
        num_images=1,
        seed=3,
        steps=steps,
        height=32,
        width=32,
        progress=False,
        output_type="latent",
    )
    return torch.stack([row[0] for row in result.images]), personal


@pytest.fixture(scope="module")
def sd15(tiny_model_dir):
    return tiny_model_dir("sd15")


@pytest.fixture(scope="module")
def lora_state(sd15):
    return random_lora_state_dict(load_pipeline(sd15), seed=5)


def _kohya(state):
    out = {}
    for key, value in state.items():
        module, _, rest = key.partition(".lora_")
        name = "lora_unet_" + module.replace(".", "_")
        if rest.startswith("A"):
            out[name + ".lora_down.weight"] = value
            out[name + ".alpha"] = torch.tensor(float(value.shape[0]))
        else:
            out[name + ".lora_up.weight"] = value
    return out


def test_lora_layouts_agree(sd15, lora_state, tmp_path):
    from diffusers import StableDiffusionPipeline

    diffusers_dir = tmp_path / "diffusers"
    StableDiffusionPipeline.save_lora_weights(diffusers_dir, unet_lora_layers=lora_state)
    peft_dir = tmp_path / "peft"
    peft_dir.mkdir()
    halved = {k: v / 2 if ".lora_B." in k else v for k, v in lora_state.items()}
    save_file(
        {"base_model.model." + k: v for k, v in halved.items()}, str(peft_dir / "adapter_model.safetensors")
    )
    rank = next(iter(lora_state.values())).shape[0]
    (peft_dir / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": 2 * rank}))
    # PEFT scales by alpha / r = 2: the same LoRA with B halved

    kohya = tmp_path / "kohya.safetensors"
    save_file(_kohya(lora_state), str(kohya))
    config = GuidanceConfig("pg", scale=4.0, omega=0.4)
    reference, personal = latents(sd15, diffusers_dir, config)
    assert personal.kind == "lora"
    for other in (diffusers_dir / "pytorch_lora_weights.safetensors", peft_dir, kohya):
        got, personal = latents(sd15, other, config)
        assert personal.kind == "lora"
        torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-5)


def test_lora_with_foreign_keys_is_refused(sd15, lora_state, tmp_path):
    bad = dict(lora_state)
    bad["down_blocks.0.attentions.0.transformer_blocks.7.attn1.to_q.lora_A.weight"] = torch.zeros(4, 32)
    path = tmp_path / "bad.safetensors"
    save_file({"unet." + k: v for k, v in bad.items()}, str(path))
    with pytest.raises(UserError, match="does not fit"):
        load_personalization(load_pipeline(sd15), path)


def _fused_unet_state(sd15, lora_dir):
    pipe = load_pipeline(sd15)
    pipe.load_lora_weights(str(lora_dir))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


def test_single_file_full_finetune_equals_folder(sd15, lora_state, tmp_path):
    from diffusers import StableDiffusionPipeline

    lora_dir = tmp_path / "lora"
    StableDiffusionPipeline.save_lora_weights(lora_dir, unet_lora_layers=lora_state)
    fused = _fused_unet_state(sd15, lora_dir)
    single = tmp_path / "finetune.safetensors"
    save_file({"unet." + k: v.contiguous() for k, v in fused.items()}, str(single))
    config = GuidanceConfig("pg", scale=4.0, omega=0.25)
    from_lora, _ = latents(sd15, lora_dir, config)
    from_file, personal = latents(sd15, single, config)
    assert personal.kind == "full" and personal.info["differing_tensors"] > 0
    torch.testing.assert_close(from_file, from_lora, atol=2e-4, rtol=1e-4)


def _custom_diffusion_state(sd15, seed=0):
    """Random fine-tuned values for the cross-attention k/v projections only (Custom Diffusion)."""
    unet = load_pipeline(sd15).unet
    g = torch.Generator().manual_seed(seed)
    return {
        k: v + 0.05 * torch.randn(v.shape, generator=g)
        for k, v in unet.state_dict().items()
        if "attn2.to_k" in k or "attn2.to_v" in k
    }


def test_custom_diffusion_layouts_and_partial_delta(sd15, tmp_path):
    from steerguide.block import denoiser_of

    state = _custom_diffusion_state(sd15)
    ours = tmp_path / "ours"
    ours.mkdir()
    save_file(state, str(ours / "custom_diffusion.safetensors"))
    pipe = load_pipeline(sd15)
    token_embedding = torch.randn(pipe.text_encoder.get_input_embeddings().weight.shape[1])
    save_file({"<sks>": token_embedding}, str(ours / "learned_embeds.safetensors"))
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    renamed = {
        k.replace(".to_k.", ".processor.to_k_custom_diffusion.").replace(
            ".to_v.", ".processor.to_v_custom_diffusion."
        ): v
        for k, v in state.items()
    }
    save_file(renamed, str(theirs / "pytorch_custom_diffusion_weights.safetensors"))

    config = GuidanceConfig("pg", scale=4.0, omega=0.5)
    a, personal = latents(sd15, ours, config)
    assert personal.kind == "partial" and personal.info["tokens_added"] == ["<sks>"]
    assert personal.info["differing_tensors"] == len(state)
    b, personal_b = latents(sd15, theirs, config)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # The partial delta holds θ_pre of the k/v tensors only, and ω = 0.5 lands half way.
    pipe = load_pipeline(sd15)
    base_state = {k: v.clone() for k, v in denoiser_of(pipe).state_dict().items()}
    personal = load_personalization(pipe, ours)
    weights = personal.denoiser_delta.weights(0.5)
    assert set(weights) == set(state)
    for name, value in weights.items():
        torch.testing.assert_close(value, (base_state[name] + state[name]) / 2)
    # The learned token is usable in a prompt.
    assert "<sks>" in pipe.tokenizer.get_vocab()


def test_identical_finetune_is_refused(sd15, tmp_path):
    unet = load_pipeline(sd15).unet
    path = tmp_path / "same.safetensors"
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(path))
    with pytest.raises(UserError, match="identical to the base model"):
        load_personalization(load_pipeline(sd15), path)


def test_text_encoder_lora_null_prompt_uses_the_text_encoder_at_omega(sd15, lora_state, tmp_path):
    """PG at ω = 0 with a LoRA on the UNet and the text encoder equals a reference whose null half is the
    base model on the null prompt encoded by the base text encoder."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    pipe = load_pipeline(sd15)
    pipe.text_encoder.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj"])
    )
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for name, p in pipe.text_encoder.named_parameters():
            if "lora_" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    te_state = get_peft_model_state_dict(pipe.text_encoder)
    lora_dir = tmp_path / "te-lora"
    StableDiffusionPipeline.save_lora_weights(
        lora_dir, unet_lora_layers=lora_state, text_encoder_lora_layers=te_state
    )

    ours, personal = latents(sd15, lora_dir, GuidanceConfig("pg", scale=4.0, omega=0.0))
    assert personal.info["text_encoder_lora"] == ["text_encoder"]

    # Reference: the personalized pipeline, with its null half replaced by the base model conditioned
    # on the base text encoder's embedding of "".
    ref_pipe = load_pipeline(sd15)
    ref_pipe.load_lora_weights(str(lora_dir))
    base_pipe = load_pipeline(sd15)
    with torch.no_grad():
        null_embeds = base_pipe.encode_prompt([""] * len(PROMPTS), "cpu", 1, False)[0]
    original = ref_pipe.unet.forward

    def forward(sample, timestep, encoder_hidden_states, **kw):
        n = sample.shape[0] // 2
        a = base_pipe.unet(sample[:n], timestep, null_embeds, **kw)[0]
        b = original(sample[n:], timestep, encoder_hidden_states[n:], **kw)[0]
        return (torch.cat([a, b]),)

    ref_pipe.unet.forward = forward
    gens = [torch.Generator().manual_seed(3) for _ in PROMPTS]
    with torch.no_grad():
        ref = ref_pipe(
            PROMPTS,
            num_inference_steps=3,
            guidance_scale=4.0,
            generator=gens,
            height=32,
            width=32,
            output_type="latent",
        ).images
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)
    # Without re-encoding the null prompt the result would differ: the test can fail.
    with torch.no_grad():
        ft_null = ref_pipe.encode_prompt([""] * len(PROMPTS), "cpu", 1, False)[0]
    assert (ft_null - null_embeds).abs().max() > 1e-3


def test_dreambooth_folder_with_text_encoder(sd15, tmp_path):
    """A full pipeline folder whose UNet and text encoder were fine-tuned: both deltas are found."""
    pipe = load_pipeline(sd15)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in list(pipe.unet.parameters())[:6] + list(pipe.text_encoder.parameters())[:4]:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    folder = tmp_path / "db"
    pipe.save_pretrained(folder, safe_serialization=True)
    pg0, personal = latents(sd15, folder, GuidanceConfig("pg", scale=4.0, omega=0.0))
    assert personal.kind == "full" and personal.info["text_encoder_finetuned"] == ["text_encoder"]
    assert personal.info["differing_tensors"] == 6
    pg1, _ = latents(sd15, folder, GuidanceConfig("pg", scale=4.0, omega=1.0))
    cfg, _ = latents(sd15, folder, GuidanceConfig("cfg", scale=4.0))
    torch.testing.assert_close(pg1, cfg, atol=0, rtol=0)
    assert (pg0 - cfg).abs().max() > 1e-4
    assert load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def test_sd3_dreambooth_folder_with_t5(tmp_path, monkeypatch):
    """An SD3 DreamBooth folder that includes T5 (whose state dict lists the tied embedding twice) loads;
    an unchanged T5 is compared tensor by tensor from its files, never instantiated; PG at ω = 0.3 equals
    a reference whose weak pipeline holds lerp(θ_pre, θ_ft, 0.3) in the transformer and in T5."""
    import transformers
    from reference_impl import load, reference_latents

    from steerguide.testing import save_pipeline

    base = save_pipeline("sd3", tmp_path / "base", t5=True)
    pipe = load(base)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in list(pipe.transformer.parameters())[:8]:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    unchanged_t5 = tmp_path / "db-transformer-only"
    pipe.save_pretrained(unchanged_t5, safe_serialization=True)
    with torch.no_grad():
        pipe.text_encoder_3.shared.weight.add_(
            0.3 * torch.randn(pipe.text_encoder_3.shared.weight.shape, generator=g)
        )
    folder = tmp_path / "db"
    pipe.save_pretrained(folder, safe_serialization=True)

    def no_from_pretrained(*args, **kwargs):
        raise AssertionError("a T5 model was instantiated only to be compared")

    first_pipe, ours_pipe = load_pipeline(base), load_pipeline(base)
    with monkeypatch.context() as m:
        m.setattr(transformers.T5EncoderModel, "from_pretrained", no_from_pretrained)
        personal = load_personalization(first_pipe, unchanged_t5)
        assert "text_encoder_3" not in personal.info.get("text_encoder_finetuned", [])
        personal = load_personalization(ours_pipe, folder)
    assert personal.info["text_encoder_finetuned"] == ["text_encoder_3"]
    result = sample(
        ours_pipe,
        personal,
        GuidanceConfig("ag", scale=4.0, omega=0.3),
        PROMPTS,
        num_images=1,
        seed=3,
        steps=3,
        height=32,
        width=32,
        progress=False,
        output_type="latent",
        max_sequence_length=16,
    )
    ours = torch.stack([row[0] for row in result.images])

    ft, weak = load(folder), load(base)
    pre = {
        n: {k: v.clone() for k, v in getattr(weak, n).state_dict().items()}
        for n in ("transformer", "text_encoder_3")
    }
    fine = {n: getattr(ft, n).state_dict() for n in pre}

    def set_weak(omega):
        with torch.no_grad():
            for n in pre:
                own = getattr(weak, n).state_dict(keep_vars=True)
                for k, v in fine[n].items():
                    own[k].data.copy_(torch.lerp(pre[n][k], v, omega))

    ref = reference_latents(
        ft,
        weak,
        method="ag",
        scale=4.0,
        omega=0.3,
        prompts=PROMPTS,
        num_images=1,
        seed=3,
        steps=3,
        adapter=None,
        full_weak=set_weak,
        max_sequence_length=16,
    )
    torch.testing.assert_close(ours, ref[:, 0], atol=2e-4, rtol=1e-4)


def test_custom_diffusion_weak_model_does_not_keep_the_learned_token(sd15, tmp_path):
    """AG's weak model θ_ω includes the token embedding: lerp(absent, learned, ω), the absent token being
    the mean pretrained embedding (as transformers initializes a new token). Reference: diffusers'
    `load_textual_inversion` on two pipelines, the weak one with the row and the k/v tensors interpolated."""
    from reference_impl import load, reference_latents

    state = _custom_diffusion_state(sd15, seed=4)
    folder = tmp_path / "cd"
    folder.mkdir()
    save_file(state, str(folder / "custom_diffusion.safetensors"))
    width = load_pipeline(sd15).text_encoder.get_input_embeddings().weight.shape[1]
    learned = torch.randn(width, generator=torch.Generator().manual_seed(8))
    save_file({"<sks>": learned}, str(folder / "learned_embeds.safetensors"))
    prompts = ["a <sks> dog", "a <sks> on the beach"]
    pipe = load_pipeline(sd15)
    personal = load_personalization(pipe, folder)
    result = sample(
        pipe,
        personal,
        GuidanceConfig("ag", scale=4.0, omega=0.3),
        prompts,
        seed=3,
        steps=3,
        height=32,
        width=32,
        progress=False,
        output_type="latent",
    )
    ours = torch.stack([row[0] for row in result.images])

    ft, weak = load(sd15), load(sd15)
    mean = weak.text_encoder.get_input_embeddings().weight.detach().mean(dim=0)
    for p in (ft, weak):
        p.load_textual_inversion(str(folder / "learned_embeds.safetensors"))
    ft.unet.load_state_dict(state, strict=False)
    pre = {k: weak.unet.state_dict()[k].clone() for k in state}
    token = weak.tokenizer.convert_tokens_to_ids("<sks>")

    def set_weak(omega):
        with torch.no_grad():
            own = weak.unet.state_dict(keep_vars=True)
            for k, v in state.items():
                own[k].data.copy_(torch.lerp(pre[k], v, omega))
            weak.text_encoder.get_input_embeddings().weight[token] = torch.lerp(mean, learned, omega)

    ref = reference_latents(
        ft,
        weak,
        method="ag",
        scale=4.0,
        omega=0.3,
        prompts=prompts,
        num_images=1,
        seed=3,
        steps=3,
        adapter=None,
        full_weak=set_weak,
    )
    torch.testing.assert_close(ours, ref[:, 0], atol=2e-4, rtol=1e-4)
