"""Wan 2.1 and 2.2 text-to-video: CFG as two denoiser calls a step in `cache_context("cond"/"uncond")`, on
whichever expert the step uses (Wan 2.2: the high-noise `transformer` for t ≥ 875, the low-noise
`transformer_2` below).

The references (tests/reference_impl.separate_reference_latents) count the calls of both experts by hand
and route each negative call through the same expert of a second pipeline. With the LoRA on both experts
(`load_into_transformer_2=True`), θ_ω is adapter scale ω on the expert the step calls; a full fine-tune of
the high-noise expert leaves the low-noise one with Δ = 0 (PG there is CFG).
"""

from __future__ import annotations

import pytest
import torch
from reference_impl import cosine, lerp_into, load, lora_pipes, separate_reference_latents

from steerguide.denoiser import guided
from steerguide.guidance import GuidanceConfig
from steerguide.loading import load_personalization, load_pipeline
from steerguide.testing import save_random_lora

PROMPTS = ["a dog on the beach", "a red cat"]
ATOL = 2e-4
CALL = dict(height=32, width=32, num_frames=5, max_sequence_length=16)
EXPERTS = {"wan21": ("transformer",), "wan22": ("transformer", "transformer_2")}


@pytest.fixture(scope="module")
def wan(tiny_model_dir, tmp_path_factory):
    """Per arch: (base, LoRA, full fine-tune of `transformer`). Image 0 of every prompt: seed 5."""
    cache = {}

    def get(arch):
        if arch not in cache:
            base = tiny_model_dir(arch)
            pipe = load_pipeline(base)
            lora = save_random_lora(pipe, tmp_path_factory.mktemp(f"{arch}-lora"), seed=3, std=0.2)
            pipe.load_lora_weights(str(lora))
            pipe.fuse_lora()
            pipe.unload_lora_weights()
            full = tmp_path_factory.mktemp(f"{arch}-full")
            pipe.transformer.save_pretrained(full, safe_serialization=True)
            cache[arch] = (base, lora, full)
        return cache[arch]

    return get


def engine_pipe(arch, base, personalization):
    pipe = load_pipeline(base)
    pipe.set_progress_bar_config(disable=True)
    personal = load_personalization(pipe, personalization)
    if arch == "wan22" and personal.kind == "lora":  # the LoRA on the low-noise expert too
        pipe.load_lora_weights(str(personalization), adapter_name=personal.adapter, load_into_transformer_2=True)
    return pipe, personal


def run(pipe, personal, config, steps=4, negative=None):
    with guided(pipe, personal, config) as wrapper, torch.no_grad():
        out = pipe(prompt=PROMPTS, negative_prompt=negative, guidance_scale=config.scale, num_inference_steps=steps,
                   generator=[torch.Generator().manual_seed(5) for _ in PROMPTS],
                   output_type="latent", **CALL).frames  # fmt: skip
    return out.reshape(len(PROMPTS), 1, *out.shape[1:]), wrapper


def lora_reference(arch, base, lora, method, omega, **kw):
    ft, weak = lora_pipes(base, lora, second_expert=arch == "wan22")
    return separate_reference_latents(ft, weak, method=method, scale=4.0, omega=omega, prompts=PROMPTS,
                                      num_images=1, seed=5, side=32, scale_argument="guidance_scale",
                                      experts=EXPERTS[arch], num_frames=5, max_sequence_length=16, **kw)  # fmt: skip


@pytest.mark.parametrize("arch", ["wan21", "wan22"])
def test_cfg_is_the_stock_pipeline_bit_for_bit(wan, arch):
    base, lora, _ = wan(arch)
    pipe, personal = engine_pipe(arch, base, lora)
    ours, wrapper = run(pipe, personal, GuidanceConfig("cfg", scale=4.0))
    stock = load(base)
    stock.load_lora_weights(str(lora))
    if arch == "wan22":
        stock.load_lora_weights(str(lora), load_into_transformer_2=True)
    with torch.no_grad():
        want = stock(prompt=PROMPTS, guidance_scale=4.0, num_inference_steps=4, output_type="latent",
                     generator=[torch.Generator().manual_seed(5) for _ in PROMPTS], **CALL).frames  # fmt: skip
    torch.testing.assert_close(ours.reshape(want.shape), want, atol=0, rtol=0)
    assert wrapper.counters.denoiser_calls == 8


