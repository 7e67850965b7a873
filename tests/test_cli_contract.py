"""The CLI's contract (docs/cli.md): bad input is one line on stderr and exit 2, a bug one line and exit 1,
Ctrl-C one line saying what was kept and exit 130; paths and numbers are checked before any work.

Most cases never load a model: the checks come first, which is the point."""

from __future__ import annotations

import pytest
import typer

from steerguide.cli import run
from steerguide.errors import Interrupted


def _lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def bad(capsys, argv: list[str], code: int = 2) -> str:
    """Run `argv`; it must fail with `code` and exactly one `steerguide: ...` line on stderr."""
    got = run([str(a) for a in argv])
    err = _lines(capsys)
    assert got == code, err
    assert len(err) == 1 and err[0].startswith("steerguide: "), err
    return err[0]


# -- the root: every exception ends as one line --------------------------------------------------------


@pytest.mark.parametrize(
    "raised,code,needle",
    [
        (RuntimeError("boom\nsecond line"), 1, "internal error: RuntimeError: boom"),
        (ValueError(), 1, "internal error: ValueError"),
        (MemoryError("out of memory"), 1, "internal error: MemoryError: out of memory"),
        (typer.Abort(), 1, "aborted"),
        (KeyboardInterrupt(), 130, "steerguide: interrupted"),
        (Interrupted("kept 3 images; rerun to continue"), 130, "interrupted: kept 3 images; rerun"),
    ],
)
def test_unexpected_error_inside_a_command_is_one_line(capsys, monkeypatch, tmp_path, raised, code, needle):
    import steerguide.generation

    def explode(*args, **kwargs):
        raise raised

    monkeypatch.delenv("STEERGUIDE_DEBUG", raising=False)
    monkeypatch.setattr(steerguide.generation, "generate", explode)
    line = bad(capsys, ["generate", "--method", "cfg", "-p", "x", "--out", tmp_path / "o"], code)
    assert needle in line, line


def test_exit_raised_inside_a_command_keeps_its_status(capsys, monkeypatch, tmp_path):
    import steerguide.generation

    def leave(*args, **kwargs):
        raise typer.Exit(3)

    monkeypatch.setattr(steerguide.generation, "generate", leave)
    assert run(["generate", "--method", "cfg", "-p", "x", "--out", str(tmp_path / "o")]) == 3


def test_debug_shows_the_traceback(monkeypatch, tmp_path):
    import steerguide.generation

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setenv("STEERGUIDE_DEBUG", "1")
    monkeypatch.setattr(steerguide.generation, "generate", explode)
    with pytest.raises(RuntimeError, match="boom"):
        run(["generate", "--method", "cfg", "-p", "x", "--out", str(tmp_path / "o")])


def test_version_and_help(capsys):
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.startswith("steerguide ")
    assert run(["--help"]) == 0
    assert "generate" in capsys.readouterr().out
    assert run([]) == 0  # bare command: help
    assert run(["toyworld"]) == 0


