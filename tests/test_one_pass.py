"""PG and AG on tensor deltas in one denoiser call (`weak.batched`, `ParameterDelta.passes = 1`).

Against a reference from diffusers alone (a second model holding the lerped weights θ_pre + ω·Δ, at
ω = 0.3, w = 4) and against the two-pass path, on the tiny SD 1.5 model: a full fine-tune with every
tensor moved (norms, biases, embeddings: every layer runs on stacked weights) and a partial one (a fused
LoRA: the layers that do not differ see both halves as one batch).
"""

from __future__ import annotations

import pytest
import torch
from reference_impl import lerp_into, load, reference_latents

from steerguide.guidance import GuidanceConfig
from steerguide.loading import load_personalization, load_pipeline
from steerguide.sampling import sample
from steerguide.testing import save_random_lora
from steerguide.weak.delta import AUTO_PASSES

PROMPTS = ["a dog on the beach", "a red cat"]
SIDE = 16
ATOL = 2e-4


@pytest.fixture(scope="module")
def fine_tunes(tiny_model_dir, tmp_path_factory):
    """{"full": every UNet tensor moved, "partial": a fused LoRA on four layer kinds, "sdxl-full": SDXL's
    UNet (its added conditions split with the rows) with every tensor moved}: (base, folder)."""
    folders = {}
    for kind in ("full", "partial", "sdxl-full"):
        base = tiny_model_dir("sdxl" if kind == "sdxl-full" else "sd15")
        lora = save_random_lora(
            load_pipeline(base),
            tmp_path_factory.mktemp("one-pass-lora"),
            seed=12,
            target_modules=("to_out.0", "conv1", "conv2") + (() if kind == "sdxl-full" else ("proj_in",)),
            lora_bias=True,
        )
        pipe = load(base)
        pipe.load_lora_weights(str(lora))
        pipe.fuse_lora()
        pipe.unload_lora_weights()
        if kind != "partial":
            generator = torch.Generator().manual_seed(3)
            with torch.no_grad():
                for p in pipe.unet.parameters():
                    p.add_((0.05 * p.abs().mean() + 1e-3) * torch.randn(p.shape, generator=generator))
        folders[kind] = (base, tmp_path_factory.mktemp(f"one-pass-{kind}"))
        pipe.save_pretrained(folders[kind][1], safe_serialization=True)
    return folders


def _engine(base, folder, config, passes):
    pipe = load_pipeline(base)
    personal = load_personalization(pipe, folder)
    personal.denoiser_delta.passes = passes
    result = sample(
        pipe, personal, config, PROMPTS, num_images=2, seed=5, steps=4, height=SIDE, width=SIDE,
        progress=False, output_type="latent",
    )
    return torch.stack([torch.stack(row) for row in result.images]), result, personal


def _reference(base, folder, method):
    ft, weak = load(folder), load(base)
    pre = {k: v.clone() for k, v in weak.unet.state_dict().items()}
    fine = {k: v for k, v in ft.unet.state_dict().items() if not torch.equal(v, pre[k])}
    latents = reference_latents(
        ft, weak, method=method, scale=4.0, omega=0.3, prompts=PROMPTS, seed=5, side=SIDE, adapter=None,
        full_weak=lerp_into(weak.unet, pre, fine),
    )
    return latents, len(fine), len(pre)


@pytest.mark.parametrize("kind,method", [("full", "pg"), ("partial", "pg"), ("full", "ag"), ("sdxl-full", "pg")])
def test_one_pass_matches_a_second_model_at_the_lerped_weights(fine_tunes, kind, method):
    base, folder = fine_tunes[kind]
    config = GuidanceConfig(method, scale=4.0, omega=0.3)
    ours, result, personal = _engine(base, folder, config, passes=1)
    ref, differing, total = _reference(base, folder, method)
    assert (differing == total) if kind != "partial" else (0 < differing < total / 2)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-4)
    # one call per step over all rows, as CFG (the two-pass path makes two of half the rows)
    assert result.counters.denoiser_calls == 4 and result.counters.denoiser_rows == 4 * 2 * 4
    two, two_result, _ = _engine(base, folder, config, passes=2)
    torch.testing.assert_close(ours, two, atol=ATOL, rtol=1e-4)
    assert two_result.counters.denoiser_calls == 8
    cfg, _, _ = _engine(base, folder, GuidanceConfig("cfg", scale=4.0), passes=1)
    assert (cfg - ref).abs().max() > 50 * ATOL  # the weak model matters at this size: the test can fail
    assert personal.denoiser_delta.held_bytes == sum(  # θ_pre only: the stacked buffer is dropped
        t.numel() * t.element_size() for t in personal.denoiser_delta._pre.values()
    )


def test_stacked_weights_are_the_lerp_and_the_fine_tune_and_follow_omega():
    """[θ_ω; θ_ft] exactly (θ_pre at ω = 0), rewritten in place when ω moves, held bytes counted, dropped
    on release; the module keeps θ_ft throughout."""
    from steerguide.weak.delta import ParameterDelta

    module = torch.nn.Linear(3, 2)
    pre = {"weight": module.weight.detach().clone(), "bias": module.bias.detach().clone() + 1.0}
    with torch.no_grad():
        module.weight.add_(0.5)
    delta = ParameterDelta(module, pre)
    first = delta.stacked(0.3)
    for name, t in (("weight", module.weight), ("bias", module.bias)):
        assert torch.equal(first[name][0], torch.lerp(pre[name], t.detach(), 0.3))
        assert torch.equal(first[name][1], t.detach())
    storage = first["weight"].data_ptr()
    again = delta.stacked(0.0)
    assert again["weight"].data_ptr() == storage and torch.equal(again["weight"][0], pre["weight"])
    assert delta.held_bytes == 3 * (6 + 2) * 4  # θ_pre and the [2, ...] buffer
    delta.release()
    assert delta.held_bytes == (6 + 2) * 4


def test_the_path_is_chosen_per_device():
    from steerguide.weak.delta import ParameterDelta

    module = torch.nn.Linear(2, 2)
    delta = ParameterDelta(module, {"weight": torch.zeros(2, 2)})
    assert delta.passes_on(torch.device("cpu")) == AUTO_PASSES["cpu"] == 2  # measured: docs/results.md
    delta.passes = 1
    assert delta.passes_on(torch.device("cpu")) == 1
    delta.passes = 3
    with pytest.raises(ValueError, match="passes must be 1, 2 or 'auto', got 3"):
        delta.passes_on(torch.device("cpu"))