@pytest.mark.parametrize(
    "arch,method,omega", [("wan21", "pg", 0.0), ("wan21", "pg", 0.3), ("wan21", "pg", 1.0), ("wan21", "ag", 0.3),
                          ("wan22", "pg", 0.3), ("wan22", "ag", 0.3)]
)  # fmt: skip
def test_lora_methods_match_the_reference(wan, arch, method, omega):
    base, lora, _ = wan(arch)
    pipe, personal = engine_pipe(arch, base, lora)
    calls = {name: 0 for name in EXPERTS[arch]}
    for name in EXPERTS[arch]:
        getattr(pipe, name).register_forward_pre_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    ours, wrapper = run(pipe, personal, GuidanceConfig(method, scale=4.0, omega=omega))
    torch.testing.assert_close(ours, lora_reference(arch, base, lora, method, omega), atol=ATOL, rtol=1e-4)
    assert wrapper.counters.denoiser_calls == 8 and wrapper.counters.denoiser_rows == 8 * len(PROMPTS)
    if arch == "wan22":
        assert calls == {"transformer": 2, "transformer_2": 6}  # step 0 on the high-noise expert, 1-3 on the other
    if (method, omega) != ("pg", 1.0):
        cfg, _ = run(pipe, personal, GuidanceConfig("cfg", scale=4.0))
        assert (cfg - ours).abs().max() > 50 * ATOL  # the weak model matters: the test can fail


def test_wan22_full_finetune_of_one_expert_with_a_schedule_and_an_interval(wan):
    from diffusers import WanTransformer3DModel

    base, _, full = wan("wan22")
    pipe, personal = engine_pipe("wan22", base, full)
    # step 0 (the high-noise expert, fine-tuned) and step 1 guided, steps 2 and 3 not
    config = GuidanceConfig("pg", scale=4.0, omega=0.3, omega_schedule="cosine:1.0", interval=(0.0, 0.5))
    ours, wrapper = run(pipe, personal, config, negative="blurry")
    ft, weak = load(base), load(base)
    ft.transformer = WanTransformer3DModel.from_pretrained(full)  # from_pretrained(transformer=...) is ignored here
    pre = {k: v.clone() for k, v in weak.transformer.state_dict().items()}
    fine = {k: v for k, v in ft.transformer.state_dict().items() if not torch.equal(v, pre[k])}
    ref = separate_reference_latents(ft, weak, method="pg", scale=4.0, omega=cosine(0.3, 1.0), prompts=PROMPTS,
                                     num_images=1, seed=5, side=32, interval=(0.0, 0.5), negative="blurry",
                                     adapter=None, full_weak=lerp_into(weak.transformer, pre, fine),
                                     scale_argument="guidance_scale", experts=EXPERTS["wan22"], num_frames=5,
                                     max_sequence_length=16)  # fmt: skip
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-4)
    assert [o is None for o in wrapper.omegas] == [False, False, True, True]
    assert wrapper.counters.denoiser_calls == 4 + 2  # no negative call outside the interval
    cfg, _ = run(pipe, personal, GuidanceConfig("cfg", scale=4.0, interval=(0.0, 0.5)), negative="blurry")
    assert (cfg - ours).abs().max() > 50 * ATOL  # θ_ω on the high-noise step matters: the test can fail


def test_generate_writes_frames_and_an_animation(wan, tiny_model_dir, tmp_path, capsys):
    """`generate --num-frames`: each video's frames as PNGs and one GIF; PG's calls and rows are CFG's."""
    import json

    from PIL import Image

    from steerguide.cli import run as cli

    base, lora, _ = wan("wan21")
    common = ["generate", "--base", str(base), "-p", "a dog", "--steps", "2", "--height", "32", "--width", "32",
              "--num-frames", "5", "--scale", "4", "--personalization", str(lora)]  # fmt: skip
    assert cli([*common, "--method", "cfg", "--out", str(tmp_path / "cfg")]) == 0
    assert cli([*common, "--method", "pg", "--omega", "0.3", "--out", str(tmp_path / "pg")]) == 0
    cfg, pg = (json.loads((tmp_path / n / "run.json").read_text()) for n in ("cfg", "pg"))
    entry = pg["images"][0]
    assert entry["file"].endswith(".gif") and len(entry["frames"]) == 5
    with Image.open(tmp_path / "pg" / entry["file"]) as gif:
        assert gif.n_frames == 5 and gif.size == (32, 32)
    assert all((tmp_path / "pg" / f).is_file() for f in entry["frames"])
    assert cfg["denoiser_calls"] == pg["denoiser_calls"] == 4 and cfg["denoiser_rows"] == pg["denoiser_rows"]
    capsys.readouterr()
    code = cli(["generate", "--base", str(tiny_model_dir("sd15")), "-p", "x", "--steps", "1", "--method", "cfg",
                "--num-frames", "5", "--out", str(tmp_path / "sd")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "makes images, not videos" in err[0], err
