"""DoRA, LoHa and LoKr personalizations leave the pipeline as diffusers has it: between runs `set_adapters`
weights, `cross_attention_kwargs` scales and `unload_lora_weights` act as on a stock pipeline, and under
guidance θ_ft is what the pipeline computed before (a DoRA stacked before a style LoRA included). The
references are stock pipelines with the adapters put in by diffusers and peft alone."""

from __future__ import annotations

import json

import pytest
import torch
from reference_impl import lerp_into, load, reference_latents
from safetensors.torch import save_file

from steerguide.guidance import GuidanceConfig
from steerguide.loading import load_personalization, load_pipeline
from steerguide.sampling import sample
from steerguide.testing import save_random_lora

PROMPTS = ["a dog on the beach", "a red cat"]
SIDE = 16
ATOL = 2e-4
STEPS = 2  # a wrong θ_ft or θ_ω shows from the first step on
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
KIND_NAMES = {"dora": "DoRA", "loha": "LoHa", "lokr": "LoKr"}


def _config(kind):
    from peft import LoHaConfig, LoKrConfig, LoraConfig, OFTConfig

    return {
        "oft": OFTConfig(r=0, oft_block_size=4, target_modules=TARGETS),
        "dora": LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS, use_dora=True),
        "loha": LoHaConfig(r=4, alpha=4, target_modules=TARGETS),
        "lokr": LoKrConfig(r=4, alpha=4, target_modules=TARGETS),
    }[kind]


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    """sd15 base; per kind, a random peft adapter folder (PEFT layout) and its state dict; a style LoRA."""
    from peft import get_peft_model_state_dict, inject_adapter_in_model

    base = tiny_model_dir("sd15")
    out = {}
    for kind in ("dora", "loha", "lokr", "oft"):
        unet = load(base).unet
        inject_adapter_in_model(_config(kind), unet, adapter_name="default")
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for name, p in unet.named_parameters():
                if ".default" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if "magnitude" in name else 0.0))
        state = get_peft_model_state_dict(unet, adapter_name="default")
        folder = tmp_path_factory.mktemp(f"state-{kind}")
        save_file({"base_model.model." + k: v.contiguous() for k, v in state.items()},
                  str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text(json.dumps(_config(kind).to_dict(), default=list))
        out[kind] = (folder, state)
    style = save_random_lora(load_pipeline(base), tmp_path_factory.mktemp("state-style"), seed=8, std=0.1,
                             target_modules=tuple(TARGETS))
    return base, out, style


def stock(base, kind, state, style=None):
    """A diffusers pipeline with the adapter added by diffusers (`add_adapter`) and filled by peft."""
    from peft import set_peft_model_state_dict

    pipe = load(base)
    pipe.unet.add_adapter(_config(kind), adapter_name="personal")
    set_peft_model_state_dict(pipe.unet, state, adapter_name="personal")
    if style is not None:
        pipe.load_lora_weights(str(style), adapter_name="style")
        pipe.set_adapters(["personal", "style"], [1.0, 1.0])
    return pipe


def latents(pipe, **kw):
    with torch.no_grad():
        return pipe(prompt=[p for p in PROMPTS for _ in range(2)], num_inference_steps=STEPS, guidance_scale=4.0,
                    generator=[torch.Generator().manual_seed(5 + i) for _ in PROMPTS for i in range(2)],
                    height=SIDE, width=SIDE, output_type="latent", **kw).images


def pg(pipe, personal, omega):
    result = sample(pipe, personal, GuidanceConfig("pg", scale=4.0, omega=omega), PROMPTS, num_images=2,
                    seed=5, steps=STEPS, height=SIDE, width=SIDE, progress=False, output_type="latent")
    return torch.cat([torch.stack(row) for row in result.images])


@pytest.mark.parametrize("kind", ["dora", "loha", "lokr"])
def test_between_runs_the_pipeline_is_what_diffusers_has(adapters, kind):
    base, found, _ = adapters
    folder, state = found[kind]
    ours = load_pipeline(base)
    ours.set_progress_bar_config(disable=True)
    personal = load_personalization(ours, folder)
    how = personal.info["realization"]
    assert how.startswith(f"weight space ({KIND_NAMES[kind]}") and "unmerged" in how
    pg(ours, personal, 0.3)  # a guided run first: it must leave nothing behind
    reference = stock(base, kind, state)
    torch.testing.assert_close(latents(ours), latents(reference), atol=1e-5, rtol=1e-5)
    for pipe in (ours, reference):
        pipe.set_adapters(["personal"], [0.5])
    torch.testing.assert_close(latents(ours), latents(reference), atol=1e-5, rtol=1e-5)
    for pipe in (ours, reference):
        pipe.set_adapters(["personal"], [1.0])
    scaled = {"cross_attention_kwargs": {"scale": 0.8}}
    torch.testing.assert_close(latents(ours, **scaled), latents(reference, **scaled), atol=1e-5, rtol=1e-5)
    assert (latents(reference, **scaled) - latents(reference)).abs().max() > 1e-3  # the scale matters
    ours.unload_lora_weights()
    torch.testing.assert_close(latents(ours), latents(load(base)), atol=1e-5, rtol=1e-5)


def _effective_weights(base, kind, state, style, weights, active):
    """The UNet's weights with the `active` adapters merged by peft in that order (what the unmerged
    layers compute when they run in that order), by their plain names."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    pipe = stock(base, kind, state, style)
    pipe.set_adapters(["personal", "style"], weights)
    for m in pipe.unet.modules():
        if isinstance(m, BaseTunerLayer):
            m.merge(adapter_names=[a for a in active if a in m.active_adapters])
    return {n.replace(".base_layer", ""): p.detach().clone() for n, p in pipe.unet.named_parameters()
            if "personal" not in n and "style" not in n}


def test_dora_stacked_before_a_style_lora_keeps_theta_ft(adapters):
    """Active order ["personal", "style"] (peft's DoRA then normalizes the base output alone), style at 0.3."""
    style_weight = 0.3
    base, found, style = adapters
    folder, state = found["dora"]
    ours = load_pipeline(base)
    ours.set_progress_bar_config(disable=True)
    personal = load_personalization(ours, folder)
    ours.load_lora_weights(str(style), adapter_name="style")
    ours.set_adapters(["personal", "style"], [1.0, style_weight])
    ft = stock(base, "dora", state, style)
    ft.set_adapters(["personal", "style"], [1.0, style_weight])
    cfg = latents(ft)
    # PG at ω = 1 is the stock pipeline's CFG, and CFG after guiding is still it
    torch.testing.assert_close(pg(ours, personal, 1.0), cfg, atol=1e-5, rtol=1e-5)
    ours_pg = pg(ours, personal, 0.3)
    torch.testing.assert_close(latents(ours), cfg, atol=1e-5, rtol=1e-5)
    fine = _effective_weights(base, "dora", state, style, [1.0, style_weight], ["personal", "style"])
    pre = _effective_weights(base, "dora", state, style, [1.0, style_weight], ["style"])
    weak = load(base)
    ref = reference_latents(ft, weak, method="pg", scale=4.0, omega=0.3, prompts=PROMPTS, seed=5, side=SIDE,
                            steps=STEPS, adapter=None, full_weak=lerp_into(weak.unet, pre, fine))
    torch.testing.assert_close(ours_pg, ref.reshape(ours_pg.shape), atol=ATOL, rtol=1e-4)
    assert (ours_pg - cfg).abs().max() > 50 * ATOL  # ω matters here


def test_an_adapter_type_merged_for_a_run_is_unmerged_after_it(adapters):
    """OFT is not additive: merged for the run (weight space), then unmerged, CFG as stock again."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    base, found, _ = adapters
    folder, state = found["oft"]
    ours = load_pipeline(base)
    ours.set_progress_bar_config(disable=True)
    personal = load_personalization(ours, folder)
    reference = stock(base, "oft", state)
    layers = [m for m in ours.unet.modules() if isinstance(m, BaseTunerLayer)]
    assert layers and not any(m.merged for m in layers)
    ours_pg = pg(ours, personal, 0.3)
    assert personal.info["realization"] == "weight space (OFT adapter)"
    assert not any(m.merged for m in layers)
    cfg = latents(reference)
    torch.testing.assert_close(latents(ours), cfg, atol=1e-5, rtol=1e-5)
    assert (ours_pg - cfg).abs().max() > 50 * ATOL  # the run was guided
