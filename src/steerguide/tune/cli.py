"""`steerguide tune`: a thin shell over `steerguide.tune.tuner.tune`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from steerguide.errors import UserError

DEFAULT_BUDGET = 192  # images: 24 probes of 8 toy prompts, ≈3 min of CPU on one core (docs/tune.md, Cost)


def tune(
    out: Annotated[Path, typer.Option("--out", help="Folder for preset.yaml, probes.png and probes.jsonl.")],
    toy: Annotated[
        str | None, typer.Option("--toy", help="Tune a toy-world subject (e.g. sks_star) with the toy judges.")
    ] = None,
    personalization: Annotated[
        Path | None,
        typer.Option(help="The personalization (LoRA, fine-tune, Custom Diffusion). --toy: trained if not given."),
    ] = None,
    base: Annotated[str | None, typer.Option(help="Base model (hub id or folder); --toy: the toy base.")] = None,
    references: Annotated[
        Path | None, typer.Option(help="Folder of the subject's real photos (fidelity references).")
    ] = None,
    prompts_file: Annotated[
        Path | None, typer.Option(help="Prompts to tune on, one per line (--toy: default its evaluation prompts).")
    ] = None,
    num_prompts: Annotated[
        int | None, typer.Option(help="Use the first N prompts (--toy default: 8).")
    ] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per prompt (0..N-1); every probe uses the same.")] = 1,
    target: Annotated[str, typer.Option(help="balanced | fidelity | text (see docs/tune.md).")] = "balanced",
    min_text: Annotated[
        str | None, typer.Option(help="--target fidelity: the least text score, absolute (0.6) or % of CFG's best (90%).")
    ] = None,
    min_fidelity: Annotated[
        str | None, typer.Option(help="--target text: the least fidelity, absolute or % of CFG's best.")
    ] = None,
    budget: Annotated[
        int, typer.Option(help="Probe images to spend in all (probes × prompts × seeds), reruns included.")
    ] = DEFAULT_BUDGET,
    steps: Annotated[int | None, typer.Option(help="Sampling steps (default: 20 toy, 30 otherwise).")] = None,
    token: Annotated[str, typer.Option(help="Unique token, dropped from prompts for CLIP-T.")] = "sks",
    fidelity_metric: Annotated[str, typer.Option(help="dino | clip_i (real models).")] = "dino",
    model: Annotated[
        list[str] | None, typer.Option("--model", help="METRIC=MODEL: a model id or folder for dino, clip_i, clip_t.")
    ] = None,
    height: Annotated[int | None, typer.Option(help="Image height (default: the model's).")] = None,
    width: Annotated[int | None, typer.Option(help="Image width (default: the model's).")] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="Negative prompt.")] = None,
    scheduler: Annotated[str | None, typer.Option(help="diffusers scheduler name.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or mps.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32 | float16 | bfloat16")] = "float32",
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch (default: half the cores, at most 4).")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> int:
    """Choose w and ω for one personalization from a budget of judged probe images; writes DIR/preset.yaml."""
    from steerguide.files import read_prompts
    from steerguide.limits import default_threads
    from steerguide.limits import threads as check_threads
    from steerguide.progress import console as progress_console
    from steerguide.tune.objective import Target
    from steerguide.tune.problems import real_problem, toy_problem, train_toy
    from steerguide.tune.tuner import check_budget, check_tune_out
    from steerguide.tune.tuner import tune as run_tune

    console = progress_console(stderr=True)
    goal = Target.parse(target, min_text, min_fidelity)
    check_tune_out(out)
    check_threads(threads)
    if prompts_file is not None and not prompts_file.is_file():
        raise UserError(f"--prompts-file {prompts_file}: no such file")
    if toy is not None:
        for name, value in (("--base", base), ("--references", references)):
            if value is not None and not (name == "--base" and value == "toy"):
                raise UserError(f"--toy takes no {name} (the toy base and renders are used)")
        # The toy problem samples the toy base as its judges were calibrated: an option it would not use
        # is refused rather than silently dropped.
        for name, value, default in (
            ("--fidelity-metric", fidelity_metric, "dino"), ("--model", model or None, None),
            ("--height", height, None), ("--width", width, None), ("--negative-prompt", negative_prompt, None),
            ("--scheduler", scheduler, None), ("--device", device, "cpu"), ("--dtype", dtype, "float32"),
            ("--token", token, "sks"),
        ):
            if value != default:
                raise UserError(
                    f"--toy takes no {name} (the toy judges score 32-pixel float32 samples of the toy base on "
                    "the CPU, with its scheduler and the subject's own token)"
                )
        prompts = read_prompts([], prompts_file) if prompts_file else None
        problem, bench = toy_problem(
            toy,
            out,
            personalization=str(personalization) if personalization else None,
            prompts=prompts,
            num_prompts=8 if num_prompts is None else num_prompts,
            seeds=seeds,
            steps=20 if steps is None else steps,
        )
    else:
        missing = [n for n, v in (("--personalization", personalization), ("--base", base),
                                  ("--references", references), ("--prompts-file", prompts_file)) if v is None]
        if missing:
            raise UserError(f"give --toy SUBJECT, or {', '.join(missing)} (missing) for a real personalization")
        from steerguide.loading import resolve_device

        resolve_device(device)
        models = {}
        for item in model or []:
            name, sep, value = item.partition("=")
            if not sep or not value:
                raise UserError(f"--model {item!r}: expected METRIC=MODEL")
            models[name] = value
        problem = real_problem(
            base=base,
            personalization=str(personalization),
            references=references,
            prompts=read_prompts([], prompts_file),
            token=token,
            fidelity=fidelity_metric,
            models=models,
            num_prompts=num_prompts,
            seeds=seeds,
            steps=30 if steps is None else steps,
            height=height,
            width=width,
            negative_prompt=negative_prompt,
            scheduler=scheduler,
            device=device,
            dtype=dtype,
        )
    check_budget(budget, problem.images_per_probe)
    import torch

    if device == "cpu":
        torch.set_num_threads(threads or default_threads())
    if toy is not None and problem.personalization is None:
        console.print(f"training the toy default personalization of {toy} (cached in {out}/personalizations)",
                      markup=False)
        problem = train_toy(problem, bench, out, progress=progress)

    def log(message: str) -> None:
        console.print(message, markup=False)

    result = run_tune(problem, out, goal, budget, progress=progress, log=log)
    f, t, o = result.scores["fidelity"], result.scores["text"], result.scores["objective"]
    names = (problem.fidelity_metric.name, problem.text_metric.name)
    console.print(
        f"chosen: {result.chosen.label} ({len(result.probes)} probes, {result.new_probes} new, "
        f"{result.sample_seconds:.0f} s probing in all); {names[0]} {f[0]:.3f} [{f[1]:.3f}, {f[2]:.3f}], "
        f"{names[1]} {t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}], objective {o[0]:.3f} [{o[1]:.3f}, {o[2]:.3f}] (95% CI)",
        markup=False,
    )
    console.print(f"preset: {result.preset}; plot: {result.plot}", markup=False)
    return 0


def register(app: typer.Typer) -> None:
    app.command("tune")(tune)
