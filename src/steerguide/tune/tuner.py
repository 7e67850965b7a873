"""A tuning run: probe knobs with the sweep's sampler and metrics until the budget is spent, then write the
chosen setting (preset.yaml), the probes plane (probes.png) and keep every probe (probes.jsonl).

Every probe samples the same prompts and seeds (common random numbers: two knobs differ by their guidance,
not by their draws), so a difference between probes is a difference between settings. The budget counts
images: a probe costs `len(prompts) × len(seeds)`; probes already in OUT/probes.jsonl count towards it, so
a rerun with the same budget continues where a killed run stopped and spends nothing more once done.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steerguide.errors import Interrupted, UserError
from steerguide.evaluate.benchmarks import BenchSubject
from steerguide.evaluate.metrics import Metric
from steerguide.progress import start_bar
from steerguide.tune.objective import Target
from steerguide.tune.preset import Preset, write_preset
from steerguide.tune.probes import Probe, ProbeStore
from steerguide.tune.search import COARSE, Judged, Knob, propose, smooth
from steerguide.tune.stats import bootstrap_ci

MAX_BUDGET = 100_000  # images; far beyond any useful tuning, and a typo guard


@dataclass
class Problem:
    """What is tuned: a personalization on a base, judged on fixed prompts × seeds by two metrics."""

    base: str
    personalization: str | None
    subject: BenchSubject
    prompts: list[str]
    seeds: list[int]
    fidelity_metric: Metric
    text_metric: Metric
    sampling: dict = field(default_factory=dict)  # steps, height, width, negative_prompt, scheduler
    device: str = "cpu"
    dtype: str = "float32"

    @property
    def images_per_probe(self) -> int:
        return len(self.prompts) * len(self.seeds)

    def identity(self) -> dict:
        """Everything that defines a probe's images and scores, for the probe keys."""
        from steerguide.sweep.cache import base_identity

        return {
            "base": base_identity(self.base),
            "personalization": base_identity(self.personalization) if self.personalization else None,
            "subject": self.subject.name,
            "definition": self.subject.definition,
            "references": [str(p) for p in self.subject.references],
            "prompts": self.prompts,
            "seeds": self.seeds,
            "sampling": self.sampling,
            "dtype": self.dtype,
            "metrics": [_metric_id(self.fidelity_metric), _metric_id(self.text_metric)],
        }


def _metric_id(metric: Metric) -> str:
    return f"{metric.name}:{getattr(metric, 'model_id', '')}"


@dataclass
class TuneResult:
    chosen: Knob
    scores: dict[str, tuple[float, float, float]]  # fidelity, text, objective: (mean, low, high)
    probes: dict[Knob, Probe]
    new_probes: int
    sample_seconds: float  # sampling + judging of every probe in the file (all runs)
    wall_seconds: float  # this run
    preset: Path
    plot: Path


def check_budget(budget: int, images_per_probe: int) -> int:
    """The budget in probes; one line when it cannot cover the coarse pass."""
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise UserError(f"--budget must be a whole number of images, got {budget!r}")
    if budget > MAX_BUDGET:
        raise UserError(f"--budget must be at most {MAX_BUDGET} images, got {budget}")
    need = len(COARSE) * images_per_probe
    if budget < need:
        raise UserError(
            f"--budget {budget} is too small to test anything: the coarse pass alone is {len(COARSE)} probes × "
            f"{images_per_probe} images (prompts × seeds) = {need} images; give --budget {need} or more "
            "(about twice that leaves room to refine), or fewer prompts or seeds"
        )
    return budget // images_per_probe


def check_tune_out(out: str | Path) -> Path:
    """--out: absent, empty, or an earlier tuning's folder (it holds probes.jsonl): checked before any work."""
    from steerguide.run_folder import Refusals, RunFolder

    out = Path(out)
    # an earlier tuning's, perhaps stopped while training; probes.jsonl's keys tell its problems apart
    folder = RunFolder(out, None, what="--out", marks=("probes.jsonl", "personalizations"))
    folder.decide(
        Refusals(
            file="--out {out} is an existing file, not a folder",
            foreign="--out {out} is a non-empty folder without probes.jsonl: steerguide does not add to "
            "folders it did not make; give a new or empty folder, or an earlier tuning's",
        )
    )
    return out


