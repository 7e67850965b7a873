"""`steerguide generate`: images + run.json, counters, and one clear line with exit 2 for bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from steerguide.cli import run
from steerguide.loading import load_pipeline
from steerguide.testing import save_random_lora


@pytest.fixture(scope="module")
def sd15(tiny_model_dir, tmp_path_factory):
    base = tiny_model_dir("sd15")
    lora = save_random_lora(load_pipeline(base), tmp_path_factory.mktemp("lora-sd15"))
    return base, lora


def _generate(base, out, *extra):
    return run(
        [
            "generate",
            "--base",
            str(base),
            "--prompt",
            "a dog",
            "--prompt",
            "a cat on a sofa",
            "--num-images",
            "2",
            "--steps",
            "3",
            "--height",
            "32",
            "--width",
            "32",
            "--out",
            str(out),
            *map(str, extra),
        ]
    )


def test_generate_writes_images_and_run_json(sd15, tmp_path):
    base, lora = sd15
    assert (
        _generate(
            base,
            tmp_path / "pg",
            "--personalization",
            lora,
            "--method",
            "pg",
            "--omega",
            "0.3",
            "--omega-schedule",
            "linear:0.9",
        )
        == 0
    )
    assert _generate(base, tmp_path / "cfg", "--personalization", lora, "--method", "cfg") == 0
    pg = json.loads((tmp_path / "pg" / "run.json").read_text())
    cfg = json.loads((tmp_path / "cfg" / "run.json").read_text())
    assert len(pg["images"]) == 4 and all((tmp_path / "pg" / im["file"]).is_file() for im in pg["images"])
    assert [im["seed"] for im in pg["images"]] == [0, 1, 0, 1]
    assert pg["guidance"]["method"] == "pg" and pg["personalization"]["kind"] == "lora"
    assert pg["omega_per_step"] == pytest.approx([0.3, 0.5, 0.7])
    assert pg["denoiser_rows"] == cfg["denoiser_rows"] == 3 * 4 * 2
    assert pg["denoiser_calls"] == cfg["denoiser_calls"] == 3
    assert pg["seconds_denoising"] > 0 and "diffusers" in pg["versions"]
    assert pg["scheduler"] == "DDIMScheduler"


def test_generate_reads_prompts_file_and_swaps_scheduler(sd15, tmp_path):
    base, lora = sd15
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# a comment\na dog\n\na cat\n")
    assert (
        run(
            [
                "generate",
                "--base",
                str(base),
                "--personalization",
                str(lora),
                "--prompts-file",
                str(prompts),
                "--steps",
                "2",
                "--height",
                "32",
                "--width",
                "32",
                "--scheduler",
                "EulerDiscrete",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / "o" / "run.json").read_text())
    assert record["prompts"] == ["a dog", "a cat"] and record["scheduler"] == "EulerDiscreteScheduler"


def _bad(capsys, argv):
    code = run(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("steerguide: error:"), err
    return err[0]


def test_bad_base(capsys, tmp_path):
    line = _bad(
        capsys, ["generate", "--base", str(tmp_path / "nope"), "-p", "x", "--out", str(tmp_path / "o")]
    )
    assert "not found" in line
    line = _bad(
        capsys, ["generate", "--base", "no-such-org/no-such-model", "-p", "x", "--out", str(tmp_path / "o")]
    )
    assert "not found" in line and "no-such-org/no-such-model" in line


def test_bad_personalization(capsys, sd15, tmp_path, tiny_model_dir):
    base, _ = sd15
    common = ["generate", "--base", str(base), "-p", "x", "--steps", "1", "--out", str(tmp_path / "o")]
    assert "not found" in _bad(capsys, common + ["--personalization", str(tmp_path / "missing.safetensors")])
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"this is not a safetensors file at all")
    assert "corrupt" in _bad(capsys, common + ["--personalization", str(corrupt)])
    foreign = tmp_path / "foreign.safetensors"
    save_file({"some.other.weight": torch.zeros(3)}, str(foreign))
    assert "neither a LoRA nor a checkpoint" in _bad(capsys, common + ["--personalization", str(foreign)])
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert "not a weights file" in _bad(capsys, common + ["--personalization", str(text)])
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    assert "is not a LoRA" in _bad(capsys, common + ["--personalization", str(empty_dir)])


def test_lora_for_another_architecture_is_refused(capsys, sd15, tiny_model_dir, tmp_path):
    base, _ = sd15
    sdxl_lora = save_random_lora(load_pipeline(tiny_model_dir("sdxl")), tmp_path / "sdxl-lora")
    line = _bad(
        capsys,
        [
            "generate",
            "--base",
            str(base),
            "-p",
            "x",
            "--steps",
            "1",
            "--out",
            str(tmp_path / "o"),
            "--personalization",
            str(sdxl_lora),
        ],
    )
    assert "does not fit" in line


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--omega", "1.5"], "outside [0, 1]"),
        (["--omega", "0.2", "--omega-schedule", "linear:-0.5"], "outside [0, 1]"),
        (["--scale", "-1"], "scale"),
        (["--steps", "0"], "--steps"),
        (["--method", "xfg"], "unknown method"),
        (["--omega-schedule", "zigzag:1"], "unknown omega schedule"),
        (["--omega-schedule", "linear:abc"], "not a number"),
        (["--device", "cuda"], "no CUDA"),
        (["--dtype", "float8"], "unknown dtype"),
        (["--guidance-start", "0.8", "--guidance-stop", "0.2"], "interval"),
    ],
)
def test_bad_values(capsys, sd15, tmp_path, args, needle):
    base, lora = sd15
    if args == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    line = _bad(
        capsys,
        [
            "generate",
            "--base",
            str(base),
            "--personalization",
            str(lora),
            "-p",
            "x",
            "--out",
            str(tmp_path / "o"),
            *args,
        ],
    )
    assert needle in line, line


def test_extrapolation_when_asked(sd15, tmp_path):
    base, lora = sd15
    assert (
        _generate(base, tmp_path / "x", "--personalization", lora, "--omega", "-0.5", "--allow-extrapolation")
        == 0
    )


def test_unwritable_out(capsys, sd15, tmp_path):
    base, _ = sd15
    blocker = tmp_path / "file"
    blocker.write_text("x")
    # A folder below a plain file cannot be created, whoever runs the test (root included).
    line = _bad(capsys, ["generate", "--base", str(base), "-p", "x", "--out", str(blocker / "o")])
    assert "not writable" in line


def test_out_is_a_file(capsys, sd15, tmp_path):
    base, _ = sd15
    target = tmp_path / "file"
    target.write_text("x")
    assert "not writable" in _bad(capsys, ["generate", "--base", str(base), "-p", "x", "--out", str(target)])


def test_pg_without_personalization(capsys, sd15, tmp_path):
    base, _ = sd15
    line = _bad(
        capsys,
        [
            "generate",
            "--base",
            str(base),
            "-p",
            "x",
            "--method",
            "pg",
            "--steps",
            "1",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert "needs --personalization" in line


@pytest.mark.parametrize("argv", [["--bogus"], ["generate", "--bogus"], ["toyworld", "check-base", "--bogus"]])
def test_unknown_option_is_one_line_and_exit_2(capsys, argv):
    # typer runs on a vendored click whose exceptions are not click's: they must be caught all the same
    assert "No such option: --bogus" in _bad(capsys, argv)


@pytest.mark.parametrize("option", ["--unet-steps=0", "--refine-steps=-1", "--stop-after=0"])
def test_train_base_rejects_out_of_range_steps(capsys, tmp_path, option):
    line = _bad(capsys, ["toyworld", "train-base", "--out", str(tmp_path / "o"), option])
    assert option.split("=")[0] in line and not (tmp_path / "o").exists()
