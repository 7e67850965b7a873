"""steerguide's ComfyUI nodes against ComfyUI alone, in one process with ComfyUI imported once.

The reference for PG is the graph ComfyUI users build today from ComfyUI's hooks: CreateHookLora at ω on
the negative conditioning and at 1 on the positive (ConditioningSetProperties), sampled with ComfyUI's
CFGGuider; ComfyUI runs it as two passes a step, re-patching the weights between them. Our nodes must
give the same latents (float tolerance) from one batched pass.
"""

from __future__ import annotations

import pytest
import torch
from comfyui_env import comfyui_dir, write_models

STEPS = 4
CFG = 4.0


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """ComfyUI imported (once for the file), its model folders pointing at the tiny files."""
    from steerguide.comfyui.harness import leave_comfyui, use_comfyui

    folder = use_comfyui(comfyui_dir())
    import comfy_extras.nodes_custom_sampler as custom
    import comfy_extras.nodes_hooks as hooks
    import folder_paths
    import nodes

    import steerguide.comfyui.nodes as ours

    root = tmp_path_factory.mktemp("comfyui-models")
    files = write_models(root, with_clip=False)
    for kind in ("checkpoints", "loras"):
        folder_paths.folder_names_and_paths[kind] = ([str(root / kind)], {".safetensors"})
    model = nodes.CheckpointLoaderSimple().load_checkpoint(files["checkpoint"].name)[0]
    g = torch.Generator().manual_seed(0)
    ns = type("Comfy", (), {})()
    ns.nodes, ns.custom, ns.hooks, ns.ours, ns.files = nodes, custom, hooks, ours, files
    ns.model = model
    ns.lora = files["lora"].name
    ns.positive = [[torch.randn(1, 77, 768, generator=g), {}]]
    ns.negative = [[torch.randn(1, 77, 768, generator=g), {}]]
    ns.personalized = ours.PersonalizationLoRALoader().load(model, ns.lora)[0]
    ns.sigmas = custom.BasicScheduler().get_sigmas(model, "normal", STEPS, 1.0)[0]
    yield ns
    leave_comfyui(folder)  # later test files in this process see no ComfyUI folder and no stand-in


def sample(c, guider, sigmas=None, latent=None, noise=True):
    """SamplerCustomAdvanced with euler: the latents it returns."""
    noise_node = c.custom.RandomNoise().get_noise(7)[0] if noise else c.custom.DisableNoise().get_noise()[0]
    sampler = c.custom.KSamplerSelect().get_sampler("euler")[0]
    latent = latent if latent is not None else {"samples": torch.zeros(1, 4, 8, 8)}
    out = c.custom.SamplerCustomAdvanced().sample(noise_node, guider, sampler,
                                                  c.sigmas if sigmas is None else sigmas, latent)[0]
    return out


def pg(c, omega, model=None, schedule="constant", omega_end=1.0, start=0.0, stop=1.0):
    node = c.ours.PersonalizationGuiderNode()
    return node.get_guider(model or c.personalized, c.positive, c.negative, CFG, omega, schedule, omega_end,
                           start, stop)[0]


def hooks_guider(c, omega, positive=None, negative=None, cfg=CFG, model=None, lora=None):
    """ComfyUI's own PG graph: LoRA hook ω on the negative, 1 on the positive, CFGGuider."""
    hook_pos = c.hooks.CreateHookLora().create_hook(lora or c.lora, 1.0, 0.0)[0]
    hook_neg = c.hooks.CreateHookLora().create_hook(lora or c.lora, omega, 0.0)[0]
    props = c.hooks.ConditioningSetProperties()
    pos = props.set_properties(positive or c.positive, 1.0, "default", hooks=hook_pos)[0]
    neg = props.set_properties(negative or c.negative, 1.0, "default", hooks=hook_neg)[0]
    return c.custom.CFGGuider().get_guider(model or c.model, pos, neg, cfg)[0]


def close(a, b, scale):
    """Equal to float tolerance: within 1e-4 of `scale`, the size of ω's effect on the same latents."""
    err = (a - b).abs().max().item()
    assert err <= 1e-4 * scale, f"max difference {err:.3g} (effect of ω: {scale:.3g})"


