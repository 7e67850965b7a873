"""`steerguide sweep`, `steerguide report` and `steerguide evaluate`: thin shells over the library."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from steerguide.errors import UserError


def sweep(
    config: Annotated[Path, typer.Argument(help="Sweep config (.yaml or .toml); see examples/sweep.yaml.")],
    out: Annotated[
        Path, typer.Option("--out", help="Output folder: results.jsonl, images/, personalizations/.")
    ],
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Stop after this many new rows (this process).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate the config, count rows, run nothing.")
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    train_only: Annotated[
        bool, typer.Option("--train-only", help="Only train (or find cached) personalizations, then stop.")
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option("--threads", min=1, help="CPU threads for torch (1 is fastest on busy shared cores)."),
    ] = None,
) -> int:
    """Run a grid of guidance settings × subjects × prompts × seeds; a rerun skips the rows already done.

    Under `accelerate launch` the pending rows are shared among the processes; two sweeps into the same
    --out share them too (each claims the rows it computes)."""
    from steerguide.evaluate.benchmarks import load_benchmark
    from steerguide.evaluate.results import ResultsStore
    from steerguide.progress import console as progress_console
    from steerguide.sweep import describe_grid, expand, load_config, resolve_base, run_sweep
    from steerguide.sweep.config import check_sample_size
    from steerguide.sweep.run import SweepInterrupted, check_out
    from steerguide.sweep.sampler import check_inputs

    cfg = load_config(config)
    check_out(out, create=False)  # before any work: an existing file or an unwritable place
    console = progress_console(stderr=True)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if dry_run:
        base = resolve_base(cfg.base)
        check_sample_size(cfg, base)
        benchmark = load_benchmark(cfg.benchmark)
        rows = expand(cfg, benchmark)
        check_inputs(cfg, benchmark.subjects, base, fits=True)  # what a run would refuse, without sampling
        done = ResultsStore(out / "results.jsonl").done_keys()
        pending = sum(r.key not in done for r in rows)
        console.print(
            f"{describe_grid(cfg, benchmark)}, {len(rows) - pending} done, {pending} to run", markup=False
        )
        return 0

    def log(message: str) -> None:
        console.print(message, markup=False)

    try:
        stats = run_sweep(cfg, out, progress=progress, limit=limit, train_only=train_only, log=log)
    except SweepInterrupted as e:
        print(f"steerguide: {e}", file=sys.stderr)
        return 130
    elsewhere = f", {stats.done_elsewhere} done meanwhile by another sweep" if stats.done_elsewhere else ""
    console.print(
        f"[process {stats.process_index + 1}/{stats.num_processes}] {stats.written} new rows "
        f"({stats.done_before} of {stats.total} done before{elsewhere}) in {stats.wall_seconds:.1f}s "
        f"({stats.written / max(stats.wall_seconds, 1e-9):.2f} rows/s overall); "
        f"sampling {stats.images_per_second:.2f} images/s, metrics {stats.metrics_per_second:.1f} values/s",
        markup=False,
    )
    return 0


def report(
    folder: Annotated[Path, typer.Argument(help="A sweep output folder (holds results.jsonl).")],
    out: Annotated[Path | None, typer.Option("--out", help="Report folder (default: FOLDER/report).")] = None,
    max_prompts: Annotated[
        int, typer.Option("--max-prompts", help="Prompts (rows) per image grid.")
    ] = 8,
    max_columns: Annotated[
        int, typer.Option("--max-columns", help="Settings (columns) per image grid.")
    ] = 12,
) -> int:
    """Trade-off plots, image grids, a summary table and one self-contained HTML file."""
    from rich.table import Table

    from steerguide.evaluate.report import write_report
    from steerguide.progress import console as progress_console
    from steerguide.typeset import mean_ci_text

    rep = write_report(folder, out, max_prompts=max_prompts, max_columns=max_columns)
    table = Table(title=f"{folder.name}: mean ± 95% CI per setting")
    table.add_column("setting")
    table.add_column("n", justify="right")
    for m in rep.metrics:
        table.add_column(m, justify="right")
    for s in rep.summary:
        table.add_row(s.label, str(s.n), *(mean_ci_text(*s.stats[m]) for m in rep.metrics))
    console = progress_console()
    console.print(table)
    for note in rep.notes:
        print(f"steerguide: note: {note}", file=sys.stderr)
    console.print(f"report: {rep.html}", markup=False)
    return 0


def evaluate(
    images: Annotated[Path, typer.Option("--images", help="Folder of generated images.")],
    metrics: Annotated[
        str, typer.Option("--metrics", help="Comma-separated metric names.")
    ] = "dino,clip_i,clip_t",
    references: Annotated[
        Path | None, typer.Option("--references", help="Folder of the subject's real images.")
    ] = None,
    prompt: Annotated[
        str | None, typer.Option("--prompt", help="Prompt of every image (else metadata.jsonl / .txt).")
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", help="Unique token to drop from prompts for CLIP-T (e.g. sks).")
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", help="METRIC=MODEL: a model id or folder for a metric.")
    ] = None,
    device: Annotated[str, typer.Option("--device")] = "cpu",
    out: Annotated[
        Path | None, typer.Option("--out", help="Write per-image scores and the summary as JSON here.")
    ] = None,
) -> int:
    """Score a folder of already generated images (DINO, CLIP-I, CLIP-T, toy judges)."""

    from rich.table import Table

    from steerguide.evaluate.folder import score_folder
    from steerguide.evaluate.metrics import (
        DEFAULT_MODELS,
        build_metrics,
        canonical_metric_name,
        normalize_metric_spec,
    )
    from steerguide.loading import resolve_device
    from steerguide.progress import console as progress_console
    from steerguide.typeset import mean_ci_text

    resolve_device(device)  # e.g. cuda on a machine without one: say so, do not fall back
    if out is not None:
        _check_evaluate_out(out)
    spec = normalize_metric_spec(metrics, "--metrics")
    for item in model or []:
        name, sep, value = item.partition("=")
        if not sep or not value:
            raise UserError(f"--model {item!r}: expected METRIC=MODEL")
        key = canonical_metric_name(name)
        if key not in spec:
            raise UserError(f"--model {item!r}: metric {key} is not in --metrics")
        if key not in DEFAULT_MODELS:
            raise UserError(f"--model {item!r}: metric {key} takes no model (models: {', '.join(DEFAULT_MODELS)})")
        spec[key]["model"] = value
    scores = score_folder(images, build_metrics(spec, device=device), references, prompt, token, progress=True)
    summary = scores.summary()
    table = Table(title=f"{images}: {len(scores.files)} images, mean ± 95% CI")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, (mean, ci) in summary.items():
        table.add_row(name, mean_ci_text(mean, ci))
    progress_console().print(table)
    if out is not None:
        from steerguide.files import write_json_atomic

        write_json_atomic(
            out,
            (
                {
                    "images": [
                        {"file": f, "prompt": p, **{m: v[i] for m, v in scores.scores.items()}}
                        for i, (f, p) in enumerate(zip(scores.files, scores.prompts, strict=True))
                    ],
                    "summary": {m: {"mean": mean, "ci95": ci} for m, (mean, ci) in summary.items()},
                }
            ),
        )
    return 0


def _check_evaluate_out(out: Path) -> None:
    """--out: a new file, or an earlier `evaluate` output (replaced); never a folder or another file."""
    import json

    from steerguide.files import check_writable_file

    check_writable_file(out, "--out")
    if out.exists():
        try:
            earlier = json.loads(out.read_text())
            ours = isinstance(earlier, dict) and set(earlier) == {"images", "summary"}
        except (ValueError, UnicodeDecodeError, OSError):
            ours = False
        if not ours:
            raise UserError(f"--out {out} exists and is not an earlier evaluate output; give a new file name")


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)
    app.command("report")(report)
    app.command("evaluate")(evaluate)
