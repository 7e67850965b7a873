"""`steerguide demo`: the whole method on the embedded toy world, in a few minutes on a laptop CPU.

One toy subject is personalized with LoRA (the toy world's tuned defaults), its evaluation prompts are
sampled with CFG, autoguidance and personalization guidance at a few settings each, every image is judged
for subject fidelity and text alignment, and the report (trade-off plot, grids, table, HTML) is written.

The demo is a thin workflow over `steerguide.sweep` (resumable rows, cached personalization) and
`steerguide.evaluate.report`: a rerun into the same folder reuses the trained LoRA and the rows done.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from steerguide import methods
from steerguide.errors import UserError
from steerguide.quiet import libraries_quieted
from steerguide.run_folder import Refusals, RunFolder
from steerguide.typeset import font, mean_ci_text, png_data_uri, wrap

FIDELITY_METRIC, TEXT_METRIC = "toy_fidelity", "toy_text"

# Where each method reaches, as the toy DreamBench found it (docs/results.md): CFG through its scales, AG
# with the pretrained model (θ_pre), PG at w = 3 with ω ∈ {0, 0.5, 0.75} (from the most subject, past what
# CFG reaches at any scale, to near CFG's text) and PG ω = 0.5 guided on the first 60% of the steps only
# (0.8× CFG's denoiser rows), which beat PG guided throughout at w ≥ 3 there. 9 settings, as before.
DEMO_GUIDANCE: dict[str, Any] = {
    "cfg": {"scale": [1.5, 3.0, 5.0]},
    "ag": {"scale": [3.0, 5.0], "omega": [0.0]},
    "pg": [
        {"scale": [3.0], "omega": [0.0, 0.5, 0.75], "omega_schedule": ["constant"]},
        {"scale": [3.0], "omega": [0.5], "interval": [0.0, 0.6]},
    ],
}
# The first picture's columns: one setting each, chosen by `choose_showcase_settings`.
SHOWCASE_METHODS = ("cfg", "ag", "pg", "pg-interval")
SHOWCASE_PROMPTS = 4
SHOWCASE_CELL = 128  # px: the 32 px images upscaled nearest-neighbour


@dataclass(frozen=True)
class DemoSize:
    """How much the demo does. The defaults aim at 2 minutes on an idle 2-core CPU (9 settings x 16 prompts
    x 1 seed after a 400-step LoRA; docs/results.md has the measurement); the CLI's hidden options shrink
    it for tests."""

    train_steps: int | None = None  # None: the toy world's tuned LoRA steps
    steps: int = 20  # sampling steps (the toy model's DPM-Solver++ needs no more)
    num_prompts: int | None = None  # None: all of the subject's evaluation prompts
    seeds: int = 1


@dataclass
class DemoResult:
    out: Path
    subject: str
    report: Any  # steerguide.evaluate.report.Report
    stats: Any  # steerguide.sweep.SweepStats
    seconds: float


DEFAULT_SUBJECT = "bnq_triangle"  # the text judge rarely reads sks_star's split look as a star (text ≈ 0.06)


def default_subject() -> str:
    return DEFAULT_SUBJECT


def demo_config(subject: str, size: DemoSize = DemoSize(), base: str = "toy",
                subjects_file: str | Path | None = None) -> dict:
    """The demo's sweep config (a mapping `steerguide.sweep.parse_config` reads)."""
    # No validation grid: the report shows the samples, and the grid would cost a tenth of the budget.
    train: dict[str, Any] = {"method": "lora", "validation_images": 0}
    if size.train_steps is not None:
        train["steps"] = size.train_steps
    benchmark: dict[str, Any] = {"name": "toy", "subjects": [subject]}
    if subjects_file is not None:
        benchmark["subjects_file"] = str(Path(subjects_file).resolve())
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


DEMO_REFUSALS = Refusals(
    foreign="{out!r} holds results of something else; give the demo another --out",
    unreadable="{record!r} is not valid JSON; give the demo another --out",
    other="{out!r} holds another demo or sweep (other subject or settings); give the demo another --out",
)


