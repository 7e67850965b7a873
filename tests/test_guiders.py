"""PG and AG as diffusers guiders on diffusers' modular SDXL and SD3 pipelines, against steerguide's wrapper.

The reference is `steerguide.guided` on the stock pipeline (one batched pass, per-row LoRA scales); the
guider runs on diffusers' modular pipeline (two passes a step, θ_ω switched on around the second). The
two must give the same latents to float tolerance, for PG at ω ∈ {0, 0.5, 1}, a schedule, a guidance
interval, AG, a negative prompt, a full fine-tune, and a LoRA loaded by diffusers itself.
"""

from __future__ import annotations

import json

import pytest
import torch

from steerguide.block import denoiser_of
from steerguide.denoiser import guided
from steerguide.errors import UserError
from steerguide.guidance import GuidanceConfig
from steerguide.guiders import PersonalizationGuidance, PersonalizedAutoGuidance, modular_pipeline
from steerguide.loading import load_personalization, load_pipeline
from steerguide.testing import save_random_lora

ARCHS = ["sdxl", "sd3"]
PROMPTS = ["a red star", "a dog on the beach"]
STEPS = 5  # start/stop 0.2/0.8 fall on whole steps, where diffusers' and steerguide's intervals agree
ATOL = 1e-4
SCALE = 5.0
# 16×16 images (8×8 latents): guider and wrapper agree, or differ, at every latent position alike, so the
# size adds nothing to these comparisons; SDXL samples in 0.23 s instead of 0.36.
SIDE = 16


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    """Per (arch, kind): a stock pipeline with the personalization, its modular twin, and the personalization."""
    cache = {}

    def get(arch, kind="lora"):
        if (arch, kind) not in cache:
            base = tiny_model_dir(arch)
            if ("lora-path", arch) not in cache:
                cache["lora-path", arch] = save_random_lora(
                    load_pipeline(base), tmp_path_factory.mktemp(f"g-lora-{arch}"), seed=5, std=0.1
                )
            lora = cache["lora-path", arch]
            path = lora
            if kind == "full":  # the same LoRA fused into the weights and saved as a full fine-tune
                pipe = load_pipeline(base)
                pipe.load_lora_weights(str(lora))
                pipe.fuse_lora()
                pipe.unload_lora_weights()
                path = tmp_path_factory.mktemp(f"g-full-{arch}")
                pipe.save_pretrained(path, safe_serialization=True)
                (path / "model_index.json").write_text((base / "model_index.json").read_text())
            pipe = load_pipeline(base)
            pipe.set_progress_bar_config(disable=True)
            personal = load_personalization(pipe, path)
            modular = modular_pipeline(pipe)
            modular.set_progress_bar_config(disable=True)
            cache[arch, kind] = (pipe, modular, personal)
        return cache[arch, kind]

    return get


def generators():
    return [torch.Generator().manual_seed(11 + i) for i in range(len(PROMPTS))]


def wrapper_latents(pipe, personal, config, negative=""):
    extra = {"guidance_rescale": config.guidance_rescale} if config.guidance_rescale else {}
    with guided(pipe, personal, config), torch.no_grad():
        return pipe(
            prompt=PROMPTS,
            negative_prompt=[negative] * len(PROMPTS),
            guidance_scale=config.scale,
            **extra,
            num_inference_steps=STEPS,
            height=SIDE,
            width=SIDE,
            generator=generators(),
            output_type="latent",
        ).images


def guider_latents(modular, guider, negative=""):
    modular.update_components(guider=guider)
    return modular(
        prompt=PROMPTS,
        negative_prompt=[negative] * len(PROMPTS),
        num_inference_steps=STEPS,
        height=SIDE,
        width=SIDE,
        generator=generators(),
        output="latents",
    )


