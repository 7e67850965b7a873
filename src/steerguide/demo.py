"""`steerguide demo`: the whole method on the embedded toy world, in a few minutes on a laptop CPU.

One toy subject is personalized with LoRA (the toy world's tuned defaults), its evaluation prompts are
sampled with CFG, autoguidance and personalization guidance at a few settings each, every image is judged
for subject fidelity and text alignment, and the report (trade-off plot, grids, table, HTML) is written.

The demo is a thin workflow over `steerguide.evaluate.sweep` (resumable rows, cached personalization) and
`steerguide.evaluate.report`: a rerun into the same folder reuses the trained LoRA and the rows done.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from steerguide.errors import UserError

FIDELITY_METRIC, TEXT_METRIC = "toy_fidelity", "toy_text"

# A few points of each curve: CFG and AG through their scales, PG at two ω (0 = the pretrained model's
# null prediction, 0.5 = half the personalization kept) through the same scales as CFG.
DEMO_GUIDANCE: dict[str, dict[str, Any]] = {
    "cfg": {"scale": [1.5, 3.0, 5.0, 7.5]},
    "ag": {"scale": [1.5, 3.0, 5.0], "omega": [0.0]},
    "pg": {"scale": [3.0, 5.0, 7.5], "omega": [0.0, 0.5], "omega_schedule": ["constant"]},
}


@dataclass(frozen=True)
class DemoSize:
    """How much the demo does. The defaults fit in about 5 minutes on 2 CPU cores (see docs/results.md);
    the CLI's hidden options shrink it for tests."""

    train_steps: int | None = None  # None: the toy world's tuned LoRA steps
    steps: int = 20  # sampling steps (the toy model's DPM-Solver++ needs no more)
    num_prompts: int | None = None  # None: all of the subject's evaluation prompts
    seeds: int = 2


@dataclass
class DemoResult:
    out: Path
    subject: str
    report: Any  # steerguide.evaluate.report.Report
    stats: Any  # steerguide.evaluate.sweep.SweepStats
    seconds: float


DEFAULT_SUBJECT = "bnq_triangle"  # the text judge rarely reads sks_star's split look as a star (text ≈ 0.06)


def default_subject() -> str:
    return DEFAULT_SUBJECT


def demo_config(subject: str, size: DemoSize = DemoSize(), base: str = "toy") -> dict:
    """The demo's sweep config (a mapping `steerguide.evaluate.sweep.parse_config` reads)."""
    # No validation grid: the report shows the samples, and the grid would cost a tenth of the budget.
    train: dict[str, Any] = {"method": "lora", "validation_images": 0}
    if size.train_steps is not None:
        train["steps"] = size.train_steps
    benchmark: dict[str, Any] = {"name": "toy", "subjects": [subject]}
    if size.num_prompts is not None:
        benchmark["num_prompts"] = size.num_prompts
    return {
        "base": base,
        "benchmark": benchmark,
        "personalization": {"train": train},
        "guidance": DEMO_GUIDANCE,
        "seeds": size.seeds,
        "sampling": {"steps": size.steps, "batch_size": 64},
        "metrics": [FIDELITY_METRIC, TEXT_METRIC],
        "device": "cpu",
        "dtype": "float32",
    }


