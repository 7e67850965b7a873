"""The cases a real user meets, each against a reference from diffusers and peft alone: fused and stacked
LoRAs, DoRA and LyCORIS adapters, nested/overlapping/threaded `guided` blocks, SD3 skip-layer guidance,
switching personalizations, θ_ω memory, ω per step, and bad Custom Diffusion files."""

from __future__ import annotations

import contextlib
import json
import threading
import weakref

import pytest
import torch
from reference_impl import denoiser, lerp_into, load, reference_latents
from safetensors.torch import save_file

from steerguide.denoiser import guided
from steerguide.errors import UserError
from steerguide.guidance import GuidanceConfig
from steerguide.loading import load_personalization, load_pipeline
from steerguide.sampling import sample
from steerguide.testing import save_random_lora

PROMPTS = ["a dog on the beach", "a red cat"]
ATOL = 2e-4
# 16×16 images (8×8 latents): a wrong weak model, condition, step or interval edge changes every latent
# position alike, so the size adds nothing to what these comparisons pin; SD 1.5 samples in 0.24 s, not 0.60.
SIDE = 16
PG = GuidanceConfig("pg", scale=4.0, omega=0.3)


def run(pipe, personal, config=PG, steps=4, **kw):
    result = sample(
        pipe,
        personal,
        config,
        PROMPTS,
        num_images=2,
        seed=5,
        steps=steps,
        height=SIDE,
        width=SIDE,
        progress=False,
        output_type="latent",
        **kw,
    )
    return torch.stack([torch.stack(row) for row in result.images]), result


@pytest.fixture(scope="module")
def sd15(tiny_model_dir, tmp_path_factory):
    base = tiny_model_dir("sd15")
    pipe = load_pipeline(base)
    personal = save_random_lora(
        pipe, tmp_path_factory.mktemp("personal"), seed=21, text_encoders=("text_encoder",)
    )
    style = save_random_lora(
        pipe, tmp_path_factory.mktemp("style"), seed=22, target_modules=("to_q", "to_v", "conv1")
    )
    return base, personal, style


def two_pipeline_reference(base, personal, style=None, style_weight=1.0, method="pg", omega=0.3, **kw):
    ft, weak = load(base), load(base)
    others = {}
    for pipe in (ft, weak):
        pipe.load_lora_weights(str(personal), adapter_name="p")
        if style is not None:
            pipe.load_lora_weights(str(style), adapter_name="style")
            pipe.set_adapters(["p", "style"], [1.0, style_weight])
            others = {"style": style_weight}
    return reference_latents(
        ft, weak, method=method, scale=4.0, omega=omega, prompts=PROMPTS, seed=5, other_adapters=others,
        side=SIDE, **kw
    )


# -- LoRAs as people stack and fuse them -------------------------------------------------------------


def test_fused_lora_is_guided_in_weight_space(sd15):
    base, personal, _ = sd15
    pipe = load_pipeline(base)
    pers = load_personalization(pipe, personal)
    pipe.fuse_lora()
    ours, result = run(pipe, pers)
    assert pers.info["realization"].startswith("weight space")
    assert result.counters.denoiser_calls == 2 * 4 and result.counters.denoiser_rows == 4 * 2 * 4
    ref = two_pipeline_reference(base, personal)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-4)
    # CFG on the fused pipeline is still the fused model's CFG, and the block left the pipeline fused
    pipe.unfuse_lora()
    again, _ = run(pipe, pers)  # back to per-row scales once unfused
    assert pers.info["realization"] == "row-scaled LoRA"
    torch.testing.assert_close(again, ref, atol=ATOL, rtol=1e-4)


def test_style_lora_loaded_after_is_part_of_the_pretrained_model(sd15):
    base, personal, style = sd15
    pipe = load_pipeline(base)
    pers = load_personalization(pipe, personal)
    pipe.load_lora_weights(str(style), adapter_name="style")  # diffusers now activates "style" only
    with pytest.raises(UserError, match="'personal' is not active"):
        run(pipe, pers)
    pipe.set_adapters(["personal", "style"], [1.0, 0.7])
    ours, _ = run(pipe, pers)
    ref = two_pipeline_reference(base, personal, style, style_weight=0.7)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-4)
    no_style = two_pipeline_reference(base, personal)
    assert (ours - no_style).abs().max() > 50 * ATOL  # the style LoRA matters: the test can fail


