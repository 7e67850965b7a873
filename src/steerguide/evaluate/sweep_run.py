"""Running a sweep: the rows `OUT/results.jsonl` does not hold yet, this process's share of them, sampled
batch by batch, scored, and appended (see `results.py` for the crash and concurrency guarantees).

Under `accelerate launch` each process reads the done keys, waits for the others (so all see the same
file), then takes rows `i % num_processes == process_index` of the pending rows in grid order; all append
to the one results file under its lock. One file rather than per-rank files: nothing to merge, so there
is no merge step for a crash to interrupt, and the lock-and-dedupe on append makes duplicates impossible
even if two launches overlap.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from steerguide.evaluate.benchmarks import Benchmark, BenchSubject, load_benchmark
from steerguide.evaluate.metrics import Metric, build_metrics
from steerguide.evaluate.results import ResultsStore, remove_stale_temporaries
from steerguide.evaluate.sweep_cache import ensure_personalization, resolve_base
from steerguide.evaluate.sweep_config import SweepConfig
from steerguide.evaluate.sweep_grid import Row, batches, expand, shard
from steerguide.evaluate.sweep_sampler import make_sampler
from steerguide.files import save_image_atomic, write_json_atomic


@dataclass
class SweepStats:
    process_index: int = 0
    num_processes: int = 1
    total: int = 0
    done_before: int = 0
    assigned: int = 0
    written: int = 0
    sample_seconds: float = 0.0
    metric_seconds: float = 0.0
    metric_values: int = 0
    wall_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.written / self.sample_seconds if self.sample_seconds else 0.0

    @property
    def metrics_per_second(self) -> float:
        return self.metric_values / self.metric_seconds if self.metric_seconds else 0.0


class _Dist:
    """accelerate's view of the launch: (num_processes, process_index) and a barrier."""

    def __init__(self):
        self.state = None
        sizes = (os.environ.get(k, "1") for k in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"))
        if max(int(v) for v in sizes) > 1:
            import torch
            from accelerate import PartialState

            # Without CUDA, accelerate only forms a (gloo) process group when told it runs on CPU.
            self.state = PartialState(cpu=not torch.cuda.is_available())
        self.num_processes = self.state.num_processes if self.state else 1
        self.process_index = self.state.process_index if self.state else 0

    def barrier(self) -> None:
        if self.state is not None and self.num_processes > 1:
            self.state.wait_for_everyone()


def run_sweep(
    config: SweepConfig,
    out: str | Path,
    *,
    metrics: list[Metric] | None = None,
    sampler: Any = None,
    progress: bool = False,
    limit: int | None = None,
    train_only: bool = False,
    log: Callable[[str], None] | None = None,
) -> SweepStats:
    """Run the rows of the grid that `OUT/results.jsonl` does not hold yet (this process's share of them).

    `limit` stops after that many rows (for smoke tests); `train_only` stops once the personalizations are
    trained; `metrics` / `sampler` override the config's.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    dist = _Dist()
    if dist.num_processes > 1 and config.device.startswith("cuda"):
        config = replace(config, device=str(dist.state.device))  # one GPU per process
    benchmark = load_benchmark(config.benchmark)
    metrics = build_metrics(config.metrics, device=config.device) if metrics is None else metrics
    sampler = make_sampler(config) if sampler is None else sampler
    base = resolve_base(config.base)
    rows = expand(config, benchmark)
    store = ResultsStore(out / "results.jsonl")
    done = store.done_keys()
    pending = [r for r in rows if r.key not in done]
    stats = SweepStats(
        dist.process_index, dist.num_processes, total=len(rows), done_before=len(rows) - len(pending)
    )
    if dist.process_index == 0:
        remove_stale_temporaries(out)
        write_json_atomic(
            out / "sweep.json", {**config.to_json(), "metric_axes": {m.name: m.axis for m in metrics}}
        )
    dist.barrier()  # no rank starts writing temporaries before the cleanup is over
    subjects = {s.name: s for s in benchmark.subjects}

    # Personalizations first. Training uses accelerate itself, so it runs in a single process only; under a
    # multi-process launch a missing one is an error that says how to train it.
    for name in dict.fromkeys(r.subject for r in pending):
        ensure_personalization(
            config, subjects[name], out, progress=progress, may_train=dist.num_processes == 1
        )
    dist.barrier()  # everyone has read the same done keys before anyone appends
    if train_only:
        stats.wall_seconds = time.perf_counter() - t_start
        return stats
    mine = shard(pending, dist.num_processes, dist.process_index)
    if limit is not None:
        mine = mine[:limit]
    stats.assigned = len(mine)
    batch_size = int(config.sampling.get("batch_size", 8))

    bar = _progress(progress and dist.process_index == 0, len(mine), f"sweep {out.name}")
    try:
        for subject_name in dict.fromkeys(r.subject for r in mine):
            subject = subjects[subject_name]
            subject_rows = [r for r in mine if r.subject == subject_name]
            session = sampler.open(
                base, ensure_personalization(config, subject, out, may_train=False), subject
            )
            t0 = time.perf_counter()
            references = subject.fidelity_references() if metrics else []
            prepared = [m.prepare(references) for m in metrics]
            stats.metric_seconds += time.perf_counter() - t0
            for batch in batches(subject_rows, batch_size):
                t0 = time.perf_counter()
                images = session.generate(batch[0].setting, [r.prompt for r in batch], batch[0].seed)
                stats.sample_seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                scores: dict[str, list[float]] = {}
                for metric, prep in zip(metrics, prepared, strict=True):
                    prompts = [
                        r.prompt if metric.raw_prompts else subject.text_prompt(r.prompt) for r in batch
                    ]
                    scores[metric.name] = metric.score(images, prompts, prep)
                    stats.metric_values += len(batch)
                stats.metric_seconds += time.perf_counter() - t0
                records = []
                for j, (row, image) in enumerate(zip(batch, images, strict=True)):
                    rel = Path("images") / subject.name / f"{row.key}.png"
                    save_image_atomic(image, out / rel)
                    records.append(
                        _record(
                            config,
                            benchmark,
                            subject,
                            row,
                            rel,
                            {k: v[j] for k, v in scores.items()},
                            dist.process_index,
                        )
                    )
                stats.written += store.append(records)
                if bar is not None:
                    bar[0].advance(bar[1], len(batch))
            if hasattr(session, "close"):
                session.close()
    finally:
        if bar is not None:
            bar[0].stop()
    stats.wall_seconds = time.perf_counter() - t_start
    if log:
        log(
            f"process {dist.process_index}/{dist.num_processes}: {stats.written} rows written, "
            f"{stats.done_before} of {stats.total} were done before"
        )
    return stats


def _record(
    config: SweepConfig,
    benchmark: Benchmark,
    subject: BenchSubject,
    row: Row,
    image: Path,
    metrics: dict[str, float],
    process_index: int,
) -> dict:
    s = row.setting
    return {
        "key": row.key,
        "benchmark": benchmark.name,
        "base": config.base,
        "subject": subject.name,
        "class_noun": subject.class_noun,
        "personalization": row.personalization,
        "prompt": row.prompt,
        "prompt_index": row.prompt_index,
        "seed": row.seed,
        "method": s.method,
        "scale": s.scale,
        "omega": s.omega,
        "omega_schedule": s.omega_schedule,
        "interval": list(s.interval),
        "label": s.label,
        "steps": config.sampling.get("steps"),
        "image": str(image),
        "metrics": metrics,
        "time": time.time(),
        "process": process_index,
    }


def _progress(enabled: bool, total: int, description: str):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    task = bar.add_task(description, total=total)
    bar.start()
    return bar, task