def _check_out(out: Path) -> None:
    """Fail early, in one line, when OUT cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as e:
        raise UserError(f"cannot write to --out {str(out)!r}: {e.strerror or e}") from None


def _check_same_demo(out: Path, config) -> None:
    """A rerun resumes only the same demo: rows of another subject or size would mix into the report."""
    previous = out / "sweep.json"
    if not previous.is_file():
        if (out / "results.jsonl").exists():
            raise UserError(f"{str(out)!r} holds results of something else; give the demo another --out")
        return
    try:
        recorded = json.loads(previous.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{str(previous)!r} is not valid JSON; give the demo another --out") from None
    recorded.pop("metric_axes", None)
    if recorded != json.loads(json.dumps(config.to_json())):
        raise UserError(
            f"{str(out)!r} holds another demo or sweep (other subject or settings); "
            "give the demo another --out"
        )


def run_demo(
    out: str | Path = "steerguide-demo",
    subject: str | None = None,
    size: DemoSize = DemoSize(),
    base: str = "toy",
    progress: bool = True,
    console: Any = None,
) -> DemoResult:
    """Personalize one toy subject with LoRA, sweep CFG / AG / PG on its prompts, and write the report
    (OUT/report/index.html). Resumes from what OUT already holds."""
    from steerguide import toyworld
    from steerguide.evaluate.report import write_report
    from steerguide.evaluate.sweep import parse_config, resolve_base, run_sweep

    start = time.perf_counter()
    name = toyworld.get_subject(subject).name if subject else default_subject()  # UserError when unknown
    for field_name in ("steps", "seeds"):
        if getattr(size, field_name) < 1:
            raise UserError(f"--{field_name} must be >= 1, got {getattr(size, field_name)}")
    if size.train_steps is not None and size.train_steps < 1:
        raise UserError(f"--train-steps must be >= 1, got {size.train_steps}")
    if size.num_prompts is not None and size.num_prompts < 1:
        raise UserError(f"--num-prompts must be >= 1, got {size.num_prompts}")
    if not (Path(resolve_base(base)) / "model_index.json").is_file():
        raise UserError(
            f"no base model at {resolve_base(base)} (model_index.json missing): the toy world's "
            "base model is not installed"
        )
    out = Path(out)
    config = parse_config(demo_config(name, size, base), source="steerguide demo")
    _check_out(out)
    _check_same_demo(out, config)

    say = console.print if console is not None else (lambda *a, **k: None)
    prompts = len(toyworld_prompts(name, size))
    say(
        f"[bold]steerguide demo[/bold]: {name} ({toyworld.get_subject(name).instance_prompt!r}) → {out}\n"
        f"personalizing with LoRA (cached under OUT/personalizations/), then sampling and judging "
        f"{len(config.settings)} guidance settings × {len(config.seeds)} seeds × {prompts} prompts"
    )
    stats = run_sweep(config, out, progress=progress)
    say("writing the report")
    report = write_report(out)
    return DemoResult(out, name, report, stats, time.perf_counter() - start)


def toyworld_prompts(subject: str, size: DemoSize) -> list[str]:
    from steerguide import toyworld

    return toyworld.get_subject(subject).eval_prompts()[: size.num_prompts]


def _fmt(mean: float, ci: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.3f}" if math.isnan(ci) else f"{mean:.3f} ± {ci:.3f}"


def result_table(result: DemoResult):
    """A rich table: method, w, ω, subject fidelity and text alignment (mean ± 95% CI), images."""
    from rich.table import Table

    table = Table(title=f"{result.subject}: mean ± 95% CI over images (higher is better)")
    for column, justify in (
        ("method", "left"),
        ("w", "right"),
        ("ω", "right"),
        ("fidelity", "right"),
        ("text", "right"),
        ("n", "right"),
    ):
        table.add_column(column, justify=justify)
    for s in result.report.summary:
        omega = "" if s.omega is None else f"{s.omega:g}"
        if s.omega_schedule not in (None, "constant"):
            omega += f" {s.omega_schedule}"
        table.add_row(
            s.method.upper(),
            f"{s.scale:g}",
            omega,
            _fmt(*s.stats[FIDELITY_METRIC]),
            _fmt(*s.stats[TEXT_METRIC]),
            str(s.n),
        )
    return table


def demo(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Output folder: LoRA, images, results, report. A rerun into the same folder resumes.",
        ),
    ] = Path("steerguide-demo"),
    subject: Annotated[
        str | None,
        typer.Option(
            "--subject",
            help="Toy subject to personalize (default: bnq_triangle; `steerguide toyworld info` lists them).",
        ),
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
    threads: Annotated[
        int,
        typer.Option(
            "--threads",
            min=1,
            help="CPU threads for PyTorch. 1 by default: "
            "with other jobs on the cores, more threads made LoRA training here "
            "10× slower; on idle cores, try more.",
        ),
    ] = 1,
    # Advanced, for tests and quick looks: shrink the demo, or run it on another toy-architecture base.
    train_steps: Annotated[int | None, typer.Option("--train-steps", hidden=True)] = None,
    steps: Annotated[int, typer.Option("--steps", hidden=True)] = DemoSize.steps,
    num_prompts: Annotated[int | None, typer.Option("--num-prompts", hidden=True)] = None,
    seeds: Annotated[int, typer.Option("--seeds", hidden=True)] = DemoSize.seeds,
    base: Annotated[str, typer.Option("--base", hidden=True)] = "toy",
) -> int:
    """Personalize a toy subject, sample it with CFG, AG and PG, judge the images and write a report."""
    import os

    import torch
    from rich.console import Console

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo needs nothing from the network
    console = Console(stderr=True)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = run_demo(
            out,
            subject,
            DemoSize(train_steps, steps, num_prompts, seeds),
            base=base,
            progress=progress,
            console=console,
        )
    finally:  # the CLI also runs in-process (tests, notebooks): leave torch as it was
        torch.set_num_threads(previous)
    Console().print(result_table(result))
    Console().print(
        f"report: {result.report.html}  ({result.stats.written} new images, "
        f"{result.stats.done_before} reused; {result.seconds:.0f} s)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    return 0


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