def test_installed_entry_point_prints_no_traceback(tmp_path):
    """The real process, as a user runs it: a pipeline error becomes one line (no typer traceback)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "steerguide", "toyworld", "judge", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


# -- generate: numbers, files and the output folder, checked before any model loads ------------------

GEN = ["generate", "--method", "cfg", "-p", "a red circle"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--height", "7"], "--height must be a multiple of 8"),
        (["--width", "-16"], "--width must be a multiple of 8"),
        (["--height", "0", "--width", "0"], "--height must be a multiple of 8"),
        (["--height", "100000", "--width", "100000"], "from 8 to 4096, got 100000"),
        (["--scale", "nan"], "--scale must be a finite number, got nan"),
        (["--scale", "inf"], "--scale must be a finite number"),
        (["--omega", "nan", "--method", "pg"], "--omega must be a finite number"),
        (["--guidance-rescale", "nan"], "--guidance-rescale must be a finite number"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--num-images", "-1"], "--num-images must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--height", "abc"], "Invalid value for '--height'"),
    ],
)
def test_generate_bad_numbers(capsys, tmp_path, args, needle):
    line = bad(capsys, [*GEN, "--out", tmp_path / "o", *args])
    assert needle in line, line
    assert not (tmp_path / "o").exists()  # nothing made, not even the folder


def test_generate_python_api_says_the_same(tmp_path):
    from steerguide.errors import UserError
    from steerguide.generation import generate
    from steerguide.guidance import GuidanceConfig

    with pytest.raises(UserError, match="--height must be a multiple of 8 from 8 to 4096, got 7"):
        generate("toy", None, GuidanceConfig("cfg"), ["x"], tmp_path / "o", height=7)
    with pytest.raises(UserError, match="--scale must be a finite number, got nan"):
        GuidanceConfig("cfg", scale=float("nan"))
    with pytest.raises(UserError, match="omega must be a finite number"):
        GuidanceConfig("pg", omega=0.2, omega_schedule="linear:nan", allow_extrapolation=True)


def test_generate_binary_prompts_file(capsys, tmp_path):
    binary = tmp_path / "prompts.txt"
    binary.write_bytes(bytes(range(256)) * 4)
    line = bad(capsys, ["generate", "--prompts-file", binary, "--out", tmp_path / "o"])
    assert "not UTF-8 text" in line and str(binary) in line


@pytest.mark.parametrize("where", ["/proc/steerguide-x", "file", "file/below"])
def test_generate_unwritable_out(capsys, tmp_path, where):
    (tmp_path / "file").write_text("x")
    out = where if where.startswith("/") else tmp_path / where
    assert "not writable" in bad(capsys, [*GEN, "--out", out])


def test_generate_refuses_a_folder_of_other_files(capsys, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "holiday.jpg").write_bytes(b"x")
    assert "holds no run.json" in bad(capsys, [*GEN, "--out", tmp_path / "o"])
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["holiday.jpg"]


def _record(out):
    import json

    return json.loads((out / "run.json").read_text())


def test_generate_same_run_continues_another_is_refused_or_replaced(capsys, tmp_path):
    """The documented rule for an existing --out (docs/cli.md)."""
    out = tmp_path / "o"
    argv = [*GEN, "-p", "a blue square", "--steps", "2", "--num-images", "2", "--out", out]
    assert run([str(a) for a in argv]) == 0
    first = _record(out)
    assert first["complete"] and len(first["images"]) == 4
    (out / first["images"][1]["file"]).unlink()  # as if interrupted before it was made
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert run([str(a) for a in argv]) == 0
    again = _record(out)
    assert [e["file"] for e in again["images"]] == [e["file"] for e in first["images"]]
    assert again["denoiser_rows"] == first["denoiser_rows"] + 2 * 2 * 1  # one image more, 2 steps, cond+uncond
    assert all((out / n).stat().st_mtime_ns == t for n, t in stamps.items())  # kept, not remade
    capsys.readouterr()
    line = bad(capsys, [*argv[:-2], "--scale", "3", "--out", out])
    assert "holds another run (different guidance)" in line and "--overwrite" in line
    before = sorted(p.name for p in out.iterdir())
    line = bad(capsys, [*argv[:-2], "--base", out / "no-such-model", "--out", out, "--overwrite"])
    assert "not found" in line and sorted(p.name for p in out.iterdir()) == before  # removed only once sure
    assert run([str(a) for a in [*argv[:-2], "--scale", "3", "--num-images", "1", "--out", out, "--overwrite"]]) == 0
    replaced = _record(out)
    assert replaced["guidance"]["scale"] == 3 and sorted(p.name for p in out.glob("*.png")) == sorted(
        e["file"] for e in replaced["images"]
    ) and len(replaced["images"]) == 2


def test_generate_one_side_and_long_prompt(capsys, tmp_path):
    out = tmp_path / "o"
    long_prompt = "a red circle " * 40
    assert run(["generate", "--method", "cfg", "-p", long_prompt, "--height", "16", "--steps", "1",
                "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("steerguide: warning:") == 1 and "cut there" in err, err
    record = _record(out)
    assert (record["height_made"], record["width_made"]) == (16, 32)
    from PIL import Image

    assert Image.open(out / record["images"][0]["file"]).size == (32, 16)


# -- Ctrl-C: a real SIGINT to a real process ----------------------------------------------------------


def _interrupt_when(argv: list[str], ready, timeout: float = 240, sig: str = "SIGINT"):
    """Start `steerguide argv`, send `sig` once `ready()` holds; returns (exit status, stderr)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    # A shell that runs the tests in the background ignores SIGINT, and children inherit that: restore it,
    # as in a terminal, or Python never raises KeyboardInterrupt.
    proc = subprocess.Popen([sys.executable, "-m", "steerguide", *map(str, argv)], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"ended before the interrupt: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.05)
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


def test_sigint_to_generate_keeps_each_image_and_the_rerun_finishes(capsys, tmp_path):
    out, straight = tmp_path / "o", tmp_path / "straight"
    argv = ["generate", "--method", "cfg", "-p", "a red circle", "-p", "a blue square", "--num-images", "2",
            "--batch-size", "1", "--steps", "12"]

    def one_image_made() -> bool:
        try:
            return len(_record(out)["images"]) >= 1
        except (FileNotFoundError, ValueError):
            return False

    code, err = _interrupt_when([*argv, "--out", out], one_image_made)
    lines = [line for line in err.splitlines() if line.startswith("steerguide:")]
    assert code == 130, err
    assert len(lines) == 1 and "Traceback" not in err, err
    kept = sorted(p.name for p in out.glob("*.png"))
    assert lines[0] == (f"steerguide: interrupted: {len(kept)} of 4 images are in {out} (run.json lists "
                        "them); run the same command again to make the rest")
    assert 1 <= len(kept) < 4
    assert kept == sorted(e["file"] for e in _record(out)["images"]) and not _record(out)["complete"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no half-written file
    assert run([*argv, "--out", str(out)]) == 0
    assert run([*argv, "--out", str(straight)]) == 0
    finished, reference = _record(out), _record(straight)
    assert finished["complete"] and [e["file"] for e in finished["images"]] == [
        e["file"] for e in reference["images"]
    ]
    for e in reference["images"]:  # the same pixels as an uninterrupted run: nothing lost or remade wrong
        assert (out / e["file"]).read_bytes() == (straight / e["file"]).read_bytes(), e["file"]


# -- train ---------------------------------------------------------------------------------------------


@pytest.fixture
def photos(tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    return folder


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--out", "/proc/steerguide-x"], "output folder /proc/steerguide-x is not writable"),
        (["--out", "{tmp}/file"], "exists and is not a folder"),
        (["--resolution", "100000"], "--resolution must be a multiple of 8 from 8 to 4096, got 100000"),
        (["--resolution", "12"], "--resolution must be a multiple of 8"),
        (["--threads", "0"], "--threads must be at least 1, got 0"),
        (["--learning-rate", "nan"], "--learning-rate must be a finite number"),
        (["--lora-alpha", "nan"], "--lora-alpha must be a finite number"),
        (["--noise-offset", "inf"], "--noise-offset must be a finite number"),
    ],
)
def test_train_bad_input_before_any_work(capsys, tmp_path, photos, args, needle):
    (tmp_path / "file").write_text("x")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    argv = ["train", "--base", "toy", "--images", photos, "--class-noun", "dog", "--out", tmp_path / "o", *args]
    line = bad(capsys, argv)
    assert needle in line, line
    assert not (tmp_path / "o").exists()


def test_train_resolution_beyond_the_base(capsys, tmp_path, photos):
    argv = ["train", "--base", "toy", "--images", photos, "--class-noun", "dog", "--out", tmp_path / "o",
            "--resolution", "1024"]
    assert "more than 4× this model's native 32 pixels" in bad(capsys, argv)


def test_train_toy_base_on_photos_says_what_it_knows(capsys, tmp_path, photos):
    """`--base toy` is accepted; on photos of anything else the output says the toy base knows only toys,
    and without --class-noun, which prompt it trains on."""
    argv = ["train", "--base", "toy", "--images", photos, "--out", tmp_path / "o", "--steps", "1",
            "--validation-images", "0", "--quiet", "--threads", "1"]
    assert run([str(a) for a in argv]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("steerguide: warning:")]
    assert any("toy base model knows only the toy world" in w and "stable-diffusion" in w for w in warnings)
    assert any("no --class-noun: training on 'a photo of sks'" in w for w in warnings), err


def test_sigint_to_train_keeps_the_checkpoint_and_resume_continues(tmp_path, photos):
    import json

    from steerguide.train.trainer import checkpoints

    out, steps = tmp_path / "run", 30
    argv = ["train", "--base", "toy", "--images", photos, "--class-noun", "dog", "--out", out, "--steps",
            steps, "--checkpoint-every", "2", "--checkpoints-total-limit", "1", "--validation-images", "0",
            "--threads", "1", "--quiet"]
    code, err = _interrupt_when(argv, lambda: bool(checkpoints(out)))
    lines = [line for line in err.splitlines() if line.startswith("steerguide:") and "warning" not in line]
    assert code == 130 and "Traceback" not in err, err
    kept = checkpoints(out)
    assert len(lines) == 1 and lines[0] == (
        f"steerguide: interrupted: the checkpoint at step {kept[-1].name[5:]} is kept in {kept[-1]}; "
        "run the same command with --resume to continue from it"
    ), err
    assert not (out / "train.json").exists() and not list((out / "checkpoints").glob("*.tmp"))
    step = int(kept[-1].name[5:])
    assert run([str(a) for a in [*argv, "--resume"]]) == 0
    record = json.loads((out / "train.json").read_text())
    assert record["steps"] == steps and record["resumed_from"] == [step] and len(record["losses"]) == steps


# -- report and evaluate -------------------------------------------------------------------------------


@pytest.fixture
def sweep_folder(tmp_path):
    """A sweep output by hand: 14 settings × 3 prompts, one image missing, one corrupt."""
    from PIL import Image

    from steerguide.evaluate.results import ResultsStore

    folder = tmp_path / "sweep"
    (folder / "images").mkdir(parents=True)
    rows = []
    for s in range(14):
        for p in range(3):
            image = f"images/{s}-{p}.png"
            Image.new("RGB", (8, 8), (s * 10, p * 50, 0)).save(folder / image)
            rows.append({"key": f"{s}-{p}", "method": "pg", "scale": 1.0 + s, "omega": 0.5,
                         "omega_schedule": "constant", "interval": [0.0, 1.0], "subject": "dog", "seed": 0,
                         "prompt": f"prompt {p}", "prompt_index": p, "image": image,
                         "metrics": {"dino": 0.1 * s, "clip_t": 0.2}})
    ResultsStore(folder / "results.jsonl").append(rows)
    (folder / "images" / "0-0.png").unlink()
    (folder / "images" / "1-1.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    return folder


def test_report_splits_grids_and_names_blank_cells(capsys, sweep_folder):
    assert run(["report", str(sweep_folder), "--max-columns", "12", "--max-prompts", "2"]) == 0
    err = capsys.readouterr().err
    grids = sorted(p.name for p in (sweep_folder / "report").glob("grid_*.png"))
    assert grids == ["grid_dog.png", "grid_dog_2.png", "grid_dog_3.png", "grid_dog_4.png"]  # 2×2 parts
    assert "dog: 4 grids (at most 2 prompts × 12 settings each" in err
    assert "2 grid cell(s) left blank" in err and "0-0.png" in err and "1-1.png" in err
    assert "left blank" in (sweep_folder / "report" / "index.html").read_text()


@pytest.mark.parametrize("where", ["/proc/steerguide-x", "file"])
def test_report_out_checked_first(capsys, sweep_folder, tmp_path, where):
    (tmp_path / "file").write_text("x")
    out = where if where.startswith("/") else tmp_path / where
    assert "report folder" in bad(capsys, ["report", sweep_folder, "--out", out])
    assert not (sweep_folder / "report").exists()


def _generated(tmp_path):
    """A folder as `generate` leaves it (run.json with each file's prompt), without running a model."""
    import json

    from PIL import Image

    folder = tmp_path / "gen"
    folder.mkdir()
    images = []
    for k, prompt in enumerate(["a red circle", "a blue square"]):
        Image.new("RGB", (32, 32), (200, 0, 0) if k == 0 else (0, 0, 200)).save(folder / f"{k}.png")
        images.append({"file": f"{k}.png", "prompt": prompt})
    (folder / "run.json").write_text(json.dumps({"images": images}))
    return folder


def test_evaluate_reads_prompts_from_run_json(capsys, tmp_path):
    import json

    folder = _generated(tmp_path)
    assert run(["evaluate", "--images", str(folder), "--metrics", "toy_text", "--out", str(tmp_path / "s.json")]) == 0
    data = json.loads((tmp_path / "s.json").read_text())
    assert [d["prompt"] for d in data["images"]] == ["a red circle", "a blue square"]
    # an earlier evaluate output is replaced; any other file or a folder is refused before scoring
    assert run(["evaluate", "--images", str(folder), "--metrics", "toy_text", "--out", str(tmp_path / "s.json")]) == 0


@pytest.mark.parametrize(
    "case,needle",
    [
        ("out-proc", "is not writable"),
        ("out-folder", "is a folder; give a file name"),
        ("out-other-file", "exists and is not an earlier evaluate output"),
        ("corrupt-image", "cannot read image"),
        ("corrupt-reference", "cannot read image"),
        ("device-cuda", "no CUDA GPU"),
        ("offline-dino", "give local weights with --model dino=FOLDER"),
    ],
)
def test_evaluate_bad_input(capsys, tmp_path, monkeypatch, case, needle):
    import torch
    from PIL import Image

    if case == "device-cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    folder = _generated(tmp_path)
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.new("RGB", (32, 32)).save(refs / "r.png")
    (tmp_path / "other.txt").write_text("my notes")
    argv = ["evaluate", "--images", folder, "--metrics", "toy_text"]
    extra = {
        "out-proc": ["--out", "/proc/steerguide-x/s.json"],
        "out-folder": ["--out", refs],
        "out-other-file": ["--out", tmp_path / "other.txt"],
        "corrupt-image": [],
        "corrupt-reference": ["--metrics", "toy_fidelity", "--references", refs],
        "device-cuda": ["--device", "cuda"],
        "offline-dino": ["--metrics", "dino", "--references", refs],
    }[case]
    if case == "corrupt-image":
        (folder / "1.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    if case == "corrupt-reference":
        (refs / "z.png").write_bytes(b"not an image")
    if case == "offline-dino":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    line = bad(capsys, [*argv, *extra])
    assert needle in line, line
    if case.startswith("corrupt"):
        assert ("1.png" if case == "corrupt-image" else "z.png") in line
    assert (tmp_path / "other.txt").read_text() == "my notes"


# -- toyworld ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["toyworld", "render", "{tmp}/r", "--n", "0"], "Invalid value for '--n'"),
        (["toyworld", "render", "{tmp}/r", "--n", "-5"], "Invalid value for '--n'"),
        (["toyworld", "render", "{tmp}/r", "--n", "100000000"], "Invalid value for '--n'"),
        (["toyworld", "render", "/proc/steerguide-x"], "is not writable"),
        (["toyworld", "render", "{tmp}/file"], "is not writable: it is a file"),
        (["toyworld", "check-judges", "--n", "0"], "Invalid value for '--n'"),
        (["toyworld", "check-base", "--n", "-3"], "Invalid value for '--n'"),
        (["toyworld", "check-base", "--guidance-scale", "-5"], "--guidance-scale must be at least 0"),
        (["toyworld", "check-base", "--guidance-scale", "nan"], "--guidance-scale must be a finite number"),
        (["toyworld", "check-base", "--grid", "/proc/steerguide-x.png"], "--grid"),
        (["toyworld", "check-base", "--json", "{tmp}"], "--json {tmp} is a folder"),
        (["toyworld", "check-base", "--model", "{tmp}/truncated"], "cannot load the pipeline at"),
        (["toyworld", "judge", "{tmp}/imgs", "--prompt", "a red circle", "--out", "{tmp}"], "is a folder"),
        (["toyworld", "judge", "{tmp}/imgs", "--prompt", "a red circle", "--out", "/proc/x/j"], "not writable"),
        (["toyworld", "train-base", "--out", "/proc/steerguide-x"], "--out /proc/steerguide-x is not writable"),
        (["toyworld", "train-base", "--out", "{tmp}/file"], "--out {tmp}/file is not writable: it is a file"),
        (["toyworld", "train-base", "--out", "{tmp}/o", "--work", "{tmp}/file"], "--work {tmp}/file is not"),
        (["toyworld", "train-base", "--out", "{tmp}/imgs"], "holds no pipeline"),
        (["toyworld", "train-judge", "--out", "/proc/steerguide-x"], "not writable"),
        (["toyworld", "train-judge", "--out", "{tmp}"], "is a folder"),
        (["toyworld", "train-judge", "--out", "{tmp}/file"], "exists and is not fidelity judge weights"),
    ],
)
def test_toyworld_bad_input_before_any_work(capsys, tmp_path, monkeypatch, argv, needle):
    import shutil

    from PIL import Image

    from steerguide.toyworld import base_model_path

    # train-base's default --work is relative: look for it here, not wherever the suite was started (a
    # toyworld_build left there by anything else failed every case)
    monkeypatch.chdir(tmp_path)

    (tmp_path / "file").write_text("x")
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "imgs" / "a.png")
    if "{tmp}/truncated" in argv:  # the shipped pipeline with its UNet weights cut short
        truncated = tmp_path / "truncated"
        shutil.copytree(base_model_path(), truncated)
        weights = truncated / "unet" / "diffusion_pytorch_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    line = bad(capsys, argv)
    assert needle.replace("{tmp}", str(tmp_path)) in line, line
    assert (tmp_path / "file").read_text() == "x" and not (tmp_path / "r").exists()
    assert not (tmp_path / "o").exists() and not (tmp_path / "toyworld_build").exists()