@pytest.fixture(scope="module")
def reference(env):
    """The hooks graph's latents at each ω, and the size of ω's effect (ω = 0 against ω = 1)."""
    out = {w: sample(env, hooks_guider(env, w))["samples"] for w in (0.0, 0.3, 1.0)}
    out["effect"] = (out[0.0] - out[1.0]).abs().max().item()
    # the LoRA on the negative branch visibly matters: 1e-4 of its effect is far above float error
    assert out["effect"] > 2e-3 * out[1.0].abs().max().item()
    return out


def test_tiny_checkpoint_and_lora_are_what_comfyui_loads(env):
    import comfy.lora

    assert type(env.model.model.model_config).__name__ == "SD15"  # ComfyUI's own detection
    import comfy.utils

    key_map = comfy.lora.model_lora_keys_unet(env.model.model, {})
    sd = comfy.utils.load_torch_file(str(env.files["lora"]), safe_load=True)
    patches = comfy.lora.load_lora(sd, key_map, log_missing=False)
    assert len(patches) == len(sd) // 3 and len(patches) > 20  # every up/down/alpha triple found its layer
    # LoraLoader at strength 1 changes the samples (the LoRA is not a no-op)
    lora_model = env.nodes.LoraLoader().load_lora(env.model, None, env.lora, 1.0, 0.0)[0]
    a = sample(env, env.custom.CFGGuider().get_guider(env.model, env.positive, env.negative, CFG)[0])
    b = sample(env, env.custom.CFGGuider().get_guider(lora_model, env.positive, env.negative, CFG)[0])
    assert (a["samples"] - b["samples"]).abs().max() > 2e-3 * a["samples"].abs().max()


def comfy_lora_keys(c):
    import comfy.lora

    return comfy.lora.model_lora_keys_unet(c.model.model, {})


@pytest.mark.parametrize("omega", [0.0, 0.3, 1.0])
def test_pg_equals_comfyui_hooks_graph(env, reference, omega):
    close(sample(env, pg(env, omega))["samples"], reference[omega], reference["effect"])


def test_pg_at_omega_1_is_cfg_with_comfyui_lora_loader(env, reference):
    lora_model = env.nodes.LoraLoader().load_lora(env.model, None, env.lora, 1.0, 0.0)[0]
    cfg = sample(env, env.custom.CFGGuider().get_guider(lora_model, env.positive, env.negative, CFG)[0])
    close(sample(env, pg(env, 1.0))["samples"], cfg["samples"], reference["effect"])
    # and our loader's model under ComfyUI's own CFGGuider is that personalized model (LoRA at 1)
    plain = sample(env, env.custom.CFGGuider().get_guider(env.personalized, env.positive,
                                                              env.negative, CFG)[0])
    close(plain["samples"], cfg["samples"], reference["effect"])


def ag(c, omega, **kw):
    node = c.ours.PersonalizationAGGuiderNode()
    args = {"schedule": "constant", "omega_end": 1.0, "start": 0.0, "stop": 1.0, **kw}
    return node.get_guider(c.personalized, c.positive, CFG, omega, args["schedule"], args["omega_end"],
                           args["start"], args["stop"])[0]


def test_ag_equals_comfyui_hooks_graph(env, reference):
    # AG's reference: the positive prompt twice, the copy in the negative slot with the LoRA hook at ω
    ref = sample(env, hooks_guider(env, 0.3, negative=env.positive))["samples"]
    close(sample(env, ag(env, 0.3))["samples"], ref, reference["effect"])
    # the weak branch's own encoding of the prompt (Weak Text Encoder's, for a LoRA with a text-encoder part)
    node = env.ours.PersonalizationAGGuiderNode()
    guider = node.get_guider(env.personalized, env.positive, CFG, 0.3, "constant", 1.0, 0.0, 1.0,
                             weak_positive=env.negative)[0]
    close(sample(env, guider)["samples"], reference[0.3], reference["effect"])  # PG's reference, by design
    # ω = 1: the weak model is the personalized one, and AG returns its conditional prediction alone
    lora_model = env.nodes.LoraLoader().load_lora(env.model, None, env.lora, 1.0, 0.0)[0]
    basic = sample(env, env.custom.BasicGuider().get_guider(lora_model, env.positive)[0])
    close(sample(env, ag(env, 1.0))["samples"], basic["samples"], reference["effect"])