CASES = {
    "pg-omega0": (dict(method="pg", omega=0.0), dict(omega=0.0)),
    "pg-omega0.5": (dict(method="pg", omega=0.5), dict(omega=0.5)),
    "pg-omega1": (dict(method="pg", omega=1.0), dict(omega=1.0)),
    "pg-linear": (
        dict(method="pg", omega=0.2, omega_schedule="linear:1.0"),
        dict(omega=0.2, omega_schedule="linear:1.0"),
    ),
    "pg-piecewise": (
        dict(method="pg", omega=0.0, omega_schedule="piecewise:0.4=0.7"),
        dict(omega=0.0, omega_schedule="piecewise:0.4=0.7"),
    ),
    "pg-interval": (dict(method="pg", omega=0.3, interval=(0.2, 0.8)), dict(omega=0.3, start=0.2, stop=0.8)),
    "ag-omega0": (dict(method="ag", omega=0.0), dict(omega=0.0)),
    "ag-omega0.5": (dict(method="ag", omega=0.5), dict(omega=0.5)),
}


_CFG: dict = {}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("case", list(CASES))
def test_guider_matches_the_wrapper(setup, arch, case):
    pipe, modular, personal = setup(arch)
    wrapper_kw, guider_kw = CASES[case]
    config = GuidanceConfig(scale=SCALE, **wrapper_kw)
    cls = PersonalizationGuidance if config.method == "pg" else PersonalizedAutoGuidance
    got = guider_latents(modular, cls(guidance_scale=SCALE, personalization=personal, **guider_kw))
    want = wrapper_latents(pipe, personal, config)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)
    if case != "pg-omega1":  # ω matters here: a guider that ignored it (i.e. ran CFG) would fail
        if arch not in _CFG:
            _CFG[arch] = wrapper_latents(pipe, personal, GuidanceConfig("cfg", scale=SCALE))
        assert (got - _CFG[arch]).abs().max() > 100 * ATOL


@pytest.mark.parametrize("arch", ARCHS)
def test_pg_at_omega_one_is_diffusers_cfg_guider(setup, arch):
    from diffusers.guiders import ClassifierFreeGuidance

    _, modular, personal = setup(arch)
    # start·N = 1.5 is not a whole step: the guider keeps diffusers' meaning of start/stop.
    pg = guider_latents(
        modular, PersonalizationGuidance(guidance_scale=SCALE, omega=1.0, start=0.3, personalization=personal)
    )
    cfg = guider_latents(modular, ClassifierFreeGuidance(guidance_scale=SCALE, start=0.3))
    torch.testing.assert_close(pg, cfg, atol=0, rtol=0)
    pg_half = guider_latents(
        modular, PersonalizationGuidance(guidance_scale=SCALE, omega=0.5, start=0.3, personalization=personal)
    )
    assert (pg_half - cfg).abs().max() > 100 * ATOL


def test_negative_prompt_and_guidance_rescale(setup):
    pipe, modular, personal = setup("sdxl")
    config = GuidanceConfig("pg", scale=SCALE, omega=0.3, guidance_rescale=0.5)
    guider = PersonalizationGuidance(
        guidance_scale=SCALE, omega=0.3, guidance_rescale=0.5, personalization=personal
    )
    got = guider_latents(modular, guider, negative="blue")
    want = wrapper_latents(pipe, personal, config, negative="blue")
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)


