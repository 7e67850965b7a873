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
    from steerguide.evaluate.sweep import resolve_base

    return (Path(resolve_base(BASE)) / "model_index.json").is_file()


needs_base = pytest.mark.skipif(not _base_present(), reason="the toy world's base model is not installed")


@needs_base
def test_demo_runs_end_to_end_and_resumes(tmp_path: Path, capsys):
    import torch

    from steerguide.demo import DEMO_GUIDANCE, default_subject

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
    settings = {(r["method"], r["scale"], r["omega"]) for r in rows}
    expected = sum(len(axes["scale"]) * len(axes.get("omega", [None])) for axes in DEMO_GUIDANCE.values())
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

    # The first picture: photos, then CFG / AG / PG at the recommended settings for each prompt shown,
    # upscaled to >= 128 px a cell; the report starts with it and the per-image scores.
    from PIL import Image

    from steerguide.demo import RECOMMENDED, SHOWCASE_CELL

    assert SHOWCASE_CELL >= 128
    with Image.open(report / "showcase.png") as picture:
        assert picture.width >= 5 * SHOWCASE_CELL and picture.height >= 3 * SHOWCASE_CELL
    page = (report / "index.html").read_text()
    assert page.index("showcase") < page.index("Trade-off")
    shown = {(r["method"], r["scale"], r["omega"]) for r in rows}
    assert {(m, v["scale"], v["omega"]) for m, v in RECOMMENDED.items()} <= shown
    assert page.count("<td>CFG w=5</td>") == 2 and page.count("<td>PG w=5 ω=0.5</td>") == 2  # 2 prompts

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


def _sweep_reads_subjects_files() -> bool:
    from steerguide.evaluate import sweep

    return "subjects_file" in getattr(sweep, "BENCHMARK_KEYS", ())


@needs_base
@pytest.mark.skipif(not _sweep_reads_subjects_files(), reason="the sweep engine does not read subjects files yet")
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