def test_schedule_and_interval_equal_the_hooks_graph_step_by_step(env, reference):
    # linear ω 0 → 1 over 4 steps (ω_i = i/4), guided at steps int(0.25·4) = 1 ≤ i < int(0.75·4) = 3.
    # Reference: ComfyUI run one euler step at a time (deterministic, so the chain is the same run), each
    # step by the hooks graph at ω_i, or unguided (Guider_Basic with the LoRA) outside the interval.
    lora_model = env.nodes.LoraLoader().load_lora(env.model, None, env.lora, 1.0, 0.0)[0]
    latent = None
    for i in range(STEPS):
        sigmas = env.sigmas[i:i + 2]
        guider = (hooks_guider(env, i / STEPS) if 1 <= i < 3
                  else env.custom.BasicGuider().get_guider(lora_model, env.positive)[0])
        latent = sample(env, guider, sigmas=sigmas, latent=latent, noise=i == 0)
    ours = sample(env, pg(env, 0.0, schedule="linear", omega_end=1.0, start=0.25, stop=0.75))
    close(ours["samples"], latent["samples"], reference["effect"])
    constant = sample(env, pg(env, 0.0, start=0.25, stop=0.75))["samples"]
    assert (constant - ours["samples"]).abs().max() > 1e-2 * reference["effect"]  # the schedule matters


class _Calls:
    """Every call of the UNet: its batch size and the chunks ComfyUI said it holds."""

    def __init__(self, model):
        self.log: list[tuple[int, list[int]]] = []
        self.handle = model.model.diffusion_model.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        self.log.append((args[0].shape[0], list(kwargs["transformer_options"]["cond_or_uncond"])))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_one_batched_pass_a_step_against_two_for_hooks(env):
    with _Calls(env.model) as ours:
        sample(env, pg(env, 0.3))
    with _Calls(env.model) as hooked:
        sample(env, hooks_guider(env, 0.3))
    assert ours.log == [(2, [1, 0])] * STEPS  # ComfyUI's order: the negative chunk first
    assert len(hooked.log) == 2 * STEPS and all(b == 1 for b, _ in hooked.log)


def _reversing_wrapper(apply_model, args):
    """A model_function_wrapper that hands the UNet the chunks in the other order (and puts them back)."""
    order = args["cond_or_uncond"]
    n = len(order)
    c = dict(args["c"])
    flip = lambda t: torch.cat(list(reversed(t.chunk(n))))  # noqa: E731
    c["c_crossattn"] = flip(c["c_crossattn"])
    c["transformer_options"] = {**c["transformer_options"], "cond_or_uncond": list(reversed(order))}
    return flip(apply_model(flip(args["input"]), flip(args["timestep"]), **c))


class _ShortOfMemory:
    """comfy.model_management with no free memory left."""

    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):
        return getattr(self.real, name)

    def get_free_memory(self, dev=None, torch_free_too=False):
        return (0, 0) if torch_free_too else 0


def test_reversed_and_memory_split_batches_give_the_same_samples(env, reference, monkeypatch):
    import comfy.model_management
    import comfy.samplers

    expected = reference[0.3]
    reversed_model = env.personalized.clone()
    reversed_model.set_model_unet_function_wrapper(_reversing_wrapper)
    with _Calls(env.model) as calls:
        out = sample(env, pg(env, 0.3, model=reversed_model))["samples"]
    assert calls.log == [(2, [0, 1])] * STEPS
    close(out, expected, reference["effect"])
    # ComfyUI splits the batch when it thinks memory is short: no free memory, as comfy/samplers.py sees
    # it (and only there), gives one chunk a call
    monkeypatch.setattr(comfy.samplers, "model_management", _ShortOfMemory(comfy.model_management))
    with _Calls(env.model) as calls:
        out = sample(env, pg(env, 0.3))["samples"]
    assert calls.log == [(1, [1]), (1, [0])] * STEPS
    close(out, expected, reference["effect"])


def test_two_images_per_prompt_equal_the_hooks_graph(env, reference):
    # a latent batch of 2: each chunk holds 2 rows, and both rows of the negative chunk get ω
    latent = {"samples": torch.zeros(2, 4, 8, 8)}
    with _Calls(env.model) as calls:
        ours = sample(env, pg(env, 0.3), latent=latent)["samples"]
    assert calls.log == [(4, [1, 0])] * STEPS
    close(ours, sample(env, hooks_guider(env, 0.3), latent=latent)["samples"], reference["effect"])