def test_full_fine_tune_matches_the_wrapper_and_the_lora(setup):
    pipe, modular, personal = setup("sdxl", "full")
    assert personal.kind == "full"
    config = GuidanceConfig("pg", scale=SCALE, omega=0.3)
    got = guider_latents(
        modular, PersonalizationGuidance(guidance_scale=SCALE, omega=0.3, personalization=personal)
    )
    torch.testing.assert_close(got, wrapper_latents(pipe, personal, config), atol=ATOL, rtol=1e-4)
    _, lora_modular, lora_personal = setup("sdxl", "lora")
    from_lora = guider_latents(
        lora_modular, PersonalizationGuidance(guidance_scale=SCALE, omega=0.3, personalization=lora_personal)
    )
    torch.testing.assert_close(got, from_lora, atol=ATOL, rtol=1e-4)
    # θ_ft is back in place after sampling: the pipeline's own CFG is what it was before.
    cfg = wrapper_latents(pipe, personal, GuidanceConfig("cfg", scale=SCALE))
    guider_latents(
        modular, PersonalizationGuidance(guidance_scale=SCALE, omega=0.0, personalization=personal)
    )
    torch.testing.assert_close(
        wrapper_latents(pipe, personal, GuidanceConfig("cfg", scale=SCALE)), cfg, atol=0, rtol=0
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_a_lora_loaded_by_diffusers_is_found_in_the_denoiser(setup, tiny_model_dir, arch):
    """The diffusers way: load the LoRA into the modular pipeline, swap the guider in, nothing else."""
    from diffusers import ModularPipeline

    pipe, _, personal = setup(arch)
    base = tiny_model_dir(arch)
    modular = ModularPipeline.from_pretrained(str(base))
    modular.load_components(names=[n for n in modular.component_names if _saved(base, n)])
    modular.set_progress_bar_config(disable=True)
    modular.load_lora_weights(personal.source)
    got = guider_latents(modular, PersonalizationGuidance(guidance_scale=SCALE, omega=0.5))
    want = wrapper_latents(pipe, personal, GuidanceConfig("pg", scale=SCALE, omega=0.5))
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)


def _saved(base, name):
    entry = json.loads((base / "model_index.json").read_text()).get(name)
    return isinstance(entry, list) and entry[0] is not None


def test_rows_per_step_equal_diffusers_cfg(setup):
    from diffusers.guiders import ClassifierFreeGuidance

    _, modular, personal = setup("sdxl")
    denoiser = denoiser_of(modular)
    rows = []
    handle = denoiser.register_forward_pre_hook(
        lambda m, args, kw: rows.append(kw["sample"].shape[0] if "sample" in kw else args[0].shape[0]),
        with_kwargs=True,
    )
    try:
        guider_latents(modular, ClassifierFreeGuidance(guidance_scale=SCALE))
        cfg_rows = sum(rows)
        rows.clear()
        guider_latents(
            modular, PersonalizationGuidance(guidance_scale=SCALE, omega=0.3, personalization=personal)
        )
    finally:
        handle.remove()
    assert sum(rows) == cfg_rows == STEPS * 2 * len(PROMPTS)


def test_config_saves_and_loads_like_diffusers_guiders(setup, tmp_path):
    _, modular, personal = setup("sdxl")
    guider = PersonalizationGuidance(
        guidance_scale=4.0, omega=0.25, omega_schedule="cosine:1.0", start=0.2, personalization=personal
    )
    guider.save_pretrained(tmp_path)
    assert (tmp_path / "guider_config.json").is_file()
    loaded = PersonalizationGuidance.from_pretrained(tmp_path, personalization=personal)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(guider.config)
    saved = json.loads((tmp_path / "guider_config.json").read_text())
    assert saved["_class_name"] == "PersonalizationGuidance"
    assert (saved["omega"], saved["omega_schedule"], saved["start"]) == (0.25, "cosine:1.0", 0.2)
    assert "personalization" not in loaded.config
    torch.testing.assert_close(
        guider_latents(modular, loaded), guider_latents(modular, guider), atol=0, rtol=0
    )
    changed = guider.new(omega=0.75)
    assert changed.config.omega == 0.75 and changed.personalization is personal


def test_bad_input_is_one_line(setup):
    _, modular, personal = setup("sd3")
    with pytest.raises(UserError, match=r"omega 1\.5 is outside \[0, 1\]"):
        PersonalizationGuidance(omega=1.5)
    with pytest.raises(UserError, match="omega 2 is outside"):
        PersonalizationGuidance(omega=0.5, omega_schedule="linear:2")
    PersonalizationGuidance(omega=1.5, allow_extrapolation=True)
    modular.update_components(guider=PersonalizationGuidance(guidance_scale=SCALE, personalization=personal))
    with pytest.raises(UserError, match="negative_prompt=''"):  # SD3's modular pipeline made no null branch
        modular(prompt=PROMPTS, num_inference_steps=2, height=32, width=32, output="latents")