def test_style_lora_loaded_before_and_named_personalization(sd15):
    base, personal, style = sd15
    pipe = load_pipeline(base)
    pipe.load_lora_weights(str(style), adapter_name="style")
    pers = load_personalization(pipe, personal, adapter_name="dog")  # no longer refused
    assert pers.adapter == "dog" and pers.info["other_adapters"] == ["style"]
    ours, _ = run(pipe, pers)
    ref = two_pipeline_reference(base, personal, style, style_weight=1.0)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-4)
    # An adapter already on the pipeline can be named as the personalization.
    pipe2 = load_pipeline(base)
    pipe2.load_lora_weights(str(personal), adapter_name="dog")
    pipe2.load_lora_weights(str(style), adapter_name="style")
    pipe2.set_adapters(["dog", "style"], [1.0, 1.0])
    pers2 = load_personalization(pipe2, None, adapter_name="dog")
    adopted, _ = run(pipe2, pers2)
    torch.testing.assert_close(adopted, ref, atol=ATOL, rtol=1e-4)
    with pytest.raises(UserError, match="no adapter named 'cat'"):
        load_personalization(pipe2, None, adapter_name="cat")


def _peft_adapter_folder(base, folder, config, seed=3, std=0.05):
    """A random peft adapter of any type on the UNet, saved in PEFT's own layout; and θ_ft with it merged."""
    from peft import get_peft_model_state_dict, inject_adapter_in_model

    unet = load(base).unet
    inject_adapter_in_model(config, unet, adapter_name="default")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if ".default" in name or name.endswith(".default"):
                p.copy_(torch.randn(p.shape, generator=g) * std + (1.0 if "magnitude" in name else 0.0))
    state = get_peft_model_state_dict(unet, adapter_name="default")
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {"base_model.model." + k: v.contiguous() for k, v in state.items()},
        str(folder / "adapter_model.safetensors"),
    )
    (folder / "adapter_config.json").write_text(json.dumps(config.to_dict(), default=list))
    from peft.tuners.tuners_utils import BaseTunerLayer

    for m in unet.modules():
        if isinstance(m, BaseTunerLayer):
            m.merge()
    names = {
        n.replace(".base_layer", ""): p.detach().clone()
        for n, p in unet.named_parameters()
        if "default" not in n
    }
    return folder, names


@pytest.mark.parametrize("kind", ["dora", "loha", "lokr"])
def test_dora_and_lycoris_adapters_go_through_weight_space(sd15, tmp_path, kind):
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    base, _, _ = sd15
    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    config = {
        "dora": LoraConfig(r=4, lora_alpha=4, target_modules=targets, use_dora=True),
        "loha": LoHaConfig(r=4, alpha=4, target_modules=targets),
        "lokr": LoKrConfig(r=4, alpha=4, target_modules=targets),
    }[kind]
    folder, fine = _peft_adapter_folder(base, tmp_path / kind, config)
    pipe = load_pipeline(base)
    pers = load_personalization(pipe, folder)
    assert pers.kind == "lora" and pers.info["realization"].startswith("weight space")
    ours, result = run(pipe, pers)
    assert result.counters.denoiser_calls == 2 * 4
    ft, weak = load(base), load(base)
    pre = {k: v.clone() for k, v in weak.unet.state_dict().items()}
    fine = {k: v for k, v in fine.items() if not torch.equal(v, pre[k])}
    assert fine  # the adapter changed weights
    ft.unet.load_state_dict({**pre, **fine})
    ref = reference_latents(
        ft,
        weak,
        method="pg",
        scale=4.0,
        omega=0.3,
        prompts=PROMPTS,
        seed=5,
        side=SIDE,
        adapter=None,
        full_weak=lerp_into(weak.unet, pre, fine),
    )
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-4)


