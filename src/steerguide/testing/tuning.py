"""A model-free tuning problem whose front is known: a sampler that draws each image's two scores from a
smooth function of the knob plus noise (written into a 2×1 float image), and two metrics that read them.
The tests and the grid-versus-search measurement of docs/tune.md use it.

The true scores, with g = (w − 1)(1 − ω) PG's push (docs/method.md: PG − CFG ∝ (w − 1)(1 − ω)):
    fidelity = 0.5 + 0.15·(1 − e^{−(w−1)/3}) + push·(1 − e^{−g·k_f/s}) − 0.002·(w − 1)²
    text     = 0.4 + 0.3·(1 − e^{−(w−1)/2}) − pen·(g·k_t)²
with k_f = 1, k_t = 1 for ω constant and k_f = 0.6, k_t = 0.3 for ω rising linearly to 1 (the schedule
keeps more text per unit of fidelity). `FrontParams` draws push, s and pen per problem.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

import numpy as np

from steerguide.evaluate.metrics import FIDELITY, TEXT, Metric
from steerguide.tune.search import LINEAR, Knob


@dataclass(frozen=True)
class FrontParams:
    push: float = 0.25
    s: float = 4.0
    pen: float = 0.004
    noise: float = 0.0  # per-image standard deviation of each score (prompt × knob interaction)
    prompt_noise: float = 0.0  # per-prompt effect shared by every knob (what common draws cancel)

    @classmethod
    def draw(cls, rng: np.random.Generator, noise: float = 0.05) -> FrontParams:
        return cls(
            push=float(rng.uniform(0.1, 0.4)),
            s=float(rng.uniform(2.0, 8.0)),
            pen=float(rng.uniform(0.001, 0.01)),
            noise=noise,
            prompt_noise=noise,
        )

    def true_scores(self, knob: Knob) -> tuple[float, float]:
        w, omega = knob.scale, knob.omega
        k_f, k_t = (0.6, 0.3) if knob.schedule == LINEAR and omega < 1 else (1.0, 1.0)
        g = (w - 1) * (1 - omega)
        fidelity = 0.5 + 0.15 * (1 - math.exp(-(w - 1) / 3)) + self.push * (1 - math.exp(-g * k_f / self.s))
        fidelity -= 0.002 * (w - 1) ** 2
        text = 0.4 + 0.3 * (1 - math.exp(-(w - 1) / 2)) - self.pen * (g * k_t) ** 2
        return fidelity, text


def knob_of(setting) -> Knob:
    if setting.method == "cfg":
        return Knob(setting.scale, 1.0)
    return Knob(setting.scale, setting.omega, setting.omega_schedule or "constant")


def _rng(*parts) -> np.random.Generator:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


class FrontSampler:
    """`open(...)` → a session whose `generate(setting, prompts, seed)` returns 2×1 "F" images holding
    (fidelity, text). `delay` (seconds per call) slows it down, so that a test can kill a run mid-way."""

    def __init__(self, params: FrontParams | None = None, delay: float = 0.0):
        self.params = params or FrontParams()
        self.calls = 0
        self.delay = delay

    def open(self, base, personalization, subject):
        return self

    def generate(self, setting, prompts, seed):
        from PIL import Image

        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        knob = knob_of(setting)
        f, t = self.params.true_scores(knob)
        images = []
        for prompt in prompts:
            shared = _rng("prompt", prompt, seed).normal(0, 1, 2) * self.params.prompt_noise
            own = _rng("image", prompt, seed, knob).normal(0, 1, 2) * self.params.noise
            image = Image.new("F", (2, 1))
            image.putpixel((0, 0), f + shared[0] + own[0])
            image.putpixel((1, 0), t + shared[1] + own[1])
            images.append(image)
        return images


class PixelFidelity(Metric):
    name, axis = "fake_fidelity", FIDELITY

    def score(self, images, prompts, prepared):
        return [float(im.getpixel((0, 0))) for im in images]


class PixelText(Metric):
    name, axis = "fake_text", TEXT

    def score(self, images, prompts, prepared=None):
        return [float(im.getpixel((1, 0))) for im in images]
