"""The base model's training script end to end, on a tiny schedule: it must yield a stock pipeline."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from steerguide.toyworld.train_base import TrainConfig, train_base
from steerguide.toyworld.world import RARE_TOKENS


def tiny() -> TrainConfig:
    return TrainConfig(n_scenes=96, n_train=96, vae_val=32, vae_steps=2, vae_batch=4, unet_steps=3, unet_batch=4,
                       warmup=1, refine_steps=2, refine_warmup=1, checkpoint_every=2, threads=1)


def test_train_base_writes_a_stock_pipeline_and_resumes_from_its_cache(tmp_path):
    log = train_base(tmp_path / "out", tmp_path / "work", tiny())
    assert set(log["timings"]) == {"render_s", "vae_s", "latents_s", "unet_s", "refine_s"}
    assert {k: [step for step, _ in c] for k, c in log["loss_curves"].items()} == {"unet": [0, 3], "refine": [0, 2]}
    assert (tmp_path / "work" / "checkpoint_seed0_n96_unet_2" / "model_index.json").exists()
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "out")
    assert pipe.unet.config.block_out_channels == [32, 64, 128, 128]
    # the text encoder is the frozen random one: wide word embeddings, rare tokens among them
    words = pipe.text_encoder.get_input_embeddings().weight
    rare = [pipe.tokenizer.convert_tokens_to_ids(t + "</w>") for t in RARE_TOKENS]
    assert 0.8 < words.std().item() < 1.2 and 0.6 < words[rare].std().item() < 1.4
    image = pipe("a red circle", height=32, width=32, num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (32, 32, 3) and np.isfinite(image).all()

    again = train_base(tmp_path / "out2", tmp_path / "work", tiny())  # every stage cached
    assert again["timings"] == {}
    assert "is_local" not in (tmp_path / "out2" / "tokenizer" / "tokenizer_config.json").read_text()
    torch.testing.assert_close(StableDiffusionPipeline.from_pretrained(tmp_path / "out2").unet.conv_in.weight,
                               pipe.unet.conv_in.weight)
    first = StableDiffusionPipeline.from_pretrained(tmp_path / "work" / "unet_seed0_n96_3")
    assert not torch.equal(first.unet.conv_in.weight, pipe.unet.conv_in.weight)  # refinement trained on from it
    torch.testing.assert_close(first.text_encoder.get_input_embeddings().weight, words)  # and kept it frozen
    for phase in ("unet_seed0_n96_3", "refine_seed0_n96_3_2"):
        shutil.rmtree(tmp_path / "work" / phase)
    again = train_base(tmp_path / "out2", tmp_path / "work", tiny())  # dataset, VAE and latents cached
    assert set(again["timings"]) == {"unet_s", "refine_s"}
    assert "_name_or_path" not in (tmp_path / "out2" / "vae" / "config.json").read_text()  # no cache path shipped
    torch.testing.assert_close(StableDiffusionPipeline.from_pretrained(tmp_path / "out2").unet.conv_in.weight,
                               pipe.unet.conv_in.weight)  # same seed, same weights
    assert json.loads((tmp_path / "work" / "train_log_seed0_n96.json").read_text())["config"]["unet_steps"] == 3
    longer = dataclasses.replace(tiny(), unet_steps=4)  # another first phase: its refinement is not reused
    assert set(train_base(tmp_path / "out3", tmp_path / "work", longer)["timings"]) == {"unet_s", "refine_s"}
