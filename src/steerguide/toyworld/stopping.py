"""`steerguide train --toy SUBJECT --stop-when calibrated`: train until the calibration criterion holds
on validation renders.

The criterion is the one `steerguide toyworld check-personalization` applies (text >= 0.80 x the base
model's, normalized fidelity in [0.35, 0.85] at CFG w = 5), measured here on what the check never looks
at, so that the check stays a held-out measurement of a personalization trained under this rule:
- prompts: `VALIDATION_PROMPTS` prompts of the evaluation prompts' kinds (a second object, a recoloring,
  a new background and position), drawn apart from them: none of them an evaluation prompt;
- fidelity references and held-out renders: other draws (`REFERENCE_DRAW`, `HELDOUT_DRAW`) than the
  check's.
A miss on fidelity alone (too little of the subject, the prompt kept) can be helped by more steps; a
miss on text, or fidelity above the band, cannot (training longer only takes more of the prompt away).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from steerguide.errors import UserError
from steerguide.toyworld.calibration import GUIDANCE_SCALE, SAMPLING_STEPS
from steerguide.train.criterion import assess
from steerguide.train.stopping import Check, criterion_check

VALIDATION_PROMPTS = 8
VALIDATION_SEEDS = 4  # as the check
VALIDATION_DRAW = 7  # the seed of the validation prompts' draw
REFERENCE_DRAW = 2  # ... of the fidelity references (the check uses draw 0)
HELDOUT_DRAW = 3  # ... of the held-out renders that F_heldout averages over (the check uses draw 1)
REFERENCES = 8
HELDOUT_SAMPLES = 32


def validation_prompts(subject) -> list[str]:
    """Prompts of the evaluation's kinds, none of them an evaluation prompt: two second objects and two
    recolorings (other colors and shapes than the evaluation's), then new background + position pairs
    (every other one with a size), drawn with another seed."""
    from steerguide.toyworld.world import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, Spec, caption

    evaluation = set(subject.eval_prompts())
    rng = np.random.default_rng([VALIDATION_DRAW, *subject.token.encode()])
    base = Spec(shape=subject.class_noun, token=subject.token)
    others = [(str(c), str(s)) for c in COLORS for s in SHAPES if s != subject.class_noun]
    seconds = [base.replace(second=others[int(i)]) for i in rng.permutation(len(others))]
    recolored = [base.replace(color=str(c)) for c in rng.permutation(list(COLORS))]
    new_bgs = [b for b in BACKGROUNDS if b not in subject.photo_backgrounds]
    new_pos = [p for p in POSITIONS if p not in subject.photo_positions]
    pairs = [(b, p) for b in new_bgs for p in new_pos]
    placed = [base.replace(background=b, position=p, size=None if k % 2 else SIZES[int(rng.integers(2))])
              for k, (b, p) in enumerate(pairs[int(i)] for i in rng.permutation(len(pairs)))]
    prompts: list[str] = []
    for specs, n in ((seconds, 2), (recolored, 2), (placed, VALIDATION_PROMPTS - 4)):
        taken = 0
        for spec in specs:
            prompt = caption(spec)
            if taken < n and prompt not in evaluation and prompt not in prompts:
                prompts.append(prompt)
                taken += 1
    return prompts


class Calibrated:
    """The toy calibration criterion on validation renders (module docstring)."""

    name = "calibrated"

    def __init__(self, config, **_judges) -> None:
        from steerguide.toyworld.subjects import subject_from_dict

        definition = (config.extra or {}).get("toy_subject_definition")
        if definition is None:
            raise UserError("--stop-when calibrated is the toy world's criterion: it needs --toy SUBJECT")
        self.subject = subject_from_dict(definition)
        self.prompts = validation_prompts(self.subject)
        self.steps = SAMPLING_STEPS
        self._base: tuple[float, float, float] | None = None
        self._judges: tuple[Any, Any] | None = None

    def judges(self):
        if self._judges is None:
            from steerguide import toyworld

            self._judges = (toyworld.TextJudge(), toyworld.FidelityJudge())
        return self._judges

    def _scores(self, pipe, sampled: list[str], references: list) -> tuple[float, float]:
        """Mean text and fidelity of `pipe`'s samples of `sampled` (image (i, s) seeded with s); the text
        judge reads the user's prompts (Custom Diffusion samples with its own new token)."""
        import torch

        text_judge, fidelity_judge = self.judges()
        rows = [(i, s) for s in range(VALIDATION_SEEDS) for i in range(len(sampled))]
        images = pipe([sampled[i] for i, _ in rows], generator=[torch.Generator().manual_seed(s) for _, s in rows],
                      height=32, width=32, num_inference_steps=self.steps, guidance_scale=GUIDANCE_SCALE).images
        judged = [self.prompts[i] for i, _ in rows]
        text = sum(text_judge.score(im, p) for im, p in zip(images, judged, strict=True)) / len(images)
        fidelity = fidelity_judge.fidelity(images, references)
        return float(text), float(sum(fidelity) / len(fidelity))

    def check(self, folder: Path) -> Check:
        from steerguide import toyworld
        from steerguide.quiet import libraries_quieted
        from steerguide.train.results import load_trained

        references = self.subject.heldout_images(REFERENCES, seed=REFERENCE_DRAW)
        with libraries_quieted():  # no "Loading pipeline components" bars inside the training's output
            pipe, record = load_trained(folder)
            sampled = [p.replace(self.subject.token, record["token"]) for p in self.prompts] \
                if record["token"] != self.subject.token else self.prompts
            text, fidelity = self._scores(pipe, sampled, references)
            if self._base is None:
                base = toyworld.load_base_pipeline(record["base"])
                text_base, fidelity_base = self._scores(base, self.prompts, references)
                heldout = self.subject.heldout_images(HELDOUT_SAMPLES, seed=HELDOUT_DRAW)
                f_heldout = self.judges()[1].fidelity(heldout, references)
                self._base = (text_base, fidelity_base, float(sum(f_heldout) / len(f_heldout)))
        text_base, fidelity_base, fidelity_heldout = self._base
        return criterion_check(assess(text, text_base, fidelity, fidelity_base, fidelity_heldout))