def test_lora_that_cannot_be_placed_is_one_line(sd15, tmp_path):
    base, _, _ = sd15
    folder = tmp_path / "bad"
    folder.mkdir()
    save_file(
        {"base_model.model.no_such_block.to_q.hada_w1_a": torch.zeros(4, 4)},
        str(folder / "adapter_model.safetensors"),
    )
    (folder / "adapter_config.json").write_text(
        '{"peft_type": "LOHA", "r": 4, "alpha": 4, "target_modules": ["no_such_block"]}'
    )
    with pytest.raises(UserError) as err:
        load_personalization(load_pipeline(base), folder)
    assert "\n" not in str(err.value)


# -- guided(): re-entrant, overlapping, threaded -----------------------------------------------------


def test_guided_blocks_nest_overlap_and_exit_in_any_order(sd15):
    base, personal, _ = sd15
    pipe = load_pipeline(base)
    pers = load_personalization(pipe, personal)
    want_pg, _ = run(pipe, pers)
    want_cfg, _ = run(pipe, pers, GuidanceConfig("cfg", scale=4.0))
    # sample() inside a user's block: the inner guidance guides
    with guided(pipe, pers, GuidanceConfig("cfg", scale=4.0)):
        inner, _ = run(pipe, pers)
    torch.testing.assert_close(inner, want_pg, atol=0, rtol=0)
    # blocks that exit out of order leave nothing installed
    stack_a, stack_b = contextlib.ExitStack(), contextlib.ExitStack()
    stack_a.enter_context(guided(pipe, pers, PG))
    stack_b.enter_context(guided(pipe, pers, GuidanceConfig("ag", scale=4.0)))
    stack_a.close()
    assert "forward" in vars(pipe.unet)  # b still guides
    stack_b.close()
    assert "forward" not in vars(pipe.unet)
    plain = pipe(
        prompt=[p for p in PROMPTS for _ in range(2)],
        num_inference_steps=4,
        guidance_scale=4.0,
        generator=[torch.Generator().manual_seed(5 + i) for _ in PROMPTS for i in range(2)],
        height=SIDE,
        width=SIDE,
        output_type="latent",
    ).images
    torch.testing.assert_close(plain.reshape(want_cfg.shape), want_cfg, atol=1e-4, rtol=1e-4)
    again, _ = run(pipe, pers)
    torch.testing.assert_close(again, want_pg, atol=0, rtol=0)


