"""Stand-ins for tests and dry runs: a sampler that draws deterministic images without a model, and two
cheap metrics. Select them in a sweep config with `sampler: steerguide.testing.sweep:NoiseSampler` and
metrics `steerguide.testing.sweep:MeanColorFidelity` / `steerguide.testing.sweep:BrightnessText`.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np

from steerguide.evaluate.metrics import FIDELITY, TEXT, Metric


class NoiseSampler:
    """Images that depend only on (subject, setting, prompt, seed). `delay` (seconds per call) slows it
    down, so that a test can interrupt a sweep mid-run: a test's child process sets it on the class, since
    the sweep builds its sampler from the config."""

    delay: float = 0.0

    def __init__(self, config=None, size: int = 16):
        self.size = size
        self.calls = 0

    def open(self, base, personalization, subject):
        return _NoiseSession(self, subject.name)


class _NoiseSession:
    def __init__(self, owner: NoiseSampler, subject: str):
        self.owner, self.subject = owner, subject

    def generate(self, setting, prompts, seed):
        from PIL import Image

        self.owner.calls += 1
        if self.owner.delay:
            time.sleep(self.owner.delay)
        images = []
        for prompt in prompts:
            digest = hashlib.sha256(f"{self.subject}|{setting}|{prompt}|{seed}".encode()).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
            pixels = rng.integers(0, 256, (self.owner.size, self.owner.size, 3), dtype=np.uint8)
            images.append(Image.fromarray(pixels))
        return images


def _mean_color(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0) / 255.0


class MeanColorFidelity(Metric):
    """1 − mean absolute difference between an image's mean colour and each reference's."""

    name = "mean_color"
    axis = FIDELITY

    def __init__(self, **_):
        pass

    def prepare(self, references):
        return [_mean_color(r) for r in references]

    def score(self, images, prompts, prepared):
        return [float(np.mean([1 - np.abs(_mean_color(im) - r).mean() for r in prepared])) for im in images]


class BrightnessText(Metric):
    """Mean brightness in [0, 1]; stands in for a text-alignment score."""

    name = "brightness"
    axis = TEXT

    def __init__(self, **_):
        pass

    def score(self, images, prompts, prepared=None):
        return [float(_mean_color(im).mean()) for im in images]