def default_sampler(problem: Problem):
    from steerguide.sweep.config import SweepConfig
    from steerguide.sweep.sampler import DiffusersSampler

    config = SweepConfig(
        base=problem.base,
        benchmark={},
        settings=[],
        seeds=problem.seeds,
        metrics={},
        sampling=problem.sampling,
        device=problem.device,
        dtype=problem.dtype,
    )
    return DiffusersSampler(config)


class _Judge:
    """Samples and scores probes; opens the pipeline and embeds the references only when a probe is due."""

    def __init__(self, problem: Problem, sampler: Any):
        self.problem, self.sampler = problem, sampler
        self.session = None
        self.prepared: list = []

    def open(self) -> None:
        """Load the pipeline and personalization (a LoRA that does not fit the base refuses here)."""
        p = self.problem
        if self.session is None:
            self.session = self.sampler.open(p.base, p.personalization, p.subject)
            references = p.subject.fidelity_references()
            self.prepared = [m.prepare(references) for m in (p.fidelity_metric, p.text_metric)]

    def __call__(self, knob: Knob) -> Probe:
        p = self.problem
        t0 = time.perf_counter()
        self.open()
        setting = knob.setting
        per_seed = []  # [seed][prompt] -> (fidelity, text)
        for seed in p.seeds:
            images = self.session.generate(setting, list(p.prompts), seed)
            scores = []
            for metric, prepared in zip((p.fidelity_metric, p.text_metric), self.prepared, strict=True):
                prompts = [q if metric.raw_prompts else p.subject.text_prompt(q) for q in p.prompts]
                scores.append(metric.score(images, prompts, prepared))
            per_seed.append(list(zip(*scores, strict=True)))
        pairs = [per_seed[j][i] for i in range(len(p.prompts)) for j in range(len(p.seeds))]
        return Probe(
            knob,
            tuple(float(f) for f, _ in pairs),
            tuple(float(t) for _, t in pairs),
            seconds=time.perf_counter() - t0,
        )

    def close(self) -> None:
        if self.session is not None and hasattr(self.session, "close"):
            self.session.close()


def probe_noise(probes: dict[Knob, Probe]) -> tuple[float, float]:
    """The variance of a probe's mean score that comes from its images, per axis (fidelity, text).

    Every probe samples the same prompts × seeds, so an image's own effect (an easy prompt) is shared by
    all probes and cancels between them; what remains is the probe × image interaction, estimated as the
    residual of the two-way table probes × images (σ² / n for a mean of n images)."""
    import numpy as np

    items = list(probes.values())
    n = len(items[0].fidelity) if items else 0
    if len(items) < 2 or n < 2 or any(len(p.fidelity) != n for p in items):
        return (0.0, 0.0)
    out = []
    for axis in ("fidelity", "text"):
        table = np.array([getattr(p, axis) for p in items], dtype=float)
        resid = table - table.mean(1, keepdims=True) - table.mean(0, keepdims=True) + table.mean()
        out.append(float((resid**2).sum() / ((len(items) - 1) * (n - 1)) / n))
    return out[0], out[1]


def next_knobs(
    judged: dict[Knob, Judged], target: Target, max_probes: int, noise: tuple[float, float] = (0.0, 0.0)
) -> list[Knob]:
    """The next batch to probe within `max_probes` in all; [] when the budget is spent or the search has
    converged (every neighbour of the best front probes judged at the finest step). `noise`: see
    `probe_noise`."""
    room = max_probes - len(judged)
    if room <= 0:
        return []
    if not all(k in judged for k in COARSE):
        return propose(judged, lambda j: (0,))[:room]
    smoothed = smooth(judged, noise)  # the centres are chosen as the final choice is: on smoothed scores
    return propose(smoothed, target.ranker(list(smoothed.values())))[:room]


