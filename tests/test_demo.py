"""`steerguide demo`: the real workflow (LoRA training, CFG/AG/PG sampling, judges, report) in a reduced size,
its resume, and its one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from steerguide.cli import run

toyworld = pytest.importorskip("steerguide.toyworld")

# STEERGUIDE_DEMO_BASE: run the test on another toy-architecture base (before the shipped one exists).
BASE = os.environ.get("STEERGUIDE_DEMO_BASE", "toy")
SMALL = [
    "--train-steps",
    "2",
    "--steps",
    "2",
    "--num-prompts",
    "2",
    "--seeds",
    "1",
    "--no-progress",
    "--base",
    BASE,
]


def _base_present() -> bool:
    from steerguide.sweep import resolve_base

    return (Path(resolve_base(BASE)) / "model_index.json").is_file()


needs_base = pytest.mark.skipif(not _base_present(), reason="the toy world's base model is not installed")


@needs_base
def test_demo_runs_end_to_end_and_resumes(tmp_path: Path, capsys):
    import torch

    from steerguide.demo import default_subject, demo_config
    from steerguide.sweep import parse_config

    threads = torch.get_num_threads()
    out = tmp_path / "demo"
    assert run(["demo", "--out", str(out), *SMALL]) == 0
    assert torch.get_num_threads() == threads  # --threads is the demo's, not the caller's
    captured = capsys.readouterr()
    printed = captured.out
    assert "Loading pipeline components" not in captured.err  # the demo's own bars only
    assert f"report: {out / 'report' / 'index.html'}" in printed
    for method in ("CFG", "AG", "PG"):
        assert method in printed

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    settings = {(r["method"], r["scale"], r["omega"], tuple(r["interval"])) for r in rows}
    expected = len(parse_config(demo_config(default_subject())).settings)
    assert expected == 9  # the budget: 9 settings × 16 prompts, as measured in docs/results.md
    assert len(settings) == expected and len(rows) == expected * 2  # 2 prompts, 1 seed
    assert {r["subject"] for r in rows} == {default_subject()}
    assert all(set(r["metrics"]) == {"toy_fidelity", "toy_text"} for r in rows)
    loras = list((out / "personalizations").glob("*/pytorch_lora_weights.safetensors"))
    assert len(loras) == 1
    report = out / "report"
    assert (report / "index.html").stat().st_size > 0
    assert (report / "tradeoff_toy_fidelity_vs_toy_text.png").is_file()
    assert (report / f"grid_{default_subject()}.png").is_file()
    assert len(json.loads((report / "summary.json").read_text())) == expected

    # The first picture: photos, then CFG / AG / PG / PG on the first 60% at the settings the rule chose,
    # for each prompt shown, upscaled to >= 128 px a cell; the report starts with it and the scores.
    from PIL import Image

    from steerguide.demo import SHOWCASE_CELL, choose_showcase_settings, showcase_prompts

    assert SHOWCASE_CELL >= 128
    with Image.open(report / "showcase.png") as picture:
        assert picture.width >= 5 * SHOWCASE_CELL and picture.height >= 3 * SHOWCASE_CELL
    page = (report / "index.html").read_text()
    assert page.index("showcase") < page.index("Trade-off")
    subject = toyworld.get_subject(default_subject())
    chosen = choose_showcase_settings(rows, showcase_prompts(subject, 2))
    assert sorted(chosen) == ["ag", "cfg", "pg", "pg-interval"]
    for column in chosen.values():  # 2 prompts shown, every column a cell each
        assert page.count(f"<td>{column['label']}</td>") == 2
    assert "chosen on all prompts (too few for a held-out set)" in page

    # A rerun reuses the LoRA and every row: nothing new is trained or sampled.
    mtime = loras[0].stat().st_mtime_ns
    assert run(["demo", "--out", str(out), *SMALL]) == 0
    assert f"0 new images, {len(rows)} reused" in capsys.readouterr().out
    assert loras[0].stat().st_mtime_ns == mtime
    assert len((out / "results.jsonl").read_text().splitlines()) == len(rows)

    # Another subject into the same folder would mix two demos in one report: refused.
    assert run(["demo", "--out", str(out), "--subject", "zwx_heart", *SMALL]) == 2
    assert "give the demo another --out" in capsys.readouterr().err


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("steerguide: error: ")
    return err[0]


def test_unknown_subject_is_one_line_and_exit_2(tmp_path: Path, capsys):
    assert run(["demo", "--out", str(tmp_path / "d"), "--subject", "unicorn"]) == 2
    assert "unknown subject 'unicorn'" in _one_error_line(capsys)
    assert not (tmp_path / "d").exists()


@needs_base
def test_unwritable_out_is_one_line_and_exit_2(tmp_path: Path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert run(["demo", "--out", str(blocker / "demo"), *SMALL]) == 2
    assert "cannot write to --out" in _one_error_line(capsys)


def test_bad_subjects_file_is_one_line_and_exit_2(tmp_path: Path, capsys):
    bad = tmp_path / "subjects.yaml"
    bad.write_text("subjects:\n  - {token: hto, class: heart, look: ring, colors: [red, beige]}\n")
    assert run(["demo", "--out", str(tmp_path / "d"), "--subjects-file", str(bad), "--subject", "hto"]) == 2
    assert "subject #1 (hto_heart): key colors[1]" in _one_error_line(capsys)
    assert not (tmp_path / "d").exists()


@needs_base
def test_demo_on_a_subject_of_a_subjects_file(tmp_path: Path, capsys):
    mine = tmp_path / "subjects.yaml"
    mine.write_text("subjects:\n  - {token: hto, class: heart, look: ring, colors: [red, [1, 2, 3]]}\n")
    out = tmp_path / "demo"
    assert run(["demo", "--out", str(out), "--subjects-file", str(mine), "--subject", "hto", *SMALL]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["subject"] for r in rows} == {"hto_heart"} and "a hto heart" in rows[0]["prompt"]
    assert (out / "report" / "showcase.png").is_file()


def test_shrinking_options_are_checked(tmp_path: Path, capsys):
    assert run(["demo", "--out", str(tmp_path / "d"), "--steps", "0"]) == 2
    assert "--steps must be >= 1" in _one_error_line(capsys)


def _demo_config_and_subject(name: str | None = None):
    from steerguide.demo import default_subject, demo_config
    from steerguide.evaluate.benchmarks import load_benchmark
    from steerguide.sweep import parse_config

    config = parse_config(demo_config(name or default_subject()), source="test")
    (subject,) = load_benchmark(config.benchmark).subjects
    return config, subject


@needs_base
def test_the_shipped_lora_is_the_one_the_demo_would_train():
    """The toy world ships the default subject's LoRA under the demo's cache key: same base, photos,
    recipe and version. A change to any of them fails here until `steerguide toyworld
    ship-personalization` is rerun (else the demo silently trains for two minutes again)."""
    from steerguide.sweep.cache import shipped_personalization

    config, subject = _demo_config_and_subject()
    folder = shipped_personalization(config, subject)
    assert folder is not None, "rerun `steerguide toyworld ship-personalization`"
    assert (folder / "pytorch_lora_weights.safetensors").is_file()
    assert not (folder / "checkpoints").exists()
    recorded = json.loads((folder / "train.json").read_text())
    assert recorded["config"]["max_steps"] == 400 and recorded["config"]["rank"] == 4  # the default recipe
    other, other_subject = _demo_config_and_subject("sks_star")
    assert shipped_personalization(other, other_subject) is None  # only what was shipped


@needs_base
def test_the_cache_key_follows_the_trained_methods_defaults_only(monkeypatch):
    """Recalibrating Custom Diffusion must not make the shipped LoRA stale; a new LoRA recipe must."""
    from steerguide.sweep.cache import train_cache_key
    from steerguide.toyworld.recipes import TOY_DEFAULTS

    config, subject = _demo_config_and_subject()
    key = train_cache_key(config, subject)
    monkeypatch.setitem(TOY_DEFAULTS["custom-diffusion"], "steps", 999)
    monkeypatch.setitem(TOY_DEFAULTS["dreambooth"], "learning_rate", 1e-5)
    assert train_cache_key(config, subject) == key
    monkeypatch.setitem(TOY_DEFAULTS["lora"], "steps", 401)
    assert train_cache_key(config, subject) != key


@needs_base
def test_shipped_lora_is_copied_not_trained_unless_retrain(tmp_path: Path, monkeypatch):
    from steerguide.sweep import cache as sweep_cache

    config, subject = _demo_config_and_subject()
    trained = []
    monkeypatch.setattr(sweep_cache, "_train", lambda *a, **k: trained.append(a))
    folder = Path(sweep_cache.ensure_personalization(config, subject, tmp_path))
    shipped = sweep_cache.shipped_personalization(config, subject)
    assert trained == [] and folder.parent == tmp_path / "personalizations"
    for f in shipped.iterdir():
        assert (folder / f.name).read_bytes() == f.read_bytes()
    assert not list(tmp_path.rglob("*.copying"))
    sweep_cache.ensure_personalization(config, subject, tmp_path / "again", shipped=False)
    assert len(trained) == 1


@needs_base
def test_demo_uses_the_shipped_lora(tmp_path: Path, capsys, monkeypatch):
    from steerguide.errors import UserError
    from steerguide.sweep import cache as sweep_cache

    trained = []

    def refuse_training(config, subject, *args, **kwargs):
        trained.append(subject.name)
        raise UserError("training refused by the test")

    monkeypatch.setattr(sweep_cache, "_train", refuse_training)
    out = tmp_path / "demo"
    assert run(["demo", "--out", str(out), "--steps", "1", "--num-prompts", "1", "--no-progress"]) == 0
    assert trained == [] and "the LoRA the toy world ships" in capsys.readouterr().err
    (folder,) = (out / "personalizations").iterdir()
    config, subject = _demo_config_and_subject()
    shipped = sweep_cache.shipped_personalization(config, subject)
    assert (folder / "pytorch_lora_weights.safetensors").read_bytes() == (
        shipped / "pytorch_lora_weights.safetensors"
    ).read_bytes()
    retrained = tmp_path / "retrained"
    assert run(["demo", "--out", str(retrained), "--steps", "1", "--num-prompts", "1", "--no-progress",
                "--retrain"]) == 2
    assert trained == [subject.name] and "training refused by the test" in capsys.readouterr().err


def test_ship_personalization_refuses_an_unknown_subject(capsys):
    assert run(["toyworld", "ship-personalization", "unicorn"]) == 2
    assert "unknown subject 'unicorn'" in _one_error_line(capsys)


def test_showcase_settings_are_chosen_on_the_prompts_not_shown():
    """The first picture's rule: per method, the balanced objective's best setting on the prompts the
    picture does not show, normalized over all settings. Wrong: choosing on the shown prompts too (here it
    would pick CFG w=5, whose text on prompt 0 is far above its text elsewhere), or normalizing per method."""
    from steerguide.demo import choose_showcase_settings

    def row(method, scale, prompt, f, t, omega=None, interval=(0.0, 1.0)):
        return {"method": method, "scale": scale, "omega": omega, "omega_schedule": None,
                "interval": list(interval), "prompt_index": prompt, "seed": 0,
                "metrics": {"toy_fidelity": f, "toy_text": t}}

    rows = []
    for prompt in (0, 1, 2):
        shown = prompt == 0
        rows += [row("cfg", 3.0, prompt, 0.5, 0.8), row("cfg", 5.0, prompt, 0.5, 3.0 if shown else 0.7),
                 row("ag", 3.0, prompt, 0.6, 0.4, omega=0.0), row("ag", 5.0, prompt, 0.5, 0.35, omega=0.0),
                 row("pg", 3.0, prompt, 0.7, 0.6, omega=0.0), row("pg", 3.0, prompt, 0.55, 0.75, omega=0.75),
                 row("pg", 3.0, prompt, 0.6, 0.7, omega=0.5, interval=(0.0, 0.6))]
    chosen = choose_showcase_settings(rows, shown=[0])
    assert {k: v["label"] for k, v in chosen.items()} == {
        "cfg": "CFG w=3", "ag": "AG w=3 (θ_pre)", "pg": "PG w=3 ω=0", "pg-interval": "PG w=3 ω=0.5, first 60%"}
    assert all(v["held_out"] for v in chosen.values())
    # over all settings: F from 0.5 to 0.7, T from 0.35 to 0.8; PG ω=0 scores 1 + 0.25/0.45
    assert abs(chosen["pg"]["score"] - (1 + 0.25 / 0.45)) < 1e-9
