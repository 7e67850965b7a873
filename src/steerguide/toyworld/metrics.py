"""The toy world's judges behind the metric interface of `steerguide.evaluate.metrics`."""

from __future__ import annotations

from typing import Any

from steerguide.evaluate.metrics import FIDELITY, TEXT, Metric


class ToyTextMetric(Metric):
    """The toy world's text judge (its CLIP-T): the share of the prompt's stated attributes obeyed."""

    name = "toy_text"
    axis = TEXT
    raw_prompts = True

    def __init__(self, **_: Any):
        from steerguide.toyworld import TextJudge

        self._judge = TextJudge()

    def score(self, images: list, prompts: list[str], prepared: Any = None) -> list[float]:
        return [float(self._judge.score(im, p)) for im, p in zip(images, prompts, strict=True)]


class ToyFidelityMetric(Metric):
    """The toy world's fidelity judge (its DINO/CLIP-I): mean similarity to the subject's references."""

    name = "toy_fidelity"
    axis = FIDELITY

    def __init__(self, **_: Any):
        from steerguide.toyworld import FidelityJudge

        self._judge = FidelityJudge()

    def prepare(self, references: list) -> list:
        return references

    def score(self, images: list, prompts: list[str], prepared: list) -> list[float]:
        return [float(x) for x in self._judge.fidelity(images, prepared)]
