"""The calibration criterion of the toy recipes: a pure function on hand-made means, and the command."""

from __future__ import annotations

import json
import math

import pytest

from steerguide.cli import run
from steerguide.toyworld import base_model_path
from steerguide.toyworld.calibration import FIDELITY_REFERENCES, Criterion, assess


def test_criterion_on_a_hand_made_case():
    # text 0.68 of the base's 0.85: ratio 0.8 (+ a hair); F 0.3 between F_base -0.2 and F_heldout 0.8
    c = assess(text=0.681, text_base=0.85, fidelity=0.3, fidelity_base=-0.2, fidelity_heldout=0.8)
    assert c.text_ratio == pytest.approx(0.681 / 0.85) and c.normalized_fidelity == pytest.approx(0.5)
    assert c.passed and c.why == ""
    low_text = assess(0.60, 0.85, 0.3, -0.2, 0.8)
    assert not low_text.passed and low_text.why == "text ratio 0.71 < 0.80"
    too_faithful = assess(0.75, 0.85, 0.66, -0.2, 0.8)  # normalized 0.86: the subject copied, not learned
    assert too_faithful.normalized_fidelity == pytest.approx(0.86)
    assert not too_faithful.passed and too_faithful.why == "normalized fidelity 0.86 > 0.85"
    too_little = assess(0.85, 0.85, 0.13, -0.2, 0.8)  # normalized 0.33
    assert not too_little.passed and too_little.why == "normalized fidelity 0.33 < 0.35"
    both = assess(0.5, 0.85, 0.0, -0.2, 0.8)
    assert both.why == "text ratio 0.59 < 0.80; normalized fidelity 0.20 < 0.35"
    # the bounds are inclusive
    assert assess(0.8, 1.0, 0.35, 0.0, 1.0).passed and assess(0.8, 1.0, 0.85, 0.0, 1.0).passed
    # no span between base and held-out renders, or no base text: nothing to normalize by, a miss
    flat = assess(0.8, 0.8, 0.5, 0.6, 0.6)
    assert math.isnan(flat.normalized_fidelity) and not flat.passed
    assert not assess(0.5, 0.0, 0.5, 0.0, 1.0).passed
    assert not assess(0.9, 1.0, 0.5, 0.0, 1.0, Criterion(text_ratio_min=0.95)).passed


def test_fidelity_references_match_the_toy_benchmark():
    from steerguide.toyworld.benchmark import TOY_FIDELITY_REFERENCES

    assert FIDELITY_REFERENCES == TOY_FIDELITY_REFERENCES


needs_assets = pytest.mark.skipif(not (base_model_path() / "model_index.json").exists(),
                                  reason="base model not built")


@needs_assets
def test_check_personalization_of_an_untrained_lora_is_the_base_model(tmp_path, capsys):
    """A LoRA that has not moved (one step at lr 1e-30) samples what the base model samples with the same
    prompts and seeds: text ratio exactly 1 and normalized fidelity exactly 0."""
    from steerguide.toyworld.recipes import toy_config
    from steerguide.train import train

    folder = train(toy_config("kfp_star", out=tmp_path / "lora", steps=1, learning_rate=1e-30,
                              validation_images=0, threads=1), progress=False)
    capsys.readouterr()
    rows = tmp_path / "rows.jsonl"
    cache = tmp_path / "base-scores.json"
    argv = ["toyworld", "check-personalization", str(folder), "--seeds", "1", "--steps", "4", "--cache", str(cache)]
    assert run([*argv, "--json", str(rows)]) == 0
    out = capsys.readouterr().out
    assert "kfp_star" in out and "miss (normalized fidelity 0.00 < 0.35)" in out and "0 of 1 pass" in out
    row = json.loads(rows.read_text())
    assert row["text_ratio"] == pytest.approx(1.0, abs=1e-12) and row["text"] == row["text_base"]
    assert row["normalized_fidelity"] == pytest.approx(0.0, abs=1e-6)
    assert row["fidelity_heldout"] > 0.5 > row["fidelity_base"] and row["prompts"] == 16
    # the base model's scores come back from the cache, the same
    assert len(json.loads(cache.read_text())) == 1
    again = tmp_path / "again.jsonl"
    assert run([*argv, "--json", str(again)]) == 0
    assert json.loads(again.read_text()) == row

    # bad input: one line, exit 2, before any sampling
    (tmp_path / "plain").mkdir()
    assert run(["toyworld", "check-personalization", str(folder), str(tmp_path / "plain")]) == 2
    assert "no train.json" in capsys.readouterr().err
    other = tmp_path / "other.yaml"
    other.write_text("subjects:\n  - {token: sks, class: star, look: ring, colors: [red, blue]}\n")
    assert run(["toyworld", "check-personalization", str(folder), "--subjects-file", str(other)]) == 2
    assert "unknown subject 'kfp_star' in" in capsys.readouterr().err
