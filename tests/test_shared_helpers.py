"""The small helpers that several modules share: one place each (errors.first_line, typeset, progress.bar,
families.text_encoders)."""

from __future__ import annotations

import math

from steerguide.errors import first_line
from steerguide.families import text_encoders
from steerguide.progress import bar
from steerguide.typeset import mean_ci_text, wrap


def test_first_line_is_the_first_line_of_the_message():
    assert first_line(RuntimeError("\n  shape mismatch\n  at layer 3\n")) == "shape mismatch"
    assert first_line(OSError()) == ""
    assert first_line(ValueError("   ")) == ""


def test_mean_ci_text_digits_and_missing_values():
    assert mean_ci_text(0.81234, 0.01) == "0.8123 ± 0.0100"
    assert mean_ci_text(0.81234, 0.01, digits=3) == "0.812 ± 0.010"
    assert mean_ci_text(0.5, math.nan) == "0.5000"
    assert mean_ci_text(math.nan, math.nan) == "–"


def test_wrap_breaks_between_words():
    assert wrap("a photo of sks dog on the beach", 10) == ["a photo of", "sks dog on", "the beach"]
    assert wrap("supercalifragilistic dog", 5) == ["supercalifragilistic", "dog"]
    assert wrap("", 5) == []


def test_bar_puts_the_extra_columns_after_the_count_and_draws_nothing_disabled():
    shown = bar(extra=("loss {task.fields[loss]}",))
    texts = [getattr(c, "text_format", None) for c in shown.columns]
    assert texts.index("loss {task.fields[loss]}") == 3 and "eta" in texts
    assert bar(False).disable and not bar(True).disable


class StableDiffusionXLPipeline:  # the family is known by class name
    text_encoder, text_encoder_2, text_encoder_3 = "clip-l", "clip-g", "not-sdxl"


class StableDiffusionPipeline:
    text_encoder, text_encoder_2 = "clip-l", None


def test_text_encoders_are_the_family_s_present_ones_in_order():
    assert text_encoders(StableDiffusionXLPipeline()) == {"text_encoder": "clip-l", "text_encoder_2": "clip-g"}
    assert text_encoders(StableDiffusionPipeline()) == {"text_encoder": "clip-l"}
    assert text_encoders(type("SomeCommunityPipeline", (StableDiffusionXLPipeline,), {})()) == {
        "text_encoder": "clip-l", "text_encoder_2": "clip-g", "text_encoder_3": "not-sdxl"
    }