def _check_same_demo(out: Path, config) -> None:
    """A rerun resumes only the same demo: rows of another subject or size would mix into the report."""
    # the sweep's record: the whole config (less the metrics' axes, written beside it)
    folder = RunFolder(out, "sweep.json", contents=("results.jsonl", "sweep.json"))
    folder.decide(DEMO_REFUSALS, json.loads(json.dumps(config.to_json())), ignore=("metric_axes",))


def run_demo(
    out: str | Path = "steerguide-demo",
    subject: str | None = None,
    size: DemoSize = DemoSize(),
    base: str = "toy",
    progress: bool = True,
    console: Any = None,
    subjects_file: str | Path | None = None,
    retrain: bool = False,
) -> DemoResult:
    """Personalize one toy subject with LoRA, sweep CFG / AG / PG on its prompts, and write the report
    (OUT/report/index.html, its first picture OUT/report/showcase.png). Resumes from what OUT holds.

    The toy world ships the default subject's LoRA, trained with the same recipe (`steerguide toyworld
    ship-personalization`): it is copied instead of trained unless `retrain`."""
    from steerguide import toyworld
    from steerguide.evaluate.benchmarks import load_benchmark
    from steerguide.evaluate.report import write_report
    from steerguide.sweep import parse_config, resolve_base, run_sweep
    from steerguide.sweep.cache import shipped_personalization

    start = time.perf_counter()
    # UserError when the file is bad or the subject unknown
    found = toyworld.get_subject(subject or default_subject(), subjects_file)
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
    config = parse_config(demo_config(found.name, size, base, subjects_file), source="steerguide demo")
    _check_out(out)
    _check_same_demo(out, config)

    say = console.print if console is not None else (lambda *a, **k: None)
    prompts = found.eval_prompts()[: size.num_prompts]
    bench_subject = next(s for s in load_benchmark(config.benchmark).subjects if s.name == found.name)
    shipped = not retrain and shipped_personalization(config, bench_subject) is not None
    personalizing = (
        "the LoRA the toy world ships for it (the default recipe; --retrain trains it here)"
        if shipped else "personalizing with LoRA (cached under OUT/personalizations/)"
    )
    say(
        f"[bold]steerguide demo[/bold]: {found.name} ({found.instance_prompt!r}) → {out}\n"
        f"{personalizing}, then sampling and judging "
        f"{len(config.settings)} guidance settings × {len(config.seeds)} seeds × {len(prompts)} prompts"
    )
    stats = run_sweep(config, out, progress=progress, shipped=not retrain)
    say("writing the report")
    report_dir = out / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    picture = showcase(out, found, size.num_prompts)
    picture.save(report_dir / "showcase.png")
    report = write_report(out, preface_html=showcase_html(out, found, picture, size.num_prompts))
    return DemoResult(out, found.name, report, stats, time.perf_counter() - start)


def _column(row: dict) -> str:
    """Which of the first picture's columns a result row belongs to."""
    if row["method"] == "pg" and tuple(row.get("interval") or (0.0, 1.0)) != (0.0, 1.0):
        return "pg-interval"
    return row["method"]


def _label(row: dict) -> str:
    text = methods.get(row["method"]).title + f" w={row['scale']:g}"
    if row["method"] == "ag" and row.get("omega") == 0.0:
        return text + " (θ_pre)"
    if row["method"] == "pg":
        text += f" ω={row['omega']:g}"
        if _column(row) == "pg-interval":
            text += f", first {100 * row['interval'][1]:g}%"
    return text


