"""`steerguide train`: bad input is one line and exit status 2; a good run prints its folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from steerguide.cli import run


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 45), dtype=np.uint8)).save(folder / "gray.png")  # odd-sized, L
    Image.fromarray(rng.integers(0, 255, (50, 40, 4), dtype=np.uint8)).save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 255, (33, 33, 3), dtype=np.uint8)).save(folder / "rgb.jpg")
    return folder


def fails(capsys, argv: list[str], message: str) -> None:
    assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("steerguide: error: "), err
    assert message in err[0], err[0]


def test_bad_input(tiny_model_dir, photos, tmp_path, capsys):
    base = str(tiny_model_dir("sd15"))
    capsys.readouterr()  # building the tiny model prints progress
    out = str(tmp_path / "out")
    args = ["train", "--base", base, "--out", out, "--class-noun", "dog"]
    fails(capsys, args + ["--images", str(tmp_path / "missing")], "does not exist")
    (tmp_path / "empty").mkdir()
    fails(capsys, args + ["--images", str(tmp_path / "empty")], "is empty")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    fails(capsys, args + ["--images", str(tmp_path / "texts")], "no usable image")
    (photos / "zz-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    fails(capsys, args + ["--images", str(photos)], "zz-broken.png")
    (photos / "zz-broken.png").unlink()
    fails(capsys, args + ["--images", str(photos), "--method", "textual-inversion"], "unknown method")
    fails(capsys, args + ["--images", str(photos), "--rank", "0"], "--rank must be at least 1")
    fails(capsys, args + ["--images", str(photos), "--lr-scheduler", "wavy"], "unknown --lr-scheduler 'wavy'")
    cd = args + ["--images", str(photos), "--method", "custom-diffusion"]
    fails(capsys, cd + ["--embedding-lr", "0"], "--embedding-learning-rate must be positive")
    fails(capsys, cd + ["--embedding-lr", "nan"], "--embedding-learning-rate must be a finite number")
    lora = args + ["--images", str(photos), "--embedding-lr", "1e-2"]
    fails(capsys, lora, "only for --method custom-diffusion")
    fails(
        capsys, args + ["--images", str(photos), "--instance-prompt", "a dog"], "does not contain the token"
    )
    fails(
        capsys,
        ["train", "--base", str(tmp_path), "--images", str(photos), "--out", out],
        "no model_index.json",
    )
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("user data")
    fails(capsys, args + ["--images", str(photos)], "exists and is not empty")
    fails(capsys, args + ["--images", str(photos), "--overwrite"], "refusing to delete")
    assert (tmp_path / "out" / "keep.txt").exists()


def test_run_converts_odd_images_and_warns_about_a_split_token(tiny_model_dir, photos, tmp_path, capsys):
    out, base = tmp_path / "out", tiny_model_dir("sdxl")
    capsys.readouterr()
    argv = [
        "train",
        "--base",
        str(base),
        "--images",
        str(photos),
        "--out",
        str(out),
        "--token",
        "sks",
        "--class-noun",
        "dog",
        "--instance-prompt",
        "sks dog",
        "--steps",
        "2",
        "--rank",
        "2",
        "--validation-images",
        "1",
        "--validation-inference-steps",
        "2",
        "--quiet",
    ]
    assert run(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    warnings = [line for line in captured.err.splitlines() if line.startswith("steerguide: warning:")]
    assert len(warnings) == 1 and "'sks' is split by the tokenizer into 3 pieces (s k s)" in warnings[0]
    record = json.loads((out / "train.json").read_text())
    assert record["images"] == ["gray.png", "rgb.jpg", "rgba.png"] and record["steps"] == 2
    assert (out / "pytorch_lora_weights.safetensors").exists()
    # a finished folder: a second run without --overwrite is refused, with it replaced
    fails(capsys, argv, "exists and is not empty")
    assert run(argv + ["--overwrite", "--steps", "1"]) == 0
    assert json.loads((out / "train.json").read_text())["steps"] == 1


def test_toy_subject_option(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """--toy fills base, photos, token, prompt and the toy defaults; what is typed wins over them."""
    from steerguide import toyworld

    base = tiny_model_dir("sd15")  # stands in for the shipped toy base: only the wiring is under test
    capsys.readouterr()
    monkeypatch.setattr(toyworld, "base_model_path", lambda: base)
    out = str(tmp_path / "toy")
    fails(
        capsys, ["train", "--toy", "sks_star", "--base", "x", "--out", out], "leave out --base and --images"
    )
    fails(capsys, ["train", "--toy", "nobody", "--out", out], "unknown subject 'nobody'")
    argv = [
        "train",
        "--toy",
        "bnq_triangle",
        "--out",
        out,
        "--steps",
        "2",
        "--lr",
        "1e-3",
        "--validation-images",
        "1",
        "--validation-inference-steps",
        "2",
        "--quiet",
        "--threads",
        "1",
    ]
    assert run(argv) == 0
    record = json.loads((tmp_path / "toy" / "train.json").read_text())
    config = record["config"]
    assert record["instance_prompt"] == "a bnq triangle" and record["steps"] == 2 and config["lr"] == 1e-3
    assert config["rank"] == 4 and config["latents"] == "mode" and "conv1" in config["target_modules"]
    assert config["extra"]["toy_subject"] == "bnq_triangle" and record["base"] == str(Path(base).resolve())
    assert config["extra"]["toy_subject_definition"] == toyworld.get_subject("bnq_triangle").to_dict()

    # --toy-subjects: a subject of the user's own file; a bad file is one line naming subject and key
    mine = tmp_path / "mine.yaml"
    mine.write_text("subjects:\n  - {token: hto, class: heart, look: ring, colors: [red, [1, 2, 3]]}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("subjects:\n  - {token: hto, class: heart, look: plaid, colors: [red, blue]}\n")
    out2 = str(tmp_path / "toy2")
    capsys.readouterr()
    fails(capsys, ["train", "--toy", "hto_heart", "--out", out2], "unknown subject 'hto_heart'")
    fails(capsys, ["train", "--toy", "hto", "--toy-subjects", str(bad), "--out", out2], "(hto_heart): key look")
    fails(capsys, ["train", "--toy-subjects", str(mine), "--out", out2], "--toy-subjects needs --toy")
    mine_argv = ["--toy", "hto", "--toy-subjects", str(mine), "--out", out2]
    assert run(argv[:1] + mine_argv + argv[5:]) == 0
    record = json.loads((tmp_path / "toy2" / "train.json").read_text())
    assert record["instance_prompt"] == "a hto heart"
    assert record["config"]["extra"]["toy_subject_definition"]["colors"] == ["red", [1, 2, 3]]