@pytest.mark.parametrize("sig", ["SIGINT", "SIGKILL"])
def test_sigint_to_render_leaves_a_manifest_of_what_was_made(tmp_path, sig):
    import json

    out = tmp_path / "r"
    code, err = _interrupt_when(["toyworld", "render", out, "--n", "100000"],
                                lambda: len(list(out.glob("*.png"))) >= 3, sig=sig)
    listed = [json.loads(line)["image"] for line in (out / "prompts.jsonl").read_text().splitlines()]
    if sig == "SIGINT":
        assert code == 130 and "Traceback" not in err, err
        assert f"steerguide: interrupted: the first {len(listed)} images are in {out}, listed in" in err, err
    else:
        assert code == -9
    assert listed and all((out / name).is_file() for name in listed)
    assert len(list(out.glob("*.png"))) - len(listed) in (0, 1)  # the image whose line was next


@pytest.mark.parametrize("option", ["--max-prompts", "--max-columns"])
def test_report_grid_sizes_same_message_in_cli_and_api(capsys, sweep_folder, option):
    from steerguide.errors import UserError
    from steerguide.evaluate.report import write_report

    line = bad(capsys, ["report", sweep_folder, option, "0"])
    assert line == f"steerguide: error: {option} must be at least 1, got 0"
    with pytest.raises(UserError) as raised:
        write_report(sweep_folder, **{option[2:].replace("-", "_"): 0})
    assert str(raised.value) == line.removeprefix("steerguide: error: ")


def test_closed_pipe_is_quiet(capsys, monkeypatch):
    """`steerguide ... | head`: the reader leaving is no error to report."""
    import steerguide.toyworld.subjects as subjects

    def closed(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(subjects, "get_subject", closed)
    assert run(["toyworld", "prompts", "sks"]) == 1
    assert capsys.readouterr().err == ""
