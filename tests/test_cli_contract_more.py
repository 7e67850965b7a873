"""More of the CLI's contract (docs/cli.md; issue 29, "Also"): the lines a command prints whole at any
terminal width, and bad input that used to end as an internal error, a kill, a silent default or a
record that lies, each now one line and exit 2 before any work.

Every case runs in-process (`steerguide.cli.run`); most load no model."""

from __future__ import annotations

import os
import re
import struct
import zlib
from pathlib import Path

import pytest
import yaml

from steerguide.cli import run

SAMPLE = Path("/work/shared/dreambench-sample")
SRC = Path(__file__).resolve().parents[1] / "src" / "steerguide"
FAKE_METRICS = ["steerguide.testing.sweep:MeanColorFidelity", "steerguide.testing.sweep:BrightnessText"]
needs_sample = pytest.mark.skipif(not SAMPLE.is_dir(), reason="DreamBench sample not present")


def _lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def bad(capsys, argv: list, code: int = 2) -> str:
    """Run `argv`; it must fail with `code` and exactly one `steerguide: error: ...` line on stderr."""
    got = run([str(a) for a in argv])
    err = _lines(capsys)
    assert got == code, err
    assert len(err) == 1 and err[0].startswith("steerguide: error: "), err
    assert "internal error" not in err[0], err
    return err[0]


def fake_sweep(**changes) -> dict:
    data = {
        "base": "unused-base",
        "benchmark": {"name": "dreambench", "root": str(SAMPLE), "subjects": ["dog", "teapot"], "num_prompts": 3},
        "guidance": {"cfg": {"scale": [1.0, 3.0]}, "pg": {"scale": 3.0, "omega": [0.0, 0.5]}},
        "seeds": 2,
        "metrics": FAKE_METRICS,
        "sampler": "steerguide.testing.sweep:NoiseSampler",
    }
    data.update(changes)
    return data


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


# -- terminal width: what a command prints is read whole, never wrapped --------------------------------


@pytest.fixture(params=["COLUMNS", "terminal"])
def narrow(request, monkeypatch):
    """A 40-column world: COLUMNS=40, or a terminal of 40 columns inherited on the standard streams (as
    an xdist worker's)."""
    if request.param == "COLUMNS":
        monkeypatch.setenv("COLUMNS", "40")
    else:
        monkeypatch.delenv("COLUMNS", raising=False)
        monkeypatch.setattr(os, "get_terminal_size", lambda fd=None: os.terminal_size((40, 24)))