def tune(
    problem: Problem,
    out: str | Path,
    target: Target,
    budget: int,
    *,
    sampler: Any = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> TuneResult:
    """Probe until `budget` images are spent (or the search converges), then choose by `target`."""
    t_start = time.perf_counter()
    out = check_tune_out(out)
    max_probes = check_budget(budget, problem.images_per_probe)
    store = ProbeStore(out / "probes.jsonl", problem.identity())
    probes = store.read()  # a damaged file stops here, before any model is loaded
    if log and probes:
        log(f"{len(probes)} probes found in {store.path}: continuing")
    judge = _Judge(problem, default_sampler(problem) if sampler is None else sampler)
    if next_knobs({k: p.judged for k, p in probes.items()}, target, max_probes, probe_noise(probes)):
        judge.open()  # probes to make: what can refuse (the model, the personalization) before any folder or bar
    out.mkdir(parents=True, exist_ok=True)
    bar = start_bar(
        progress, max_probes * problem.images_per_probe, f"tune {problem.subject.name}", unit="images"
    )
    new = 0
    try:
        if bar is not None:
            bar[0].update(bar[1], completed=min(len(probes), max_probes) * problem.images_per_probe)
        while batch := next_knobs(
            {k: p.judged for k, p in probes.items()}, target, max_probes, probe_noise(probes)
        ):
            for knob in batch:
                if bar is not None:
                    bar[0].update(bar[1], description=f"tune {problem.subject.name}: {knob.label}")
                probe = judge(knob)
                store.append(probe)
                probes[knob] = probe
                new += 1
                if bar is not None:
                    bar[0].advance(bar[1], problem.images_per_probe)
    except KeyboardInterrupt:
        raise Interrupted(
            f"{new} new probes judged by this run; {len(probes)} are kept in {store.path}; rerun the same "
            "command to continue"
        ) from None
    finally:
        judge.close()
        if bar is not None:
            bar[0].stop()
    judged_list = list(smooth({k: p.judged for k, p in probes.items()}, probe_noise(probes)).values())
    best = target.choose(judged_list)  # UserError (the best reachable) when no probe meets the target
    chosen = probes[best.knob]
    scores = _intervals(target, judged_list, chosen)
    preset = write_preset(out / "preset.yaml", _preset(problem, target, chosen, scores, probes, judged_list))
    from steerguide.tune.plot import plot_probes

    names = (problem.fidelity_metric.name, problem.text_metric.name)
    plot = plot_probes(
        out / "probes.png",
        probes,
        chosen,
        scores,
        names,
        f"{problem.subject.name}: {len(probes)} probes × {problem.images_per_probe} images; "
        f"target {target.describe()}",
    )
    return TuneResult(
        chosen=best.knob,
        scores=scores,
        probes=probes,
        new_probes=new,
        sample_seconds=sum(p.seconds for p in probes.values()),
        wall_seconds=time.perf_counter() - t_start,
        preset=preset,
        plot=plot,
    )


def _intervals(target: Target, judged: list, chosen: Probe) -> dict[str, tuple[float, float, float]]:
    cols = [chosen.fidelity, chosen.text]
    scores = {
        "fidelity": bootstrap_ci(cols, lambda f, t: f),
        "text": bootstrap_ci(cols, lambda f, t: t),
    }
    if target.kind == "balanced":
        rank = target.ranker(judged)
        scores["objective"] = bootstrap_ci(cols, lambda f, t: rank(Judged(chosen.knob, f, t))[1])
    else:
        scores["objective"] = scores[target.kind]
    return scores


def _preset(problem: Problem, target: Target, chosen: Probe, scores: dict, probes: dict, judged: list) -> Preset:
    knob = chosen.knob
    names = {"fidelity": problem.fidelity_metric.name, "text": problem.text_metric.name}

    def entry(stat: tuple[float, float, float]) -> dict:
        return {"mean": round(stat[0], 6), "ci95": [round(stat[1], 6), round(stat[2], 6)]}

    target_info: dict[str, Any] = {"kind": target.kind, "maximizes": target.describe()}
    if target.bound is not None:
        target_info["threshold"] = round(target.threshold(judged), 6)
    return Preset(
        method=knob.method,
        scale=knob.scale,
        omega=None if knob.is_cfg else knob.omega,
        omega_schedule=knob.schedule,
        base=_portable_base(problem.base),
        personalization=None if problem.personalization is None else str(problem.personalization),
        extra={
            "subject": problem.subject.name,
            "target": target_info,
            "scores": {
                names["fidelity"]: entry(scores["fidelity"]),
                names["text"]: entry(scores["text"]),
                "objective": entry(scores["objective"]),
                "ci": "95% percentile bootstrap over the probe's images (prompts × seeds)",
            },
            "probes": len(probes),
            "images": len(probes) * problem.images_per_probe,
            "tuned_on": {
                "prompts": len(problem.prompts),
                "seeds": list(problem.seeds),
                **{k: v for k, v in problem.sampling.items() if v is not None},
            },
        },
    )


def _portable_base(base) -> str:
    """The base as a preset names it: 'toy' for the toy world's, whose folder lies inside the installed
    package (an absolute path would tie the preset to the install that wrote it)."""
    from steerguide.bases import named_base

    found = named_base(base)
    return found[0] if found else str(base)
