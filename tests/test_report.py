"""Confidence intervals by hand, the summary, the trade-off report, and `steerguide evaluate` on a folder."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from steerguide.cli import run
from steerguide.evaluate.report import mean_ci, summarize, t_quantile_975

SAMPLE = Path("/work/shared/dreambench-sample")


def test_mean_ci_by_hand():
    mean, ci = mean_ci([1.0, 2.0, 3.0, 4.0])
    # s = sqrt(((1.5² + 0.5²) · 2) / 3) = sqrt(5/3); t(3) = 3.182; half-width = t · s / sqrt(4)
    assert mean == 2.5 and ci == pytest.approx(3.182 * math.sqrt(5 / 3) / 2)
    assert math.isnan(mean_ci([0.7])[1]) and mean_ci([0.7])[0] == 0.7
    assert all(math.isnan(v) for v in mean_ci([]))


@pytest.mark.parametrize(
    "df, exact",
    [(1, 12.706), (10, 2.228), (30, 2.042), (40, 2.0211), (60, 2.0003), (120, 1.9799), (10**6, 1.95997)],
)
def test_t_quantiles(df, exact):
    assert t_quantile_975(df) == pytest.approx(exact, abs=1e-3)


def _row(method, scale, omega, fid, text, subject="dog", seed=0, prompt="p", i=0):
    return {
        "key": f"{method}{scale}{omega}{subject}{seed}{prompt}",
        "method": method,
        "scale": scale,
        "omega": omega,
        "omega_schedule": None if omega is None else "constant",
        "interval": [0.0, 1.0],
        "subject": subject,
        "seed": seed,
        "prompt": prompt,
        "prompt_index": i,
        "metrics": {"dino": fid, "clip_t": text},
    }


def test_summarize_groups_by_setting_over_subjects_prompts_and_seeds():
    rows = [
        _row("cfg", 3.0, None, 0.5, 0.2, "dog"),
        _row("cfg", 3.0, None, 0.7, 0.4, "cat"),
        _row("pg", 3.0, 0.5, 0.9, 0.3, "dog"),
        _row("pg", 3.0, 0.5, 0.8, 0.3, "dog", seed=1),
        _row("pg", 3.0, 0.5, 0.7, 0.3, "cat"),
    ]
    cfg, pg = summarize(rows)
    assert (cfg.method, cfg.n, pg.method, pg.n) == ("cfg", 2, "pg", 3)
    assert cfg.stats["dino"][0] == pytest.approx(0.6) and cfg.stats["clip_t"][0] == pytest.approx(0.3)
    assert cfg.stats["dino"][1] == pytest.approx(12.706 * math.sqrt(0.02) / math.sqrt(2))
    assert pg.stats["dino"] == pytest.approx((0.8, 4.303 * 0.1 / math.sqrt(3)))
    assert pg.stats["clip_t"][1] == pytest.approx(0.0)
    assert (cfg.curve, pg.curve) == ("cfg", "pg ω=0.5")


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="DreamBench sample not present")
def test_report_is_one_self_contained_html(tmp_path, capsys):
    from steerguide.sweep import parse_config, run_sweep
    from steerguide.testing.sweep import NoiseSampler

    cfg = parse_config(
        {
            "base": "unused",
            "benchmark": {
                "name": "dreambench",
                "root": str(SAMPLE),
                "subjects": ["dog", "vase"],
                "num_prompts": 2,
            },
            "guidance": {"cfg": {"scale": [1.0, 3.0]}, "pg": {"scale": [1.0, 3.0], "omega": [0.0, 0.5]}},
            "seeds": 2,
            "metrics": [
                "steerguide.testing.sweep:MeanColorFidelity",
                "steerguide.testing.sweep:BrightnessText",
            ],
        }
    )
    run_sweep(cfg, tmp_path, sampler=NoiseSampler())
    assert run(["report", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "pg w=3 ω=0.5" in printed and "index.html" in printed

    report = tmp_path / "report"
    html = (report / "index.html").read_text()
    sources = re.findall(r'src="([^"]*)"', html)
    assert len(sources) == 3  # one trade-off plot, two subject grids
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http" not in html.replace("http-equiv", "")  # nothing fetched from elsewhere
    assert (report / "tradeoff_mean_color_vs_brightness.png").is_file()
    grid = Image.open(report / "grid_dog.png")
    assert grid.width > 6 * 128 and grid.height > 2 * 128  # 6 settings × 2 prompts

    summary = {s["label"]: s for s in json.loads((report / "summary.json").read_text())}
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    chosen = [
        r["metrics"]["brightness"]
        for r in rows
        if r["method"] == "pg" and r["scale"] == 3.0 and r["omega"] == 0.5
    ]
    assert summary["pg w=3 ω=0.5"]["n"] == len(chosen) == 8
    assert summary["pg w=3 ω=0.5"]["metrics"]["brightness"]["mean"] == pytest.approx(np.mean(chosen))
    assert f"{np.mean(chosen):.4f}" in html


def test_report_of_a_folder_without_results_exits_2(tmp_path, capsys):
    assert run(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().startswith("steerguide: error: ")


def test_evaluate_scores_a_folder(tmp_path, capsys):
    from steerguide.evaluate.metrics import build_metrics
    from steerguide.testing.metric_models import save_tiny_clip, save_tiny_vit

    clip, vit = save_tiny_clip(tmp_path / "clip"), save_tiny_vit(tmp_path / "vit")
    rng = np.random.default_rng(0)
    images, refs = tmp_path / "gen", tmp_path / "refs"
    images.mkdir()
    refs.mkdir()
    prompts = ["a sks dog in the snow", "a sks dog on the beach", "a red sks dog"]
    for i in range(len(prompts)):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(refs / f"{i}.jpg")
    (images / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f"{i}.png", "prompt": p}) + "\n" for i, p in enumerate(prompts))
    )
    out = tmp_path / "scores.json"
    argv = [
        "evaluate",
        "--images",
        str(images),
        "--references",
        str(refs),
        "--metrics",
        "dino,clip-t",
        "--model",
        f"dino={vit}",
        "--model",
        f"clip-t={clip}",
        "--token",
        "sks",
        "--out",
        str(out),
    ]
    assert run(argv) == 0
    data = json.loads(out.read_text())
    dino, clip_t = build_metrics({"dino": str(vit), "clip_t": str(clip)})
    gen = [Image.open(images / f"{i}.png") for i in range(3)]
    ref = [Image.open(refs / f"{i}.jpg") for i in range(3)]
    assert [d["dino"] for d in data["images"]] == pytest.approx(dino.score(gen, prompts, dino.prepare(ref)))
    stripped = [p.replace("sks ", "") for p in prompts]
    assert [d["clip_t"] for d in data["images"]] == pytest.approx(clip_t.score(gen, stripped))
    assert data["summary"]["dino"]["mean"] == pytest.approx(np.mean([d["dino"] for d in data["images"]]))

    capsys.readouterr()
    assert run(["evaluate", "--images", str(images), "--metrics", "dino,fid"]) == 2
    assert capsys.readouterr().err.strip() == (
        "steerguide: error: unknown metric 'fid'; "
        "expected one of dino, clip_i, clip_t, toy_text, toy_fidelity"
    )
    assert run(["evaluate", "--images", str(images), "--metrics", "dino"]) == 2
    assert "fidelity metrics need --references" in capsys.readouterr().err
    assert run(["evaluate", "--images", str(tmp_path / "nope"), "--metrics", "clip_t"]) == 2
    assert "does not exist" in capsys.readouterr().err