def test_bad_input_is_one_line_from_the_node(env):
    from safetensors.torch import load_file, save_file

    from steerguide.errors import UserError

    loader = env.ours.PersonalizationLoRALoader()
    # a LoRA that also reaches the text encoder (not supported yet) is refused, not half applied
    lora = load_file(str(env.files["lora"]))
    lora["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = torch.zeros(768, 4)
    save_file(lora, str(env.files["lora"].with_name("with-te.safetensors")))
    with pytest.raises(UserError, match="also changes the text encoder"):
        loader.load(env.model, "with-te.safetensors")
    with pytest.raises(UserError, match=r"do not fit the model's weight .*another architecture") as e:
        loader.load(env.model, env.files["other_lora"].name)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="no steerguide personalization") as e:
        pg(env, 0.3, model=env.model)
    with pytest.raises(UserError, match="guidance interval"):
        pg(env, 0.3, start=0.8, stop=0.2)
    # ω's range is ComfyUI's to enforce (prompt validation refuses values outside min/max)
    spec = env.ours.PersonalizationGuiderNode.INPUT_TYPES()["required"]
    assert spec["omega"][1]["min"] == 0.0 and spec["omega"][1]["max"] == 1.0


# -- another family: SD3 (MMDiT) -------------------------------------------------------------------------
def test_sd3_pg_equals_comfyui_hooks_graph(env):
    """The same row-scaled LoRA on ComfyUI's SD3: a tiny MMDiT that ComfyUI detects as SD3 from its keys."""
    from steerguide.comfyui import testing

    unet = testing.mmdit_state_dict()
    folder = env.files["checkpoint"].parent
    testing.write_checkpoint(folder / "tiny-sd3.safetensors", unet=unet, with_clip=False, with_vae=False)
    testing.write_lora(env.files["lora"].with_name("tiny-sd3-lora.safetensors"), unet, scale=1.0)
    model = env.nodes.CheckpointLoaderSimple().load_checkpoint("tiny-sd3.safetensors")[0]
    assert type(model.model.model_config).__name__ == "SD3"
    g = torch.Generator().manual_seed(1)
    cond = lambda: [[torch.randn(1, 77, 4096, generator=g), {"pooled_output": torch.randn(1, 2048, generator=g)}]]  # noqa: E731
    c = type(env)()
    c.__dict__.update(env.__dict__)
    c.model, c.lora, c.positive, c.negative = model, "tiny-sd3-lora.safetensors", cond(), cond()
    c.sigmas = env.custom.BasicScheduler().get_sigmas(model, "simple", STEPS, 1.0)[0]
    c.personalized = env.ours.PersonalizationLoRALoader().load(model, c.lora)[0]
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    refs = {w: sample(c, hooks_guider(c, w), latent=latent)["samples"] for w in (0.0, 0.3)}
    effect = (refs[0.0] - refs[0.3]).abs().max().item() / 0.3
    assert effect > 2e-3 * refs[0.3].abs().max().item()
    with _Calls(model) as calls:
        ours = sample(c, pg(c, 0.3), latent=latent)["samples"]
    assert calls.log == [(2, [1, 0])] * STEPS
    close(ours, refs[0.3], effect)


def test_flux_pg_equals_comfyui_hooks_graph(env):
    """Flux dev at cfg > 1 (where ComfyUI runs CFG): the smallest Flux ComfyUI detects (one double and one
    single block at FLUX.1's widths), loaded from its weights as UNETLoader does; the LoRA reaches the fused
    qkv and the single blocks' fused linear1/linear2."""
    import comfy.sd

    from steerguide.comfyui import testing

    unet = testing.flux_state_dict()
    lora = "tiny-flux-lora.safetensors"
    testing.write_lora(env.files["lora"].with_name(lora), unet, scale=1.0)
    prefix = "model.diffusion_model."
    model = comfy.sd.load_diffusion_model_state_dict({k[len(prefix):]: v for k, v in unet.items()})
    del unet
    assert type(model.model.model_config).__name__ == "Flux"  # dev (guidance_in), not FluxSchnell
    g = torch.Generator().manual_seed(1)
    cond = lambda: [[torch.randn(1, 4, 4096, generator=g), {"pooled_output": torch.randn(1, 768, generator=g)}]]  # noqa: E731
    _family_pg_equals_hooks_graph(env, model, lora, cond, channels=16)


