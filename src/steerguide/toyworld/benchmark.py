"""The toy world's subjects as a benchmark: they train on their reference renders and are scored against
held-out renders in other contexts."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

from steerguide.errors import UserError
from steerguide.evaluate.benchmarks import Benchmark, BenchSubject

TOY_FIDELITY_REFERENCES = 8  # held-out renders per toy subject that fidelity is measured against


def toy_benchmark(
    subjects: Sequence[str] | None = None,
    num_prompts: int | None = None,
    subjects_file: str | Path | None = None,
) -> Benchmark:
    """The toy world's subjects as a benchmark (its own tokens, class nouns and evaluation prompts): the
    built-in ones, or those of a subjects file (YAML, see `steerguide.toyworld.subjects`); `subjects`
    picks some by name ("sks_star") or token. Each carries its definition, which the sweep's keys hash,
    so that editing a subject in the file makes its rows and personalizations stale."""
    from steerguide import toyworld

    known = toyworld.load_subjects(subjects_file)  # UserError naming the subject and key of a bad file
    names = list(known) if subjects is None else list(subjects)
    out = []
    for n in names:
        try:
            s = known[n] if n in known else toyworld.get_subject(n, subjects_file)
        except (KeyError, ValueError, UserError):
            where = "the toy world" if subjects_file is None else f"subjects file {subjects_file}"
            raise UserError(f"{where} has no subject {n!r}; it has: {', '.join(known)}") from None
        prompts = list(s.eval_prompts())[:num_prompts]
        out.append(
            BenchSubject(
                name=s.name,
                class_noun=s.class_noun,
                token=s.token,
                prompts=prompts,
                load_references=s.reference_images,
                load_fidelity_references=partial(s.heldout_images, TOY_FIDELITY_REFERENCES),
                definition=s.to_dict(),
            )
        )
    return Benchmark(name="toy", subjects=out)


def load_toy_benchmark(spec: dict) -> Benchmark:
    """{name: toy, subjects, num_prompts, subjects_file}"""
    return toy_benchmark(spec.get("subjects"), spec.get("num_prompts"), spec.get("subjects_file"))