def choose_showcase_settings(rows: list[dict], shown: list[int]) -> dict[str, dict]:
    """{column: {"key", "label", "held_out"}}: for each method, its setting that the tuner's `balanced`
    objective ranks first on the prompts the picture does NOT show, the same rule for every method.

    The rule, fixed before looking at the demo's images: per setting, the mean fidelity F and text T over
    the other prompts' images; both min-max normalized over all the demo's settings (a spread of zero
    counts as 1); the setting of each method with the largest (F − F_min)/ΔF + (T − T_min)/ΔT (ties: the
    grid's first). A demo shrunk below five prompts has no other prompts: then all of them (`held_out`
    False).
    """
    held = [r for r in rows if r["prompt_index"] not in shown]
    held_out = bool(held)
    rows = held or rows
    means: dict[tuple, list] = {}
    for r in rows:
        key = (r["method"], r["scale"], r.get("omega"), r.get("omega_schedule"), tuple(r.get("interval") or (0, 1)))
        entry = means.setdefault(key, [r, [], []])
        entry[1].append(r["metrics"][FIDELITY_METRIC])
        entry[2].append(r["metrics"][TEXT_METRIC])
    stats = {k: (v[0], sum(v[1]) / len(v[1]), sum(v[2]) / len(v[2])) for k, v in means.items()}
    f = [s[1] for s in stats.values()]
    t = [s[2] for s in stats.values()]
    df, dt = (max(f) - min(f)) or 1.0, (max(t) - min(t)) or 1.0
    chosen: dict[str, dict] = {}
    for key, (row, fid, txt) in stats.items():
        score = (fid - min(f)) / df + (txt - min(t)) / dt
        column = _column(row)
        if column not in chosen or score > chosen[column]["score"]:
            chosen[column] = {"key": key, "label": _label(row), "score": score, "held_out": held_out,
                              "fidelity": fid, "text": txt}
    return chosen


def showcase_prompts(subject, num_prompts: int | None = None) -> list[int]:
    """Indices of up to `SHOWCASE_PROMPTS` evaluation prompts, one of each kind first: a new background,
    a new position, a second object, a recoloring."""
    specs = subject.eval_specs()[:num_prompts]
    kinds = [
        lambda s: s.background is not None and s.position is None,
        lambda s: s.position is not None and s.background is None,
        lambda s: s.second is not None,
        lambda s: s.color is not None,
    ]
    chosen = [next((i for i, s in enumerate(specs) if kind(s)), None) for kind in kinds]
    chosen = [i for i in chosen if i is not None]
    chosen += [i for i in range(len(specs)) if i not in chosen]
    return chosen[:SHOWCASE_PROMPTS]


def _showcase_rows(out: Path, subject, num_prompts: int | None) -> tuple[dict, list[tuple[str, dict[str, dict]]]]:
    """(the chosen settings, [(prompt, {column: result row})] at the first seed for the showcase prompts)."""
    from steerguide.evaluate.report import load_results

    rows = [r for r in load_results(out) if r["subject"] == subject.name]
    seed = min(r["seed"] for r in rows)
    shown = showcase_prompts(subject, num_prompts)
    chosen = choose_showcase_settings(rows, shown)

    def key(r):
        return (r["method"], r["scale"], r.get("omega"), r.get("omega_schedule"), tuple(r.get("interval") or (0, 1)))

    found = []
    for index in shown:
        by_method = {
            column: next(r for r in rows if r["prompt_index"] == index and r["seed"] == seed
                         and key(r) == chosen[column]["key"])
            for column in SHOWCASE_METHODS if column in chosen
        }
        found.append((subject.eval_prompts()[index], by_method))
    return chosen, found


def showcase(out: str | Path, subject, num_prompts: int | None = None):
    """The demo's first picture: the subject's photos, then for a few of its prompts the CFG, AG and PG
    images (first seed) at each method's setting chosen by `choose_showcase_settings`, upscaled
    nearest-neighbour, each with its scores."""
    from PIL import Image, ImageDraw

    out = Path(out)
    cell, pad, left, label_h = SHOWCASE_CELL, 8, 210, 34
    photos = subject.reference_images()
    chosen, entries = _showcase_rows(out, subject, num_prompts)
    methods = [m for m in SHOWCASE_METHODS if m in chosen]
    width = left + max(len(photos), len(methods)) * (cell + pad)
    top = 30
    photo_block = 22 + cell + pad * 2
    height = top + photo_block + 26 + len(entries) * (cell + label_h + pad)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    big, small = font(15), font(12)
    draw.text((pad, 6), f"{subject.name}: the photos it learns from, and what each method draws", fill="black",
              font=big)
    y = top
    draw.text((pad, y + 22), "photos", fill="black", font=small)
    draw.text((pad, y + 38), f"(training; prompt {subject.instance_prompt!r})", fill="gray", font=small)
    for i, photo in enumerate(photos):
        sheet.paste(photo.resize((cell, cell), Image.NEAREST), (left + i * (cell + pad), y + 20))
    y += photo_block
    for j, method in enumerate(methods):
        draw.text((left + j * (cell + pad), y + 4), chosen[method]["label"], fill="black", font=small)
    y += 26
    for prompt, by_method in entries:
        for k, line in enumerate(wrap(prompt, 28)[:5]):
            draw.text((pad, y + 4 + 16 * k), line, fill="black", font=small)
        for j, method in enumerate(methods):
            x = left + j * (cell + pad)
            row = by_method.get(method)
            if row is None or not (out / row["image"]).is_file():
                draw.rectangle((x, y, x + cell - 1, y + cell - 1), outline="gray")
                continue
            with Image.open(out / row["image"]) as im:
                sheet.paste(im.convert("RGB").resize((cell, cell), Image.NEAREST), (x, y))
            scores = row["metrics"]
            draw.text((x, y + cell + 2), f"fidelity {scores[FIDELITY_METRIC]:.2f}", fill="black", font=small)
            draw.text((x, y + cell + 17), f"text {scores[TEXT_METRIC]:.2f}", fill="black", font=small)
        y += cell + label_h + pad
    return sheet