def test_sdxl_family_pg_equals_comfyui_hooks_graph(env):
    """SDXL's architecture (linear proj_in, 2048-wide context, the size/crop ADM input) at the block counts of
    KOALA-700M, which ComfyUI detects as an SDXL variant; loaded from its weights as UNETLoader does."""
    import comfy.sd

    from steerguide.comfyui import testing

    unet = testing.unet_state_dict(testing.TINY_SDXL)
    lora = "tiny-sdxl-lora.safetensors"
    testing.write_lora(env.files["lora"].with_name(lora), unet, scale=1.0)
    prefix = "model.diffusion_model."
    model = comfy.sd.load_diffusion_model_state_dict({k[len(prefix):]: v for k, v in unet.items()})
    assert type(model.model.model_config).__name__ == "KOALA_700M"
    import comfy.supported_models

    assert isinstance(model.model.model_config, comfy.supported_models.SDXL)
    g = torch.Generator().manual_seed(1)
    cond = lambda: [[torch.randn(1, 77, 2048, generator=g), {"pooled_output": torch.randn(1, 1280, generator=g)}]]  # noqa: E731
    _family_pg_equals_hooks_graph(env, model, lora, cond, channels=4)


def _family_pg_equals_hooks_graph(env, model, lora, cond, channels, steps=2):
    """PG at ω = 0.3 through our nodes equals the hooks graph at cfg 4, from one batched pass a step."""
    c = type(env)()
    c.__dict__.update(env.__dict__)
    c.model, c.lora, c.positive, c.negative = model, lora, cond(), cond()
    c.sigmas = env.custom.BasicScheduler().get_sigmas(model, "simple", steps, 1.0)[0]
    c.personalized = env.ours.PersonalizationLoRALoader().load(model, c.lora)[0]
    latent = {"samples": torch.zeros(1, channels, 8, 8)}
    ref = sample(c, hooks_guider(c, 0.3), latent=latent)["samples"]
    # ω's effect against ω = 1, i.e. CFG on LoraLoader's model (merged once: hooks re-patch every pass)
    lora_model = env.nodes.LoraLoader().load_lora(model, None, lora, 1.0, 0.0)[0]
    cfg = sample(c, env.custom.CFGGuider().get_guider(lora_model, c.positive, c.negative, CFG)[0], latent=latent)
    effect = (cfg["samples"] - ref).abs().max().item() / 0.7
    assert effect > 2e-3 * ref.abs().max().item()
    with _Calls(model) as calls:
        ours = sample(c, pg(c, 0.3), latent=latent)["samples"]
    assert calls.log == [(2, [1, 0])] * steps
    close(ours, ref, effect)


# -- full fine-tunes -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finetune(env):
    """A fine-tune of the tiny base (every cross-attention key/value and one conv changed) and the model
    at lerped weights θ_pre + 0.3 (θ_ft − θ_pre), both saved and loaded by ComfyUI's CheckpointLoaderSimple."""
    from steerguide.comfyui import testing

    folder = env.files["checkpoint"].parent
    base = testing.unet_state_dict(seed=0)
    g = torch.Generator().manual_seed(5)
    ft = {k: v + 0.5 * v.std() * torch.randn(v.shape, generator=g)
          if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight", "input_blocks.1.0.in_layers.2.weight")) else v
          for k, v in base.items()}
    lerp = {k: base[k] + 0.3 * (ft[k] - base[k]) for k in base}
    loader = env.nodes.CheckpointLoaderSimple()
    models = {}
    for name, unet in (("ft", ft), ("lerp", lerp)):
        testing.write_checkpoint(folder / f"tiny-{name}.safetensors", unet=unet, with_clip=False)
        models[name] = loader.load_checkpoint(f"tiny-{name}.safetensors")[0]
    models["personalized"] = env.ours.PersonalizationFineTuneLoader().load(models["ft"], env.model)[0]
    return models


def lerp_reference(env, ft_model, weak_model):
    """ComfyUI's CFG rule with the negative branch from a second, separately loaded model."""
    import comfy.samplers

    class TwoModelCFG(comfy.samplers.CFGGuider):
        def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006
            calc = comfy.samplers.calc_cond_batch
            cond = calc(self.inner_model, [self.conds["positive"]], x, timestep, model_options)[0]
            uncond = calc(weak_model.model, [self.conds["negative"]], x, timestep, model_options)[0]
            return comfy.samplers.cfg_function(self.inner_model, cond, uncond, self.cfg, x, timestep,
                                               model_options=model_options)

    weak_model.model.current_patcher = weak_model  # as ModelPatcher.pre_run does (its weights are unpatched)
    guider = TwoModelCFG(ft_model)
    guider.set_conds(env.positive, env.negative)
    guider.set_cfg(CFG)
    return guider


