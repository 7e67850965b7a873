"""The two ways to state a tuning problem: a toy-world subject (toy base, toy judges, the toy default
personalization trained if none is given) or a real personalization (a base, reference photos, prompts,
DINO / CLIP-I / CLIP-T). Every path and number is checked here, before anything is loaded or trained."""

from __future__ import annotations

from pathlib import Path

from steerguide.errors import UserError
from steerguide.evaluate.benchmarks import IMAGE_SUFFIXES, BenchSubject
from steerguide.tune.tuner import Problem

TOY_TRAIN = {"method": "lora", "validation_images": 0}  # the toy DreamBench's recipe: its LoRAs are reusable
TOY_STEPS = 20  # as the toy DreamBench samples
TOY_PROMPTS = 8  # per probe: 14 coarse probes × 8 images fit the default budget with room to refine


def check_seeds(seeds: int) -> list[int]:
    from steerguide import limits

    return limits.seed_count("--seeds", seeds)


def _check_prompts(prompts: list[str], num_prompts: int | None) -> list[str]:
    if num_prompts is not None:
        if num_prompts < 1:
            raise UserError(f"--num-prompts must be at least 1, got {num_prompts}")
        prompts = prompts[:num_prompts]
    if not prompts:
        raise UserError("no prompt to tune on: give --prompts-file FILE (one prompt per line)")
    return prompts


def _check_steps(steps: int) -> int:
    if steps < 1 or steps > 1000:
        raise UserError(f"--steps must be from 1 to 1000, got {steps}")
    return steps


def toy_problem(
    subject: str,
    out: Path,
    *,
    personalization: str | None = None,
    prompts: list[str] | None = None,
    num_prompts: int | None = TOY_PROMPTS,
    seeds: int = 1,
    steps: int = TOY_STEPS,
    subjects_file: str | None = None,
    progress: bool = False,
) -> tuple[Problem, dict]:
    """A toy subject's problem, and the sweep config whose `ensure_personalization` trains its default LoRA
    when `personalization` is None (call `train_toy` once the other checks have passed)."""
    from steerguide.bases import resolve_base
    from steerguide.evaluate.benchmarks import load_benchmark
    from steerguide.evaluate.metrics import metric_class

    # UserError naming the known subjects
    bench = load_benchmark({"name": "toy", "subjects": [subject], "subjects_file": subjects_file})
    bench_subject = bench.subjects[0]
    if personalization is not None and not Path(personalization).exists():
        raise UserError(f"--personalization {personalization}: no such file or folder")
    problem = Problem(
        base=resolve_base("toy"),
        personalization=personalization,
        subject=bench_subject,
        prompts=_check_prompts(list(prompts or bench_subject.prompts), num_prompts),
        seeds=check_seeds(seeds),
        fidelity_metric=metric_class("toy_fidelity")(),
        text_metric=metric_class("toy_text")(),
        sampling={"steps": _check_steps(steps)},
    )
    benchmark = {"name": "toy", "subjects": [bench_subject.name]}
    if subjects_file:
        benchmark["subjects_file"] = subjects_file
    return problem, benchmark


def train_toy(problem: Problem, benchmark: dict, out: Path, progress: bool = False) -> Problem:
    """Train (or find cached under OUT/personalizations/) the toy default personalization."""
    if problem.personalization is not None:
        return problem
    from steerguide.sweep.cache import ensure_personalization
    from steerguide.sweep.config import SweepConfig

    config = SweepConfig(
        base="toy", benchmark=benchmark, settings=[], seeds=problem.seeds, metrics={},
        personalization={"train": dict(TOY_TRAIN)},
    )
    out.mkdir(parents=True, exist_ok=True)
    problem.personalization = ensure_personalization(config, problem.subject, out, progress=progress)
    return problem


def real_problem(
    *,
    base: str,
    personalization: str,
    references: Path,
    prompts: list[str],
    token: str = "sks",
    fidelity: str = "dino",
    models: dict[str, str] | None = None,
    num_prompts: int | None = None,
    seeds: int = 1,
    steps: int = 30,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
    scheduler: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
) -> Problem:
    """A real personalization's problem: fidelity by DINO or CLIP-I against `references`, text by CLIP-T."""
    from steerguide.evaluate.metrics import (
        DEFAULT_MODELS,
        build_metrics,
        canonical_metric_name,
        check_available,
    )
    from steerguide.limits import image_side

    if not Path(personalization).exists():
        raise UserError(f"--personalization {personalization}: no such file or folder")
    references = Path(references)
    if not references.is_dir():
        raise UserError(f"--references {references}: no such folder")
    photos = sorted(p for p in references.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not photos:
        raise UserError(f"--references {references} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    fidelity = canonical_metric_name(fidelity)
    if fidelity not in ("dino", "clip_i"):
        raise UserError(f"--fidelity-metric must be dino or clip_i, got {fidelity}")
    spec: dict[str, dict] = {fidelity: {}, "clip_t": {}}
    for name, model in (models or {}).items():
        key = canonical_metric_name(name)
        if key not in spec:
            raise UserError(f"--model {name}={model}: metric {key} is not used (fidelity: {fidelity}, text: clip_t)")
        spec[key]["model"] = model
    for key, options in spec.items():
        check_available("DINO" if key == "dino" else "CLIP", options.get("model", DEFAULT_MODELS[key]), key)
    image_side("--height", height)
    image_side("--width", width)
    fid_metric, text_metric = build_metrics(spec, device=device)
    subject = BenchSubject(name=references.name, class_noun="", token=token, prompts=[], references=photos)
    sampling = {"steps": _check_steps(steps), "height": height, "width": width,
                "negative_prompt": negative_prompt, "scheduler": scheduler}
    return Problem(
        base=base,
        personalization=str(personalization),
        subject=subject,
        prompts=_check_prompts(prompts, num_prompts),
        seeds=check_seeds(seeds),
        fidelity_metric=fid_metric,
        text_metric=text_metric,
        sampling={k: v for k, v in sampling.items() if v is not None},
        device=device,
        dtype=dtype,
    )
