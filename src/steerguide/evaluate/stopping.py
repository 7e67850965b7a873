"""`steerguide train --stop-when dreambench`: train on real photos until the calibration criterion holds,
as DreamBench's judges measure it on validation prompts.

The toy world's criterion (`--stop-when calibrated`) with DINO for fidelity and CLIP-T for text, against
the base model on the same prompts and seeds:
- text ratio = CLIP-T(personalized) / CLIP-T(base) >= 0.80 (CLIP-T reads each prompt without its rare
  token, as the DreamBench evaluation does);
- normalized fidelity = (F - F_base) / (F_photos - F_base) in [0.35, 0.85], where F is the mean DINO
  similarity of samples to the photos and F_photos that of each photo to the others (how alike the
  subject's own photos are: the most a sample can be expected to reach).
Validation prompts: `VALIDATION_CONTEXTS` around the instance prompt (other contexts than the photos'),
`VALIDATION_SEEDS` seeds each, sampled with the run's `--validation-inference-steps` and
`--validation-guidance-scale`.
"""

from __future__ import annotations

from pathlib import Path

from steerguide.errors import UserError
from steerguide.evaluate.metrics import DEFAULT_MODELS
from steerguide.train.criterion import assess
from steerguide.train.stopping import Check, criterion_check, register_rule

VALIDATION_CONTEXTS = ("on the beach", "in the snow", "on a wooden kitchen table", "in front of a red brick wall")
VALIDATION_SEEDS = 2


def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values))


class DreamBenchRule:
    """The calibration criterion on real photos (module docstring); judges from `dino` and `clip` (hub ids
    or local folders; DreamBench's defaults)."""

    name = "dreambench"

    def __init__(self, config, dino: str | None = None, clip: str | None = None) -> None:
        from steerguide.evaluate.metrics import ClipTextMetric, DinoMetric, check_available
        from steerguide.train.data import load_images

        if config.extra and "toy_subject" in config.extra:
            raise UserError("--stop-when dreambench judges real photos: for a toy subject use --stop-when calibrated")
        self.photos = [image for _, image in load_images(config.images)]
        if len(self.photos) < 2:
            raise UserError("--stop-when dreambench needs at least 2 photos (fidelity is measured against how "
                            "alike the photos are)")
        dino, clip = dino or DEFAULT_MODELS["dino"], clip or DEFAULT_MODELS["clip_t"]
        check_available("DINO", dino, "dino")  # one line now, not after the first training
        check_available("CLIP", clip, "clip_t")
        self.config = config
        self.dino, self.clip_t = DinoMetric(dino), ClipTextMetric(clip)
        self._photos = None  # their DINO embeddings, once
        self._base: tuple[float, float, float] | None = None

    @staticmethod
    def prompts(record: dict) -> tuple[list[str], list[str], list[str]]:
        """Per validation context: as the personalized model samples it (its token), as the user wrote it
        (what the base model samples), and as CLIP-T reads it (no rare token)."""
        from steerguide.evaluate.benchmarks import without_token

        sampled = [f"{record['instance_prompt']} {c}" for c in VALIDATION_CONTEXTS]
        user = [f"{record['config']['instance_prompt']} {c}" for c in VALIDATION_CONTEXTS]
        return sampled, user, [without_token(p, record["user_token"]) for p in user]

    def _scores(self, pipe, sampled: list[str], judged: list[str], record: dict, photos) -> tuple[float, float]:
        from steerguide.train.validation import sample

        images, prompts = [], []
        for p, j in zip(sampled, judged, strict=True):
            images += sample(pipe, p, VALIDATION_SEEDS, self.config.validation_inference_steps,
                             self.config.validation_guidance_scale, record["resolution"], self.config.seed)
            prompts += [j] * VALIDATION_SEEDS
        return _mean(self.clip_t.score(images, prompts)), _mean(self.dino.score(images, prompts, photos))

    def check(self, folder: Path) -> Check:
        from diffusers import DiffusionPipeline

        from steerguide.evaluate.metrics import mean_cosine
        from steerguide.train.results import load_trained

        pipe, record = load_trained(folder)
        pipe.set_progress_bar_config(disable=True)  # the training's bar and this line are the progress shown
        if self._photos is None:
            self._photos = self.dino.prepare(self.photos)
        photos = self._photos
        sampled, user, judged = self.prompts(record)
        text, fidelity = self._scores(pipe, sampled, judged, record, photos)
        if self._base is None:
            base = DiffusionPipeline.from_pretrained(record["base"])
            base.set_progress_bar_config(disable=True)
            # the base model reads the user's words (its tokenizer knows no new token)
            text_base, fidelity_base = self._scores(base, user, judged, record, photos)
            others = [mean_cosine(photos[i:i + 1], photos[[j for j in range(len(photos)) if j != i]])[0]
                      for i in range(len(photos))]
            self._base = (text_base, fidelity_base, _mean(others))
        text_base, fidelity_base, fidelity_photos = self._base
        return criterion_check(assess(text, text_base, fidelity, fidelity_base, fidelity_photos))


register_rule("dreambench", DreamBenchRule)