def test_finetune_pg_equals_the_model_at_lerped_weights(env, finetune):
    ref = sample(env, lerp_reference(env, finetune["ft"], finetune["lerp"]))["samples"]
    cfg = sample(env, env.custom.CFGGuider().get_guider(finetune["ft"], env.positive, env.negative, CFG)[0])
    effect = (ref - cfg["samples"]).abs().max().item()
    assert effect > 2e-3 * ref.abs().max().item()  # θ_0.3 on the negative branch visibly matters
    with _Calls(finetune["ft"]) as calls:
        ours = sample(env, pg(env, 0.3, model=finetune["personalized"]))["samples"]
    close(ours, ref, effect)
    assert len(calls.log) == 2 * STEPS and all(b == 1 for b, _ in calls.log)  # CFG's two rows a step
    close(sample(env, pg(env, 1.0, model=finetune["personalized"]))["samples"], cfg["samples"], effect)


def test_finetune_bad_input(env, finetune):
    from steerguide.errors import UserError

    with pytest.raises(UserError, match="equals the base model's"):
        env.ours.PersonalizationFineTuneLoader().load(env.model, env.model)
    with pytest.raises(UserError, match="constant omega"):
        pg(env, 0.3, model=finetune["personalized"], schedule="linear")


# -- the example workflows -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["pg-lora", "pg-finetune"])
def test_example_workflows_pass_comfyui_validation_and_their_ui_files_agree(env, finetune, monkeypatch, name):
    import asyncio
    import json

    import execution
    import nodes
    from comfyui_env import REPO

    from steerguide.comfyui.workflows import api_to_ui, node_classes

    folder = REPO / "examples" / "comfyui"
    api = json.loads((folder / f"{name}.api.json").read_text())
    classes = node_classes()
    # the UI file is the API file's graph (regenerate: python -m steerguide.comfyui.workflows ...)
    assert json.loads((folder / f"{name}.ui.json").read_text()) == api_to_ui(api, classes)
    # ComfyUI's own prompt validation accepts it, on the tiny files
    monkeypatch.setattr(nodes, "NODE_CLASS_MAPPINGS", classes)
    names = iter(["tiny-sd15.safetensors", "tiny-ft.safetensors"])
    for node in api.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            node["inputs"]["ckpt_name"] = next(names)
        if node["class_type"] == "PersonalizationLoRALoader":
            node["inputs"]["lora_name"] = env.lora
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt("test", api, None))
    assert valid, (error, node_errors)
    assert outputs == [next(k for k, v in api.items() if v["class_type"] == "SaveImage")]
    # (the validation does look: a file that is not in the checkpoints folder is refused)
    api[next(k for k, v in api.items() if v["class_type"] == "CheckpointLoaderSimple")]["inputs"]["ckpt_name"] = "x"
    assert not asyncio.run(execution.validate_prompt("test", api, None))[0]


def test_cost_benchmark_counts_one_pass_for_pg_and_two_for_hooks(env):
    """benchmarks/comfyui_cost.py at the tiny UNet (its real run is SD 1.5's UNet at 64×64 latents)."""
    import importlib.util

    from comfyui_env import REPO

    spec = importlib.util.spec_from_file_location("comfyui_cost", REPO / "benchmarks" / "comfyui_cost.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.measure("tiny", latent=8, steps=2, rounds=1, warmup=0, rank=4)
    assert result["passes_per_step"] == {"cfg": 1.0, "pg-lora": 1.0, "hooks": 2.0}
    assert result["rows_per_pass"] == {"cfg": [2], "pg-lora": [2], "hooks": [1]}
    assert all(t > 0 for t in result["seconds_per_step"].values())


@pytest.mark.parametrize("argv, needle", [
    (["--rounds", "0"], "--rounds at least 1"),
    (["--rank", "0"], "--rank must be at least 1"),
    (["--latent", "2"], "--latent must be at least 8"),
    (["--out", "/nonexistent-folder/cost.json"], "does not exist"),
])
def test_cost_benchmark_refuses_bad_input_in_one_line(argv, needle, capsys):
    import importlib.util

    from comfyui_env import REPO

    spec = importlib.util.spec_from_file_location("comfyui_cost", REPO / "benchmarks" / "comfyui_cost.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with pytest.raises(SystemExit) as exit_:
        bench.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert needle in err[-1], err