def test_no_personalization_is_refused(tiny_model_dir):
    pipe = load_pipeline(tiny_model_dir("sdxl"))
    modular = modular_pipeline(pipe)
    modular.set_progress_bar_config(disable=True)
    modular.update_components(guider=PersonalizationGuidance(guidance_scale=SCALE))
    with pytest.raises(UserError, match="carries no LoRA"):
        modular(prompt=PROMPTS, num_inference_steps=2, height=32, width=32, output="latents")


def test_weights_are_restored_when_the_weak_pass_fails(setup):
    pipe, modular, personal = setup("sdxl", "full")
    denoiser = denoiser_of(modular)
    before = {k: v.clone() for k, v in denoiser.state_dict().items()}
    calls = []

    def fail_on_weak_pass(module, args, output):
        calls.append(1)
        if len(calls) == 2:  # inside the first step's second (weak) batch, while θ_ω is in place
            raise RuntimeError("boom")

    handle = denoiser.conv_in.register_forward_hook(fail_on_weak_pass)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            guider_latents(
                modular, PersonalizationGuidance(guidance_scale=SCALE, omega=0.0, personalization=personal)
            )
    finally:
        handle.remove()
    after = denoiser.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_readme_guider_example_runs(tmp_path):
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = next(
        b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "PersonalizationGuidance" in b
    )
    namespace: dict = {}
    exec(compile(block.replace("/tmp/sg-", str(tmp_path / "sg-")), "README.md", "exec"), namespace)
    assert namespace["image"].size == (32, 32)
    assert json.loads((tmp_path / "sg-guider" / "guider_config.json").read_text())["omega"] == 0.5


# -- LoRAs as people stack and fuse them: the guider realizes θ_ω as the engine does ---------------------


def _fresh(tiny_model_dir, setup, arch="sdxl"):
    """A pipeline of its own (these tests fuse and stack adapters), its modular twin, and the LoRA path."""
    _, _, shared = setup(arch)
    pipe = load_pipeline(tiny_model_dir(arch))
    pipe.set_progress_bar_config(disable=True)
    modular = modular_pipeline(pipe)
    modular.set_progress_bar_config(disable=True)
    return pipe, modular, shared.source


def test_stacked_style_lora_stays_in_the_pretrained_model(setup, tiny_model_dir, tmp_path):
    pipe, modular, source = _fresh(tiny_model_dir, setup)
    style = save_random_lora(pipe, tmp_path / "style", seed=9, std=0.1)
    personal = load_personalization(pipe, source)
    pipe.load_lora_weights(str(style), adapter_name="style")  # diffusers now activates "style" only
    guider = PersonalizationGuidance(guidance_scale=SCALE, omega=0.3, personalization=personal)
    with pytest.raises(UserError, match="'personal' is not active"):
        guider_latents(modular, guider)
    pipe.set_adapters(["personal", "style"], [1.0, 0.7])
    got = guider_latents(modular, guider)
    want = wrapper_latents(pipe, personal, GuidanceConfig("pg", scale=SCALE, omega=0.3))
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)
    cfg = wrapper_latents(pipe, personal, GuidanceConfig("cfg", scale=SCALE))
    assert (got - cfg).abs().max() > 100 * ATOL  # ω matters here
    # With no personalization given, two adapters in the denoiser are ambiguous: one line
    with pytest.raises(UserError, match="carries adapters personal, style; pass personalization="):
        guider_latents(modular, PersonalizationGuidance(guidance_scale=SCALE, omega=0.3))


def test_fused_lora_goes_through_weight_space(setup, tiny_model_dir):
    pipe, modular, source = _fresh(tiny_model_dir, setup)
    personal = load_personalization(pipe, source)
    want = wrapper_latents(pipe, personal, GuidanceConfig("pg", scale=SCALE, omega=0.3))  # unfused, per-row
    pipe.fuse_lora()
    got = guider_latents(
        modular, PersonalizationGuidance(guidance_scale=SCALE, omega=0.3, personalization=personal)
    )
    assert personal.info["realization"].startswith("weight space")
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)
    assert personal.denoiser_delta._cache is None  # θ_ω is not held after sampling