@needs_sample
def test_lines_and_tables_are_whole_at_any_width(tmp_path, capsys, narrow):
    config = write_yaml(tmp_path / "s.yaml", fake_sweep())
    assert run(["sweep", str(config), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert capsys.readouterr().err.strip() == (
        "48 rows (4 settings × 2 seeds × 3 prompts × 2 subjects), 0 done, 48 to run"
    )
    assert run(["sweep", str(config), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert "new rows (0 of 48 done before) in " in capsys.readouterr().err
    assert run(["report", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert f"report: {tmp_path / 'out' / 'report' / 'index.html'}" in printed
    assert re.search(r"│ pg w=3 ω=0\.5 +│ +12 │", printed), printed


def test_every_console_comes_from_the_one_factory():
    """A rich Console made elsewhere would take the terminal's width again (progress.console)."""
    made = [
        f"{path.relative_to(SRC)}:{n}"
        for path in SRC.rglob("*.py")
        if path.name != "progress.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bConsole\(", line)
    ]
    assert made == []


# -- inputs that ended as "internal error" (exit 1) ----------------------------------------------------


def write_bomb(path: Path, side: int = 30000) -> Path:
    """A PNG whose header says side × side pixels (a decompression bomb): 100 bytes on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture
def folders(tmp_path):
    """`good/`: one readable 32×32 image; `bombs/`: one readable image and a 30000×30000 bomb."""
    from PIL import Image

    good, bombs = tmp_path / "good", tmp_path / "bombs"
    for folder in (good, bombs):
        folder.mkdir()
        Image.new("RGB", (32, 32), (200, 0, 0)).save(folder / "a.png")
    write_bomb(bombs / "b.png")
    return good, bombs


TORCH_SEEDS = ["18446744073709551615", str(2**70), "-1", "4294967296"]


@pytest.mark.parametrize("seed", TORCH_SEEDS)
def test_generate_seed_outside_the_range(capsys, tmp_path, seed):
    line = bad(capsys, ["generate", "--method", "cfg", "-p", "x", "--seed", seed, "--out", tmp_path / "o"])
    assert f"--seed must be an integer from 0 to 4294967295, got {seed}" in line
    assert not (tmp_path / "o").exists()


def test_generate_seed_whose_last_image_is_outside(capsys, tmp_path):
    line = bad(capsys, ["generate", "--method", "cfg", "-p", "x", "--seed", "4294967295", "--num-images", "2",
                        "--out", tmp_path / "o"])
    assert "from 0 to 4294967295 (less 1: its 2 images use seed + 0 ... seed + 1)" in line


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--toy", "sks_star", "--seed", "-1", "--out", "{tmp}/o"],
        ["toyworld", "render", "{tmp}/o", "--seed", "-5"],
        ["toyworld", "render", "{tmp}/o", "--seed", "4294967295", "--n", "2"],
        ["toyworld", "train-judge", "--out", "{tmp}/o/j.safetensors", "--seed", str(2**64)],
        ["toyworld", "train-base", "--out", "{tmp}/o", "--seed", "-3"],
    ],
)
def test_seed_outside_the_range_in_every_command(capsys, tmp_path, argv):
    line = bad(capsys, [a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert "--seed must be an integer from 0 to 4294967295" in line, line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "seeds,needle",
    [
        ([0, 2**70], "config key seeds: each seed must be an integer from 0 to 4294967295, got 1180591620717411303424"),
        ([-1], "config key seeds: each seed must be an integer from 0 to 4294967295, got -1"),
        (10**12, "config key seeds must be a count from 1 to 10000, got 1000000000000"),
    ],
)
def test_sweep_seeds_outside_the_range(capsys, tmp_path, seeds, needle):
    config = write_yaml(tmp_path / "s.yaml", fake_sweep(seeds=seeds))
    assert needle in bad(capsys, ["sweep", config, "--out", tmp_path / "out", "--dry-run"])


@needs_sample
def test_sweep_of_too_many_rows_is_refused_before_they_are_made(capsys, tmp_path):
    from steerguide.sweep.grid import MAX_ROWS

    scales = [1.0 + k / 100 for k in range(MAX_ROWS // (10_000 * 6) + 1)]
    config = write_yaml(tmp_path / "s.yaml", fake_sweep(seeds=10_000, guidance={"cfg": {"scale": scales}}))
    line = bad(capsys, ["sweep", config, "--out", tmp_path / "out", "--dry-run"])
    assert f"more than {MAX_ROWS}: give fewer settings, seeds, prompts or subjects" in line


def _bomb_line(line: str, bomb: Path) -> None:
    assert f"{bomb} has 900,000,000 pixels, more than the 178,956,970 that steerguide opens" in line, line
    assert "decompression-bomb limit" in line


def test_decompression_bomb_in_train_evaluate_and_judge(capsys, tmp_path, folders):
    good, bombs = folders
    bomb = bombs / "b.png"
    line = bad(capsys, ["train", "--base", "toy", "--images", bombs, "--class-noun", "dog", "--out", tmp_path / "t"])
    _bomb_line(line, bomb)
    assert not (tmp_path / "t").exists()
    _bomb_line(bad(capsys, ["evaluate", "--images", bombs, "--metrics", "toy_text", "--prompt", "a red circle"]), bomb)
    _bomb_line(bad(capsys, ["evaluate", "--images", good, "--metrics", "toy_fidelity", "--references", bombs,
                            "--prompt", "a red circle"]), bomb)
    _bomb_line(bad(capsys, ["toyworld", "judge", bombs, "--prompt", "a red circle"]), bomb)


def test_decompression_bomb_in_a_report_is_a_blank_cell_that_says_why(capsys, tmp_path):
    from PIL import Image

    from steerguide.evaluate.results import ResultsStore

    folder = tmp_path / "sweep"
    (folder / "images").mkdir(parents=True)
    rows = []
    for s in range(2):
        image = f"images/{s}.png"
        Image.new("RGB", (8, 8), (s * 100, 0, 0)).save(folder / image)
        rows.append({"key": str(s), "method": "cfg", "scale": 1.0 + s, "omega": None, "omega_schedule": None,
                     "interval": [0.0, 1.0], "subject": "dog", "seed": 0, "prompt": "p", "prompt_index": 0,
                     "image": image, "metrics": {"dino": 0.1 * s, "clip_t": 0.2}})
    write_bomb(folder / "images" / "1.png")
    ResultsStore(folder / "results.jsonl").append(rows)
    assert run(["report", str(folder)]) == 0
    notes = [line for line in _lines(capsys) if "left blank" in line]
    assert len(notes) == 1 and f"{folder / 'images' / '1.png'} (over Pillow's decompression-bomb limit)" in notes[0]


def test_report_row_with_a_string_score(capsys, tmp_path):
    from steerguide.evaluate.results import ResultsStore

    row = {"key": "k1", "method": "cfg", "scale": 3.0, "omega": None, "interval": [0.0, 1.0], "subject": "dog",
           "seed": 0, "prompt": "p", "prompt_index": 0, "image": "images/x.png",
           "metrics": {"dino": "0.5", "clip_t": 0.2}}
    ResultsStore(tmp_path / "results.jsonl").append([row])
    line = bad(capsys, ["report", tmp_path])
    assert f"{tmp_path / 'results.jsonl'}: row k1: metrics.dino is '0.5', not a score (a number or null)" in line
    ResultsStore(tmp_path / "r2" / "results.jsonl").append([{**row, "metrics": {}, "scale": "3"}])
    assert "row k1: scale is '3', not a number" in bad(capsys, ["report", tmp_path / "r2"])


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\xff garbage", b"[1, 2, 3]", b'{"k": "v"}'])
def test_check_personalization_garbage_cache(capsys, tmp_path, content):
    from steerguide.toyworld.assets import shipped_personalizations_path

    (shipped,) = [p for p in shipped_personalizations_path().iterdir() if p.is_dir()]
    cache = tmp_path / "cache.json"
    cache.write_bytes(content)
    line = bad(capsys, ["toyworld", "check-personalization", shipped, "--cache", cache])
    assert f"--cache '{cache}' is not a JSON file of this command" in line
    assert cache.read_bytes() == content


def test_sweep_config_not_utf8(capsys, tmp_path):
    config = tmp_path / "s.yaml"
    config.write_bytes(b"base: toy\nbenchmark: \xff\xfe\x00dreambench\n")
    line = bad(capsys, ["sweep", config, "--out", tmp_path / "out", "--dry-run"])
    assert f"sweep config '{config}' is not UTF-8 text (byte 21)" in line


def test_train_class_data_dir_unwritable(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    argv = ["train", "--toy", "sks_star", "--prior-preservation", "--out", tmp_path / "o"]
    assert "--class-data-dir /proc/steerguide-x is not writable" in bad(
        capsys, [*argv, "--class-data-dir", "/proc/steerguide-x"])
    assert f"--class-data-dir {tmp_path / 'file'} is not a folder" in bad(
        capsys, [*argv, "--class-data-dir", tmp_path / "file"])
    assert not (tmp_path / "o").exists()


# -- killed without a word: refused up front with the limit -----------------------------------------------


def test_generate_steps_beyond_the_limit(capsys, tmp_path):
    line = bad(capsys, ["generate", "--method", "cfg", "-p", "x", "--steps", "1000000000", "--out", tmp_path / "o"])
    assert line.endswith("--steps must be at most 10000, got 1e+09")
    config = write_yaml(tmp_path / "s.yaml", fake_sweep(sampling={"steps": 10**9}))
    assert "config key sampling.steps must be at most 10000" in bad(
        capsys, ["sweep", config, "--out", tmp_path / "out", "--dry-run"])


def test_train_rank_beyond_the_limit(capsys, tmp_path):
    line = bad(capsys, ["train", "--toy", "sks_star", "--rank", "100000", "--out", tmp_path / "o"])
    assert "--rank must be at most 1024 (got 100000)" in line
    assert not (tmp_path / "o").exists()


# -- nonsense that was accepted silently ---------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_lora(tmp_path_factory):
    from steerguide.loading import load_pipeline
    from steerguide.testing import save_random_lora
    from steerguide.toyworld import base_model_path

    return save_random_lora(load_pipeline(base_model_path()), tmp_path_factory.mktemp("toy-lora"), seed=2, std=0.1)


@pytest.fixture(scope="module")
def sdxl_lora(tiny_model_dir, tmp_path_factory):
    """A LoRA of (a tiny) SDXL: it has no place in the toy base."""
    from steerguide.loading import load_pipeline
    from steerguide.testing import save_random_lora

    return save_random_lora(load_pipeline(tiny_model_dir("sdxl")), tmp_path_factory.mktemp("sdxl-lora"))


@pytest.fixture
def nan_lora(toy_lora, tmp_path):
    from safetensors.torch import load_file, save_file

    (file,) = toy_lora.glob("*.safetensors")
    state = load_file(file)
    name = sorted(k for k in state if "lora_B" in k)[3]
    state[name][0, 0] = float("nan")
    (tmp_path / "nan").mkdir()
    save_file(state, tmp_path / "nan" / file.name)
    return tmp_path / "nan"


@pytest.mark.parametrize(
    "option",
    [["--fidelity-metric", "bogus"], ["--height", "7"], ["--device", "cuda"], ["--scheduler", "Bogus"],
     ["--dtype", "float16"], ["--model", "dino=x"], ["--token", "zzz"]],
)
def test_tune_toy_refuses_the_options_it_would_drop(capsys, tmp_path, option):
    line = bad(capsys, ["tune", "--toy", "sks_star", "--out", tmp_path / "o", *option])
    assert f"--toy takes no {option[0]} (the toy judges score" in line
    assert not (tmp_path / "o").exists()


def test_tune_with_a_lora_of_another_base_refuses_before_any_folder(capsys, tmp_path, sdxl_lora):
    line = bad(capsys, ["tune", "--toy", "sks_star", "--personalization", sdxl_lora, "--out", tmp_path / "o",
                        "--steps", "2", "--num-prompts", "1"])
    assert f"LoRA {sdxl_lora}" in line and "does not fit this base model" in line
    assert not (tmp_path / "o").exists()


def toy_sweep(**changes) -> dict:
    data = {
        "base": "toy",
        "benchmark": {"name": "toy", "subjects": ["sks_star"], "num_prompts": 1},
        "guidance": {"cfg": {"scale": 3.0}},
        "metrics": ["toy_text"],
        "sampling": {"steps": 2},
    }
    data.update(changes)
    return data


SWEEP_CASES = [
    ("base", "config key base: /nonexistent/base does not exist"),
    ("personalization", "config key personalization.paths: /nonexistent/lora does not exist"),
    ("sdxl-lora", "does not fit this base model"),  # a run finds out on loading (the test after this one)
    ("device", "device 'cuda' asked for, but this machine has no CUDA GPU"),
    ("dtype", "unknown dtype 'float64'"),
    ("sampler", "config key sampler: cannot import 'steerguide.testing.sweep:NoSuchSampler'"),
    ("scheduler", "unknown scheduler 'Bogus'"),
    ("train-keys", "config key personalization.train.stepz: unknown key"),
]


@pytest.mark.parametrize(
    "case,needle,dry_run",
    [(*c, True) for c in SWEEP_CASES] + [(*c, False) for c in SWEEP_CASES if c[0] != "sdxl-lora"],
)
def test_sweep_checks_everything_before_any_folder(capsys, tmp_path, sdxl_lora, case, needle, dry_run):
    import torch

    if case == "device" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    changes = {
        "base": {"base": "/nonexistent/base"},
        "personalization": {"personalization": {"paths": "/nonexistent/lora"}},
        "sdxl-lora": {"personalization": {"paths": {"*": str(sdxl_lora)}}},
        "device": {"device": "cuda"},
        "dtype": {"dtype": "float64"},
        "sampler": {"sampler": "steerguide.testing.sweep:NoSuchSampler"},
        "scheduler": {"sampling": {"steps": 2, "scheduler": "Bogus"}},
        "train-keys": {"personalization": {"train": {"stepz": 5}}},
    }[case]
    config = write_yaml(tmp_path / "s.yaml", toy_sweep(**changes))
    line = bad(capsys, ["sweep", config, "--out", tmp_path / "out", *(["--dry-run"] if dry_run else [])])
    assert needle in line, line
    assert not (tmp_path / "out").exists()


def test_a_sweep_refused_on_loading_leaves_no_folder(capsys, tmp_path, sdxl_lora):
    config = write_yaml(tmp_path / "s.yaml", toy_sweep(personalization={"paths": {"*": str(sdxl_lora)}}))
    assert "does not fit this base model" in bad(capsys, ["sweep", config, "--out", tmp_path / "out"])
    assert not (tmp_path / "out").exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    bad(capsys, ["sweep", config, "--out", tmp_path / "kept"])
    assert (tmp_path / "kept" / "notes.txt").read_text() == "mine"  # a folder it did not create stays


def test_lora_with_nan_weights_is_refused(capsys, tmp_path, nan_lora):
    line = bad(capsys, ["generate", "--personalization", nan_lora, "-p", "a red circle", "--steps", "1",
                        "--out", tmp_path / "o"])
    assert f"LoRA {nan_lora}" in line and "holds NaN or infinite weights" in line
    assert not (tmp_path / "o").exists()


def _preset(tmp_path, text: str) -> Path:
    path = tmp_path / "preset.yaml"
    path.write_text("kind: steerguide-preset\nversion: 1\nguidance: {method: pg, scale: 4.0, omega: 0.3}\n" + text)
    return path


@pytest.mark.parametrize(
    "text,needle",
    [
        ("omga: 0.5\n", "key omga: unknown"),
        ("guidance: {method: cfg, scale: 2.0}\n", "key 'guidance' is given twice (lines 3 and 4)"),
        ("scores: {a: 1, a: 2}\n", "key 'a' is given twice (lines 4 and 4)"),
    ],
)
def test_preset_with_an_unknown_or_repeated_key(capsys, tmp_path, text, needle):
    preset = _preset(tmp_path, text)
    line = bad(capsys, ["generate", "--preset", preset, "-p", "x", "--out", tmp_path / "o"])
    assert str(preset) in line and needle in line, line


def free_port() -> str:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def test_ui_refuses_before_serving(capsys, tmp_path, monkeypatch, sdxl_lora):
    import steerguide.ui.app

    def served(*args, **kwargs):
        raise AssertionError("the server was started")

    monkeypatch.setattr(steerguide.ui.app, "launch", served)
    (tmp_path / "file").write_text("x")
    assert "--workdir /proc/steerguide-x is not writable" in bad(capsys, ["ui", "--workdir", "/proc/steerguide-x"])
    assert f"--workdir {tmp_path / 'file'} is not writable: it is a file" in bad(
        capsys, ["ui", "--workdir", tmp_path / "file"])
    line = bad(capsys, ["ui", "--personalization", sdxl_lora, "--workdir", tmp_path / "w", "--port", free_port()])
    assert f"LoRA {sdxl_lora}" in line and "does not fit this base model" in line
    assert bad(capsys, ["ui", "--host", "999.1.1.1", "--workdir", tmp_path / "w"]) == (
        "steerguide: error: --host 999.1.1.1 is not an address or host name")
    assert "--host 192.0.2.1 is not an address of this machine" in bad(
        capsys, ["ui", "--host", "192.0.2.1", "--workdir", tmp_path / "w"])
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "option,needle",
    [
        (["--snr-gamma", "-5"], "--snr-gamma must be positive (got -5)"),
        (["--snr-gamma", "0"], "--snr-gamma must be positive (got 0)"),
        (["--max-grad-norm", "-1"], "--max-grad-norm must not be negative (got -1); 0 turns clipping off"),
    ],
)
def test_train_negative_loss_options(capsys, tmp_path, option, needle):
    assert needle in bad(capsys, ["train", "--toy", "sks_star", "--out", tmp_path / "o", *option])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("option", [["--omega", "0.3"], ["--omega-schedule", "linear:1"]])
def test_generate_cfg_refuses_omega(capsys, tmp_path, option):
    line = bad(capsys, ["generate", "--method", "cfg", *option, "-p", "x", "--out", tmp_path / "o"])
    assert "--omega and --omega-schedule are for --method pg or ag" in line


# -- records that lie, or data mixed --------------------------------------------------------------------


def test_generate_refuses_a_folder_another_run_is_writing(capsys, tmp_path):
    from steerguide.files import FolderLock

    out = tmp_path / "o"
    other = FolderLock(out, "output folder").acquire()  # as a second process's generate holds it
    try:
        line = bad(capsys, ["generate", "--method", "cfg", "-p", "x", "--steps", "1", "--out", out])
        assert f"output folder {out} is being written by another steerguide process (pid {os.getpid()})" in line
        assert [p.name for p in out.iterdir()] == [".steerguide.lock"]  # nothing of ours
    finally:
        other.release()
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:  # the command's --threads must not outlive it (tests and notebooks run it in-process)
        assert run(["generate", "--method", "cfg", "-p", "x", "--steps", "1", "--threads", "1", "--out", str(out)]) == 0
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    assert sorted(p.name for p in out.iterdir()) == ["000-x-00.png", "run.json"]  # the lock is gone


def test_generate_lock_is_free_after_a_kill(tmp_path):
    """A holder that died leaves the lock file, but not the lock (the kernel drops flocks with the process)."""
    import subprocess
    import sys

    out = tmp_path / "o"
    code = ("import sys, time; sys.path.insert(0, sys.argv[2]); from steerguide.files import FolderLock; "
            "FolderLock(sys.argv[1], 'x').acquire(); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out), str(SRC.parent)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        from steerguide.errors import UserError
        from steerguide.files import FolderLock

        with pytest.raises(UserError, match="being written by another steerguide process"):
            FolderLock(out, "output folder").acquire()
    finally:
        proc.kill()
        proc.wait()
    assert (out / ".steerguide.lock").exists()
    FolderLock(out, "output folder").acquire().release()


def test_constant_schedule_value_is_what_is_recorded(capsys, tmp_path):
    line = bad(capsys, ["generate", "--omega", "0.5", "--omega-schedule", "constant:0.3", "-p", "x",
                        "--out", tmp_path / "o"])
    assert "omega schedule 'constant:0.3' holds ω at 0.3, but --omega is 0.5" in line
    from steerguide.guidance import GuidanceConfig

    config = GuidanceConfig("pg", omega_schedule="constant:0.3")
    assert config.describe()["omega"] == 0.3 and config.omega_at(0.5) == 0.3


@pytest.mark.parametrize(
    "option,needle",
    [
        (["--class-noun", "dragon"], "--class-noun dragon: toy subject kfp_star trains on 'a kfp star'; give --instance-prompt"),
        (["--token", "qqq"], "--token qqq: toy subject kfp_star trains on 'a kfp star'"),
        (["--instance-prompt", ""], "--instance-prompt is empty"),
        (["--instance-prompt", "  "], "--instance-prompt is empty"),
        (["--resume", "--overwrite"], "give --resume (continue --out) or --overwrite (replace it), not both"),
    ],
)
def test_train_options_that_the_record_would_contradict(capsys, tmp_path, option, needle):
    assert needle in bad(capsys, ["train", "--toy", "kfp_star", "--out", tmp_path / "o", *option])
    assert not (tmp_path / "o").exists()


# -- refused, but not cleanly / more accepted nonsense ------------------------------------------------------


def test_evaluate_images_given_a_file(capsys, folders):
    good, _ = folders
    line = bad(capsys, ["evaluate", "--images", good / "a.png", "--metrics", "toy_text", "--prompt", "a red circle"])
    assert f"images folder '{good / 'a.png'}' is not a folder" in line


def test_blank_prompts_file_names_the_file(capsys, tmp_path):
    blank = tmp_path / "prompts.txt"
    blank.write_text("\n  \n# a comment\n")
    for argv in (["tune", "--toy", "sks_star", "--out", tmp_path / "o"], ["generate", "--method", "cfg",
                                                                           "--out", tmp_path / "o"]):
        line = bad(capsys, [*argv, "--prompts-file", blank])
        assert f"prompts file {blank} holds no prompt" in line and "--prompt " not in line
    assert not (tmp_path / "o").exists()


def test_prompts_file_bom_is_no_prompt_text(tmp_path):
    from steerguide.files import read_prompts as _read_prompts

    path = tmp_path / "prompts.txt"
    path.write_bytes("\ufeffa red circle\na blue square\n".encode())
    assert _read_prompts([], path) == ["a red circle", "a blue square"]


@pytest.mark.parametrize("start,stop", [("1", "1"), ("0.5", "0.5"), ("0", "0")])
def test_empty_guidance_interval(capsys, tmp_path, start, stop):
    line = bad(capsys, ["generate", "--guidance-start", start, "--guidance-stop", stop, "-p", "x",
                        "--out", tmp_path / "o"])
    assert f"guidance interval [{float(start):g}, {float(stop):g}] is empty: no step would be guided" in line
    config = write_yaml(tmp_path / "s.yaml", toy_sweep(guidance={"pg": {"scale": 3.0, "interval": [1, 1]}}))
    line = bad(capsys, ["sweep", config, "--out", tmp_path / "out", "--dry-run"])
    assert "config key guidance.pg.interval [1, 1] is empty" in line


def test_sweep_with_no_subjects(capsys, tmp_path):
    config = write_yaml(tmp_path / "s.yaml", toy_sweep(benchmark={"name": "toy", "subjects": []}))
    assert "config key benchmark.subjects: an empty list makes no rows" in bad(
        capsys, ["sweep", config, "--out", tmp_path / "out", "--dry-run"])


def test_evaluate_model_for_a_toy_judge(capsys, folders):
    good, _ = folders
    line = bad(capsys, ["evaluate", "--images", good, "--metrics", "toy_text", "--prompt", "a red circle",
                        "--model", "toy_text=foo"])
    assert "--model 'toy_text=foo': metric toy_text takes no model" in line
    from steerguide.errors import UserError
    from steerguide.evaluate.metrics import normalize_metric_spec

    with pytest.raises(UserError, match="metrics.toy_fidelity.model: toy_fidelity takes no model"):
        normalize_metric_spec({"toy_fidelity": {"model": "foo"}})


def test_judge_manifest_not_json_or_beside_a_prompt(capsys, folders, tmp_path):
    good, _ = folders
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    assert f"{manifest}: every line must be JSON with 'image' and 'prompt'" in bad(
        capsys, ["toyworld", "judge", good, "--manifest", manifest])
    assert "give --prompt (one prompt for every image) or --manifest, not both" in bad(
        capsys, ["toyworld", "judge", good, "--manifest", manifest, "--prompt", "a red circle"])
    assert "cannot read the manifest" in bad(capsys, ["toyworld", "judge", good, "--manifest", tmp_path])


def test_duplicate_keys_in_a_sweep_config_and_a_subjects_file(capsys, tmp_path):
    config = tmp_path / "s.yaml"
    config.write_text("base: toy\nseeds: 1\nbenchmark: {name: toy}\nguidance: {cfg: {scale: 3}}\n"
                      "metrics: [toy_text]\nseeds: 2\n")
    line = bad(capsys, ["sweep", config, "--out", tmp_path / "out", "--dry-run"])
    assert f"sweep config '{config}' is not valid YAML: key 'seeds' is given twice (lines 2 and 6)" in line
    subjects = tmp_path / "subjects.yaml"
    subjects.write_text("subjects:\n  - {token: sks, class: star, look: inset, class: heart, colors: [cyan, navy]}\n")
    line = bad(capsys, ["toyworld", "info", "--subjects-file", subjects])
    assert f"{subjects}: not valid YAML at line 2 (key 'class' is given twice (lines 2 and 2))" in line, line


# -- the page out of the box ----------------------------------------------------------------------------


def test_ui_with_no_arguments_compares_on_the_shipped_personalization(tmp_path, monkeypatch):
    """`steerguide ui` alone: Compare starts on the toy world's shipped LoRA and a prompt of its subject,
    so that its first Generate press gives CFG, AG and PG (it failed: "AG and PG need a personalization")."""
    import steerguide.ui.app
    from steerguide.toyworld.assets import shipped_personalizations_path

    started = {}
    monkeypatch.setattr(steerguide.ui.app, "launch", lambda studio, **kw: started.setdefault("studio", studio))
    monkeypatch.chdir(tmp_path)  # the default --workdir is relative
    assert run(["ui", "--port", free_port()]) == 0
    studio = started["studio"]
    assert Path(studio.personalization).parent == shipped_personalizations_path()
    subject = Path(studio.personalization).name.rsplit("-", 1)[0]
    assert studio.default_prompt.startswith("a " + subject.replace("_", " "))
    import types

    studio._judges = types.SimpleNamespace(score=lambda images, *_: [{} for _ in images])  # tested elsewhere
    rows = studio.compare([studio.default_prompt], methods=["cfg", "ag", "pg"], scale=5.0, omega=0.5, steps=1,
                          num_images=1, personalization=studio.personalization)
    assert [r.method for r in rows] == ["cfg", "ag", "pg"] and all(len(r.images) == 1 for r in rows)
