"""Is a toy personalization in the paper's regime? The calibration criterion (`steerguide.train.criterion`)
measured on the toy world, which chose the toy recipes.

Fixed in advance and blind to guidance: the personalized model, sampled with CFG at w = 5 on its
subject's evaluation prompts, must keep most of the prompt and get most, not all, of the subject:

- text ratio = text / text of the base model on the same prompts and seeds (the base reads the token as
  an unknown word) >= 0.80, and
- normalized fidelity = (F - F_base) / (F_heldout - F_base) in [0.35, 0.85], where F_base is the base
  model's fidelity on those prompts and F_heldout that of other held-out renders of the subject.

Fidelity is measured as the toy benchmark measures it: mean cosine similarity to the subject's first
`FIDELITY_REFERENCES` held-out renders (contexts the photos never show).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from steerguide.errors import UserError
from steerguide.train.criterion import CRITERION, Calibration, Criterion, assess  # noqa: F401 (the toy check's)

GUIDANCE_SCALE = 5.0
SAMPLING_STEPS = 20
FIDELITY_REFERENCES = 8  # as the toy benchmark (steerguide.toyworld.benchmark.TOY_FIDELITY_REFERENCES)
HELDOUT_SAMPLES = 32  # held-out renders (another draw of contexts) that F_heldout averages over


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values))


class Measurer:
    """Samples and judges personalizations and, once per base model and subject, the base model."""

    def __init__(self, seeds: int = 4, tick: Callable[[], None] | None = None, steps: int = SAMPLING_STEPS,
                 cache: str | Path | None = None):
        from steerguide import toyworld

        if seeds < 1:
            raise UserError(f"--seeds must be >= 1, got {seeds}")
        self.seeds = seeds
        self.steps = steps  # the criterion samples with SAMPLING_STEPS; fewer only in tests
        self.tick = tick or (lambda: None)
        self.text_judge = toyworld.TextJudge()
        self.fidelity_judge = toyworld.FidelityJudge()
        # The base model's scores per (base, subject, seeds, steps); `cache`: a JSON file keeping them
        # across calls (calibrating recipes measures the same base many times).
        self.cache = Path(cache) if cache is not None else None
        self._base: dict[str, list[float]] = {}
        if self.cache is not None:
            from steerguide.files import check_writable_file

            check_writable_file(self.cache, "--cache")
        if self.cache is not None and self.cache.is_file():
            try:  # binary garbage is a UnicodeDecodeError, another JSON document no mapping of score lists
                self._base = json.loads(self.cache.read_text(encoding="utf-8"))
                ours = isinstance(self._base, dict) and all(
                    isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)
                    for v in self._base.values()
                )
            except (ValueError, OSError):
                ours = False
            if not ours:
                raise UserError(f"--cache {str(self.cache)!r} is not a JSON file of this command")
        self._pipes: dict[str, Any] = {}

    def _sample(self, pipe, prompts: list[str]) -> list:
        import torch

        # Image (prompt i, seed s) is seeded with s: the same noise for every model and prompt.
        rows = [(p, s) for s in range(self.seeds) for p in prompts]
        generators = [torch.Generator().manual_seed(s) for _, s in rows]
        images = pipe([p for p, _ in rows], generator=generators, height=32, width=32,
                      num_inference_steps=self.steps, guidance_scale=GUIDANCE_SCALE).images
        self.tick()
        return images

    def _scores(self, images: list, judged_prompts: list[str], references: list) -> tuple[float, float]:
        prompts = judged_prompts * self.seeds
        text = _mean([self.text_judge.score(im, p) for im, p in zip(images, prompts, strict=True)])
        return text, _mean(self.fidelity_judge.fidelity(images, references))

    def _base_scores(self, base: str, subject) -> tuple[float, float, float]:
        weights = sorted(Path(base).glob("unet/*.safetensors"))
        stamp = [(w.name, w.stat().st_size, w.stat().st_mtime_ns) for w in weights]
        key = json.dumps([str(Path(base).resolve()), stamp, subject.to_dict(), self.seeds, self.steps])
        if key not in self._base:
            from steerguide import toyworld

            if base not in self._pipes:
                self._pipes[base] = toyworld.load_base_pipeline(base)
            prompts = subject.eval_prompts()
            references = subject.heldout_images(FIDELITY_REFERENCES)
            text, fidelity = self._scores(self._sample(self._pipes[base], prompts), prompts, references)
            heldout = subject.heldout_images(HELDOUT_SAMPLES, seed=1)
            self._base[key] = [text, fidelity, _mean(self.fidelity_judge.fidelity(heldout, references))]
            if self.cache is not None:
                self.cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.cache.with_name(self.cache.name + ".tmp")
                tmp.write_text(json.dumps(self._base))
                tmp.replace(self.cache)
        text, fidelity, heldout_fidelity = self._base[key]
        return text, fidelity, heldout_fidelity

    def measure(self, folder: str | Path, subject) -> dict[str, Any]:
        """Sample `folder`'s personalization and the base model on `subject`'s prompts; judge both."""
        from steerguide.train.results import load_trained

        pipe, record = load_trained(folder)
        prompts = subject.eval_prompts()
        # Custom Diffusion's prompts carry its new token ("<bnq>"); the judges read the user's prompt.
        sampled = [p.replace(subject.token, record["token"]) for p in prompts] if record["token"] != subject.token \
            else prompts
        text, fidelity = self._scores(self._sample(pipe, sampled), prompts,
                                      subject.heldout_images(FIDELITY_REFERENCES))
        text_base, fidelity_base, fidelity_heldout = self._base_scores(record["base"], subject)
        result = assess(text, text_base, fidelity, fidelity_base, fidelity_heldout)
        return {"folder": str(folder), "subject": subject.name, "method": record["method"],
                "steps": record["steps"], "seeds": self.seeds, "prompts": len(prompts), **asdict(result)}


def subject_for(folder: str | Path, subjects_file: str | Path | None = None):
    """The toy subject a trained folder was trained on (looked up in `subjects_file` when given)."""
    from steerguide import toyworld
    from steerguide.toyworld.recipes import trained_subject
    from steerguide.train.results import read_record

    record = read_record(folder)
    name = ((record.get("config") or {}).get("extra") or {}).get("toy_subject")
    if name is None:
        raise UserError(f"{folder} is not a toy-world personalization (its train.json names no toy subject)")
    if subjects_file is not None:
        return toyworld.get_subject(name, subjects_file)
    return trained_subject(record)