def test_threads_on_pipelines_sharing_components(sd15):
    from diffusers import StableDiffusionPipeline

    base, personal, _ = sd15
    pipe = load_pipeline(base)
    pers = load_personalization(pipe, personal)
    twin = StableDiffusionPipeline(
        **{**pipe.components, "scheduler": type(pipe.scheduler).from_config(pipe.scheduler.config)}
    )
    want_pg, _ = run(pipe, pers)
    want_cfg, _ = run(twin, pers, GuidanceConfig("cfg", scale=4.0))
    got = {}

    def job(key, p, config):
        for _ in range(2):
            got[key] = run(p, pers, config)[0]

    threads = [
        threading.Thread(target=job, args=("pg", pipe, PG)),
        threading.Thread(target=job, args=("cfg", twin, GuidanceConfig("cfg", scale=4.0))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.testing.assert_close(got["pg"], want_pg, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["cfg"], want_cfg, atol=1e-5, rtol=1e-5)
    assert "forward" not in vars(pipe.unet)
    # The twin's prompts are not recorded for re-encoding with the text encoder at θ_ω: refused, not wrong.
    with pytest.raises(UserError, match="guide the pipeline it was loaded on"):
        run(twin, pers)


# -- SD3 skip-layer guidance ---------------------------------------------------------------------------


def test_sd3_skip_layer_guidance_with_an_even_prompt_batch(tiny_model_dir, tmp_path):
    base = tiny_model_dir("sd3")
    lora = save_random_lora(load_pipeline(base), tmp_path / "lora", seed=4)
    slg = dict(skip_guidance_layers=[0], skip_layer_guidance_start=0.0, skip_layer_guidance_stop=1.0)
    pipe = load_pipeline(base)
    ours, _ = run(pipe, load_personalization(pipe, lora), **slg)
    ref = two_pipeline_reference(base, lora, **slg)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-4)


# -- switching personalizations ----------------------------------------------------------------------


def test_second_personalization_is_guided_from_the_true_pretrained_model(sd15, tmp_path):
    base, personal, style = sd15
    full = tmp_path / "full"
    pipe = load(base)
    pipe.load_lora_weights(str(style))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    pipe.save_pretrained(full, safe_serialization=True)
    fresh = load_pipeline(base)
    want_lora, _ = run(fresh, load_personalization(fresh, personal))
    fresh = load_pipeline(base)
    want_full, _ = run(fresh, load_personalization(fresh, full))

    pipe = load_pipeline(base)
    load_personalization(pipe, full)
    got_lora, _ = run(pipe, load_personalization(pipe, personal))  # LoRA after full
    torch.testing.assert_close(got_lora, want_lora, atol=ATOL, rtol=1e-4)
    got_full, _ = run(pipe, load_personalization(pipe, full))  # full after LoRA
    torch.testing.assert_close(got_full, want_full, atol=ATOL, rtol=1e-4)
    got_full2, _ = run(pipe, load_personalization(pipe, full))  # full after full
    torch.testing.assert_close(got_full2, want_full, atol=ATOL, rtol=1e-4)


# -- θ_ω memory and ω per step ------------------------------------------------------------------------


def test_theta_omega_is_built_after_the_old_one_is_freed_and_dropped_after_sampling(
    sd15, tmp_path, monkeypatch
):
    import steerguide.weak.delta as delta_module

    base, personal, _ = sd15
    full = tmp_path / "full"
    pipe = load(base)
    pipe.load_lora_weights(str(personal))
    pipe.fuse_lora(components=["unet"])
    pipe.unload_lora_weights()
    pipe.save_pretrained(full, safe_serialization=True)
    pipe = load_pipeline(base)
    pers = load_personalization(pipe, full)
    built: list[weakref.ref] = []
    alive_when_building: list[int] = []
    real_lerp = torch.lerp

    class Torch:
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def lerp(a, b, w):
            alive_when_building.append(sum(r() is not None for r in built))
            out = real_lerp(a, b, w)
            built.append(weakref.ref(out))
            return out

    monkeypatch.setattr(delta_module, "torch", Torch())
    _, result = run(
        pipe, pers, GuidanceConfig("pg", scale=4.0, omega=0.1, omega_schedule="linear:0.9"), batch_size=2
    )
    n = len(pers.denoiser_delta.names)
    assert len(built) == 2 * 4 * n  # θ_ω built once per step of each of the 2 batches
    assert max(alive_when_building) < n  # the previous θ_ω was freed before the next was built
    assert pers.denoiser_delta._cache is None and all(
        r() is None for r in built
    )  # nothing held after sampling
    assert result.omegas == pytest.approx([0.1, 0.3, 0.5, 0.7])
    assert [s["step"] for s in result.steps] == [0, 1, 2, 3]


def test_custom_diffusion_file_with_an_extra_key_names_that_key(sd15, tmp_path):
    base, _, _ = sd15
    unet = load_pipeline(base).unet
    state = {k: v.clone() + 0.01 for k, v in unet.state_dict().items() if "attn2.to_k" in k}
    state["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k_extra.weight"] = torch.zeros(2, 2)
    path = tmp_path / "cd.safetensors"
    save_file(state, str(path))
    with pytest.raises(UserError, match="to_k_extra.weight") as err:
        load_personalization(load_pipeline(base), path)
    assert "conv_in" not in str(err.value)


def test_denoiser_forward_is_restored_even_when_sampling_fails(sd15):
    base, personal, _ = sd15
    pipe = load_pipeline(base)
    pers = load_personalization(pipe, personal)
    with pytest.raises(UserError):
        run(pipe, pers, steps=0)
    with pytest.raises(RuntimeError):
        with guided(pipe, pers, PG):
            raise RuntimeError("user code fails inside the block")
    assert "forward" not in vars(denoiser(pipe))