def showcase_html(out: str | Path, subject, picture, num_prompts: int | None = None) -> str:
    """The report's first section: the showcase picture and the per-image scores in it."""
    import html


    esc = html.escape
    lines = []
    chosen, entries = _showcase_rows(Path(out), subject, num_prompts)
    for prompt, by_method in entries:
        for method, row in by_method.items():
            m = row["metrics"]
            lines.append(f"<tr><td>{esc(prompt)}</td><td>{esc(chosen[method]['label'])}</td>"
                         f"<td>{m[FIDELITY_METRIC]:.3f}</td><td>{m[TEXT_METRIC]:.3f}</td></tr>")
    where = ("the prompts this picture does not show" if next(iter(chosen.values()))["held_out"]
             else "all prompts (too few for a held-out set)")
    return (
        f"<h2>{esc(subject.name)}: photos, then each method at its setting chosen on {where}</h2>"
        "<p>Each method's setting is the one the tuner's balanced objective (min-max normalized fidelity + "
        f"text, over all the demo's settings) ranks first on {where}: the same rule for every method, "
        "fixed before any image.</p>"
        f'<img class="grid" src="{png_data_uri(picture)}" alt="showcase">'
        "<table><tr><th>prompt</th><th>setting</th><th>fidelity</th><th>text</th></tr>"
        + "".join(lines) + "</table>"
    )


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
        if tuple(s.interval or (0.0, 1.0)) != (0.0, 1.0):  # guided on part of the steps only
            omega += f" [{s.interval[0]:g},{s.interval[1]:g}]"
        table.add_row(
            s.method.upper(),
            f"{s.scale:g}",
            omega,
            mean_ci_text(*s.stats[FIDELITY_METRIC], digits=3),
            mean_ci_text(*s.stats[TEXT_METRIC], digits=3),
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
            help=f"Toy subject to personalize (default: {DEFAULT_SUBJECT}; `steerguide toyworld info` lists them).",
        ),
    ] = None,
    subjects_file: Annotated[
        Path | None,
        typer.Option("--subjects-file", help="A subjects file (YAML) that --subject is looked up in."),
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
    retrain: Annotated[
        bool,
        typer.Option(
            "--retrain",
            help="Train the subject's LoRA here even where the toy world ships it (about 2 min more).",
        ),
    ] = False,
) -> int:
    """Personalize a toy subject, sample it with CFG, AG and PG, judge the images and write a report."""
    import os

    import torch

    from steerguide.progress import console as progress_console

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo needs nothing from the network
    console = progress_console(stderr=True)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with libraries_quieted():
            result = run_demo(
                out,
                subject,
                DemoSize(train_steps, steps, num_prompts, seeds),
                base=base,
                progress=progress,
                console=console,
                subjects_file=subjects_file,
                retrain=retrain,
            )
    finally:  # the CLI also runs in-process (tests, notebooks): leave torch as it was
        torch.set_num_threads(previous)
    progress_console().print(result_table(result))
    progress_console().print(
        f"first picture: {result.out / 'report' / 'showcase.png'}\n"
        f"report: {result.report.html}  ({result.stats.written} new images, "
        f"{result.stats.done_before} reused; {result.seconds:.0f} s)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    return 0


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
