"""Every method on tiny random SD 1.5 and SDXL models: train a few steps, save, load with stock diffusers,
and regenerate the validation samples exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from steerguide.train import TrainConfig, train
from steerguide.train.validation import grid, sample

pytestmark = pytest.mark.filterwarnings("ignore::steerguide.train.TrainWarning")  # 'sks' is 3 pieces here


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and lose a lot when other jobs hold the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


DOG = "/work/shared/dreambench-sample/dog"  # real jpgs of different sizes

CASES = [  # (method, arch, extra settings): together they cover text encoders and prior preservation
    ("lora", "sd15", {"train_text_encoder": True, "prior_preservation": True, "class_images": 2}),
    ("lora", "sdxl", {"validation_every": 2, "lr_scheduler": "cosine", "lr_warmup_steps": 1}),
    ("dreambooth", "sd15", {"train_text_encoder": True, "snr_gamma": 5.0, "noise_offset": 0.05}),
    ("dreambooth", "sdxl", {"prior_preservation": True, "class_images": 1, "crop": "random", "images": DOG}),
    ("custom-diffusion", "sd15", {"latents": "mode"}),
    ("custom-diffusion", "sdxl", {}),
]


def photos(n: int = 3) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)) for _ in range(n)]


def tiny_config(base, out, method: str, **extra) -> TrainConfig:
    settings = dict(  # noqa: C408 (keyword form mirrors TrainConfig)
        base=base,
        images=photos(),
        out=out,
        token="sks",
        class_noun="dog",
        instance_prompt="sks dog",
        method=method,
        steps=3,
        learning_rate=5e-3,
        checkpoint_every=0,
        validation_images=2,
        validation_inference_steps=2,
        seed=1,
    )
    settings.update(extra)
    return TrainConfig(**settings)


def load_base(folder):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def regenerate(pipe, record: dict) -> np.ndarray:
    config = record["config"]
    images = sample(
        pipe,
        record["instance_prompt"],
        config["validation_images"],
        config["validation_inference_steps"],
        config["validation_guidance_scale"],
        record["resolution"],
        config["seed"],
    )
    return np.asarray(grid(images), dtype=np.int16)


@pytest.mark.parametrize("method,arch,extra", CASES, ids=[f"{m}-{a}" for m, a, _ in CASES])
def test_train_save_load_generate(tiny_model_dir, tmp_path, method, arch, extra):
    from steerguide.train import custom_diffusion

    if extra.get("images") == DOG and not Path(DOG).is_dir():
        pytest.skip("dreambench-sample not present")

    base_dir = tiny_model_dir(arch)
    out = train(tiny_config(base_dir, tmp_path / "out", method, **extra), progress=False)
    record = json.loads((out / "train.json").read_text())
    assert record["method"] == method and record["steps"] == 3 and len(record["losses"]) == 3
    assert all(math.isfinite(x) for x in record["losses"])
    assert record["versions"]["diffusers"] and record["config"]["steps"] == 3 and record["base"]
    assert record["wall_seconds"] > 0 and record["instance_prompt"].endswith(" dog")
    saved = np.asarray(Image.open(out / "validation.png"), dtype=np.int16)
    assert saved.shape == (32, 64, 3)  # two 32×32 samples side by side
    grids = (
        sorted(p.name for p in (out / "validation").glob("*.png")) if (out / "validation").is_dir() else []
    )
    assert grids == (["step-2.png"] if extra.get("validation_every") else [])

    pipe = load_base(base_dir)
    before = regenerate(pipe, record)
    if method == "lora":
        pipe.load_lora_weights(out)  # stock diffusers, from the folder
        if extra.get("train_text_encoder"):
            assert any("lora" in n for n, _ in pipe.text_encoder.named_parameters())
    elif method == "dreambooth":
        pipe = load_base(out)
        assert (out / "unet" / "diffusion_pytorch_model.safetensors").exists()
    else:
        base_unet = {n: p.clone() for n, p in pipe.unet.state_dict().items()}
        token = custom_diffusion.load(pipe, out)
        assert token == record["token"] and token in record["instance_prompt"]
        changed = {n for n, p in pipe.unet.state_dict().items() if not torch.equal(p, base_unet[n])}
        assert changed and all(custom_diffusion.is_trained(n) for n in changed)  # only attn2 k/v moved
    after = regenerate(pipe, record)
    assert np.abs(after - saved).max() <= 1, "reloaded weights must reproduce the validation samples"
    assert np.abs(after - before).max() > 0, "training must change the model"


def test_lora_file_is_the_diffusers_format(tiny_model_dir, tmp_path):
    from reference_impl import lora_layers
    from safetensors import safe_open

    from steerguide.loading import load_personalization, load_pipeline

    # Wider targets than attention (proj_in/proj_out): every one of them must survive save → load.
    targets = ("to_k", "to_q", "to_v", "to_out.0", "proj_in", "proj_out")
    out = train(
        tiny_config(
            tiny_model_dir("sd15"),
            tmp_path / "lora",
            "lora",
            rank=2,
            lora_alpha=4,
            validation_images=0,
            target_modules=targets,
        ),
        progress=False,
    )
    with safe_open(out / "pytorch_lora_weights.safetensors", "pt") as f:
        keys, metadata = list(f.keys()), f.metadata()
    assert keys and all(k.startswith("unet.") for k in keys)
    assert all(".lora_A." in k or ".lora_B." in k for k in keys)  # one layout (PEFT's), not a mix
    pipe = load_pipeline(tiny_model_dir("sd15"))
    load_personalization(pipe, out)
    assert len(lora_layers(pipe.unet)) == len({k.split(".lora_")[0] for k in keys})
    assert not (out / "validation.png").exists()
    assert json.loads(metadata["lora_adapter_metadata"])["unet.lora_alpha"] == 4  # alpha ≠ rank survives


def test_custom_diffusion_keeps_other_token_embeddings(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    base_dir = tiny_model_dir("sd15")
    out = train(
        tiny_config(base_dir, tmp_path / "cd", "custom-diffusion", validation_images=0), progress=False
    )
    kv = load_file(out / "custom_diffusion.safetensors")
    base = load_base(base_dir)
    params = dict(base.unet.named_parameters())
    assert set(kv) == {n for n in params if ".attn2.to_k." in n or ".attn2.to_v." in n}
    assert all(kv[n].shape == params[n].shape for n in kv)  # full values, not deltas
    embeds = load_file(out / "learned_embeds.safetensors")
    assert list(embeds) == ["sks"] and embeds["sks"].shape == (1, 32)  # 'sks' is 3 pieces here: added as is
    base.load_textual_inversion(out / "learned_embeds.safetensors")
    tokenizer = base.tokenizer
    assert tokenizer.tokenize("sks dog")[0] == "sks"


def test_custom_diffusion_embedding_learning_rate(tiny_model_dir, tmp_path):
    """One Adam step moves each weight by about its group's rate (m/sqrt(v) = g/|g| at the first step): the
    new token's row by --embedding-lr, the k/v weights by --lr."""
    from safetensors.torch import load_file

    base_dir = tiny_model_dir("sd15")
    rates = {"learning_rate": 1e-3, "embedding_learning_rate": 3e-2}
    config = tiny_config(
        base_dir, tmp_path / "cd", "custom-diffusion", validation_images=0, steps=1, max_grad_norm=0.0,
        adam_weight_decay=0.0, **rates
    )
    out = train(config, progress=False)
    base = load_base(base_dir)
    params = dict(base.unet.named_parameters())
    kv = load_file(out / "custom_diffusion.safetensors")
    kv_moves = [(w - params[n]).abs().max().item() for n, w in kv.items()]
    pieces = base.tokenizer.convert_tokens_to_ids(base.tokenizer.tokenize("sks"))
    start = base.text_encoder.get_input_embeddings().weight[pieces].mean(0)
    row = load_file(out / "learned_embeds.safetensors")["sks"][0]
    assert max(kv_moves) == pytest.approx(1e-3, rel=0.02)
    assert (row - start).abs().max().item() == pytest.approx(3e-2, rel=0.02)
    assert json.loads((out / "train.json").read_text())["config"]["embedding_lr"] == 3e-2


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
@pytest.mark.parametrize("method", ["lora", "dreambooth", "custom-diffusion"])
def test_generate_accepts_each_output(tiny_model_dir, tmp_path, method, arch, capsys):
    """`steerguide generate --personalization DIR` takes each output folder as it is (PG, ω = 0.5)."""
    from steerguide.cli import run

    base = tiny_model_dir(arch)
    out = train(tiny_config(base, tmp_path / "p", method, steps=1, validation_images=0), progress=False)
    prompt = json.loads((out / "train.json").read_text())["instance_prompt"]
    images = tmp_path / "images"
    argv = [
        "generate",
        "--base",
        str(base),
        "--personalization",
        str(out),
        "--prompt",
        prompt,
        "--steps",
        "2",
        "--method",
        "pg",
        "--omega",
        "0.5",
        "--out",
        str(images),
    ]
    assert run(argv) == 0, capsys.readouterr().err
    assert len(list(images.glob("*.png"))) == 1


@pytest.mark.parametrize("method", ["lora", "dreambooth", "custom-diffusion"])
def test_bf16_gradient_checkpointing_and_accumulation(tiny_model_dir, tmp_path, method):
    """The GPU options run (bf16 autocast works on CPU too); a later fp32 run in the same process is fp32."""
    base = tiny_model_dir("sd15")
    out = train(
        tiny_config(
            base,
            tmp_path / "bf16",
            method,
            steps=2,
            mixed_precision="bf16",
            gradient_checkpointing=True,
            gradient_accumulation=2,
            train_text_encoder=True,
            validation_images=1,
        ),
        progress=False,
    )
    record = json.loads((out / "train.json").read_text())
    assert record["steps"] == 2 and all(math.isfinite(x) for x in record["losses"])
    assert record["mixed_precision"] == "bf16"
    again = train(tiny_config(base, tmp_path / "fp32", method, steps=1, validation_images=0), progress=False)
    assert json.loads((again / "train.json").read_text())["mixed_precision"] == "no"
    from steerguide.train.results import load_trained

    pipe, _ = load_trained(out)
    assert pipe.unet.dtype == torch.float32  # saved trained weights are fp32, whatever the autocast
