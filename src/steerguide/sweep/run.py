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
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from steerguide.errors import UserError
from steerguide.evaluate.benchmarks import Benchmark, BenchSubject, load_benchmark
from steerguide.evaluate.metrics import Metric, build_metrics
from steerguide.evaluate.results import ResultsStore, remove_stale_temporaries
from steerguide.files import check_writable, save_image_atomic, write_json_atomic
from steerguide.progress import start_bar
from steerguide.run_folder import Refusals, RunFolder
from steerguide.sweep.cache import ensure_personalization, resolve_base
from steerguide.sweep.claims import RowClaims
from steerguide.sweep.config import SweepConfig, check_sample_size
from steerguide.sweep.grid import Row, batches, expand, shard
from steerguide.sweep.sampler import check_inputs, make_sampler

POLL_SECONDS = 0.5  # how often a sweep looks whether rows another sweep holds are done


@dataclass
class SweepStats:
    process_index: int = 0
    num_processes: int = 1
    total: int = 0
    done_before: int = 0
    assigned: int = 0
    written: int = 0
    images: int = 0  # images sampled by this process (rows written, unless another sweep won a race)
    done_elsewhere: int = 0  # rows of this process's share that another sweep into the folder computed
    sample_seconds: float = 0.0
    metric_seconds: float = 0.0
    metric_values: int = 0
    wall_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.sample_seconds if self.sample_seconds else 0.0

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


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep, raised after its cleanup; its message says what was kept and how to go on."""

    def __init__(self, message: str, stats: SweepStats):
        super().__init__(message)
        self.message, self.stats = message, stats

    def __str__(self) -> str:
        return self.message


def check_out(out: str | Path, create: bool = True) -> Path:
    """The output folder, checked before any work: not an existing file, and writable. `create=False` (a
    dry run) checks the same but leaves nothing behind (`check_writable` creates nothing)."""
    out = Path(out)
    # any folder: results.jsonl's row keys tell what is done, so a sweep adds to what is there
    RunFolder(out, None).decide(Refusals(file="output folder {out} is an existing file, not a folder"))
    if create:
        out.mkdir(parents=True, exist_ok=True)
    return out


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
    shipped: bool = True,
    continue_from: Sequence[str | Path] = (),
) -> SweepStats:
    """Run the rows of the grid that `OUT/results.jsonl` does not hold yet (this process's share of them).

    `limit` stops after that many rows (for smoke tests); `train_only` stops once the personalizations are
    trained; `metrics` / `sampler` override the config's; `log` gets one-line notes (waiting for another
    sweep); `shipped=False` trains the personalizations the toy world ships instead of copying them;
    `continue_from` (other sweep folders) lets a personalization continue a shorter training of the same
    recipe found there (exact under a constant learning rate: `seed_from_shorter`). Rows
    another sweep into the same folder is computing are left to it and waited for (see `claims`).
    Ctrl-C raises `SweepInterrupted` once the claims are released and this process's temporary files
    removed. A sweep refused (`UserError`) before it kept anything leaves no folder it created behind.
    """
    created = not Path(out).exists()
    try:
        return _run_sweep(config, out, metrics=metrics, sampler=sampler, progress=progress, limit=limit,
                          train_only=train_only, log=log, shipped=shipped, continue_from=continue_from)
    except UserError:
        if created and int(os.environ.get("WORLD_SIZE", "1")) == 1 and not _kept_anything(Path(out)):
            shutil.rmtree(out, ignore_errors=True)  # e.g. a LoRA that does not fit the base: refused on load
        raise


def _kept_anything(out: Path) -> bool:
    """Whether a sweep folder holds work worth keeping: a result row, an image or a personalization."""
    results = out / "results.jsonl"
    return (results.is_file() and results.stat().st_size > 0) or any(
        (out / name).is_dir() and any((out / name).iterdir()) for name in ("images", "personalizations")
    )


def _run_sweep(config, out, *, metrics, sampler, progress, limit, train_only, log, shipped, continue_from):
    out = check_out(out, create=False)  # before any work; created once the inputs are known good
    t_start = time.perf_counter()
    base = resolve_base(config.base)
    check_sample_size(config, base)
    dist = _Dist()
    if dist.num_processes > 1 and config.device.startswith("cuda"):
        config = replace(config, device=str(dist.state.device))  # one GPU per process
    benchmark = load_benchmark(config.benchmark)
    rows = expand(config, benchmark)
    store = ResultsStore(out / "results.jsonl")
    done = store.done_keys()  # a damaged results file stops here, before anything is loaded or written
    check_inputs(config, benchmark.subjects, base, sampler_given=sampler is not None)
    check_writable(out)
    out.mkdir(parents=True, exist_ok=True)  # check_writable leaves no trace; the inputs are good now
    metrics = build_metrics(config.metrics, device=config.device) if metrics is None else metrics
    sampler = make_sampler(config) if sampler is None else sampler
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
    claims = RowClaims(out / "claims")
    training: list[str] = []  # the subject being trained, for the interrupt message
    bar = None
    try:
        # Personalizations first. Training uses accelerate itself, so it runs in a single process only;
        # under a multi-process launch a missing one is an error that says how to train it.
        for name in dict.fromkeys(r.subject for r in pending):
            training[:] = [name]
            ensure_personalization(
                config,
                subjects[name],
                out,
                progress=progress,
                may_train=dist.num_processes == 1,
                log=log,
                shipped=shipped,
                continue_from=continue_from,
            )
        training.clear()
        dist.barrier()  # everyone has read the same done keys before anyone appends
        if train_only:
            stats.wall_seconds = time.perf_counter() - t_start
            return stats
        mine = shard(pending, dist.num_processes, dist.process_index)
        if limit is not None:
            mine = mine[:limit]
        stats.assigned = len(mine)
        bar = start_bar(progress and dist.process_index == 0, len(mine), f"sweep {out.name}")
        runner = _Runner(config, benchmark, subjects, base, out, metrics, sampler, store, claims, stats, bar)
        held = runner.compute(mine)
        if held and log:
            log(
                f"{len(held)} rows are being computed by another sweep into {out} (pid "
                f"{claims.owner(held[0].key)}); waiting for them"
            )
        while held:  # done by their owner, or taken over here once it died
            runner.describe(f"sweep {out.name}: waiting for {len(held)} rows of another sweep")
            time.sleep(POLL_SECONDS)
            held = runner.compute(held)
        if dist.process_index == 0 and limit is None:
            claims.remove_unused()
    except KeyboardInterrupt:
        claims.release_all()
        remove_stale_temporaries(out, own=True)
        raise SweepInterrupted(_interrupted(config, out, rows, store, stats, training), stats) from None
    finally:
        if bar is not None:
            bar[0].stop()
    stats.wall_seconds = time.perf_counter() - t_start
    return stats


def _interrupted(config, out: Path, rows: list[Row], store: ResultsStore, stats: SweepStats, training):
    if training:
        return (
            f"interrupted while training the personalization of {training[0]}: its checkpoints are kept "
            f"under {out / 'personalizations'}; rerun the same command to continue (training resumes "
            "from the last checkpoint)"
        )
    try:
        kept = len(store.done_keys() & {r.key for r in rows})
    except Exception:  # noqa: BLE001 - the message must not fail; the count is a courtesy
        kept = stats.done_before + stats.written
    return (
        f"interrupted: {stats.written} new rows written by this run; {kept} of {stats.total} rows are kept "
        f"in {out / 'results.jsonl'}; rerun the same command to continue (it skips the rows done)"
    )


class _Runner:
    """Computes rows batch by batch: claims them, samples, scores, saves and appends them."""

    def __init__(self, config, benchmark, subjects, base, out, metrics, sampler, store, claims, stats, bar):
        self.config, self.benchmark, self.subjects, self.base, self.out = (
            config,
            benchmark,
            subjects,
            base,
            out,
        )
        self.metrics, self.sampler, self.store, self.claims = metrics, sampler, store, claims
        self.stats, self.bar = stats, bar
        self.batch_size = int(config.sampling.get("batch_size", 8))

    def describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar[0].update(self.bar[1], description=text)

    def _advance(self, n: int) -> None:
        if self.bar is not None and n:
            self.bar[0].advance(self.bar[1], n)

    def _claim(self, batch: list[Row], held: list[Row]) -> list[Row]:
        """The rows of `batch` this process now holds and that are not done; rows another process holds
        go to `held`; rows done meanwhile (by another sweep) are counted as such."""
        done = self.store.done_keys()
        claimed = []
        for row in batch:
            if row.key in done:
                self.stats.done_elsewhere += 1
                self._advance(1)
            elif self.claims.try_claim(row.key):
                claimed.append(row)
            else:
                held.append(row)
        done = self.store.done_keys()  # finished between our first look and our lock: not ours to redo
        for row in [r for r in claimed if r.key in done]:
            self.claims.release(row.key, done=True)
            self.stats.done_elsewhere += 1
            self._advance(1)
        return [r for r in claimed if r.key not in done]

    def compute(self, rows: list[Row]) -> list[Row]:
        """Compute `rows` except those another process holds, which are returned."""
        held: list[Row] = []
        stats = self.stats
        for subject_name in dict.fromkeys(r.subject for r in rows):
            subject = self.subjects[subject_name]
            session = prepared = None
            for batch in batches([r for r in rows if r.subject == subject_name], self.batch_size):
                batch = self._claim(batch, held)
                if not batch:
                    continue
                if session is None:  # opened only when there is work: waiting costs no model load
                    session = self.sampler.open(
                        self.base,
                        ensure_personalization(self.config, subject, self.out, may_train=False),
                        subject,
                    )
                    t0 = time.perf_counter()
                    references = subject.fidelity_references() if self.metrics else []
                    prepared = [m.prepare(references) for m in self.metrics]
                    stats.metric_seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                images = session.generate(batch[0].setting, [r.prompt for r in batch], batch[0].seed)
                stats.sample_seconds += time.perf_counter() - t0
                stats.images += len(images)
                t0 = time.perf_counter()
                scores: dict[str, list[float]] = {}
                for metric, prep in zip(self.metrics, prepared, strict=True):
                    prompts = [
                        r.prompt if metric.raw_prompts else subject.text_prompt(r.prompt) for r in batch
                    ]
                    scores[metric.name] = metric.score(images, prompts, prep)
                    stats.metric_values += len(batch)
                stats.metric_seconds += time.perf_counter() - t0
                records = []
                for j, (row, image) in enumerate(zip(batch, images, strict=True)):
                    rel = Path("images") / subject.name / f"{row.key}.png"
                    save_image_atomic(image, self.out / rel)
                    records.append(
                        _record(
                            self.config,
                            self.benchmark,
                            subject,
                            row,
                            rel,
                            {k: v[j] for k, v in scores.items()},
                            stats.process_index,
                        )
                    )
                stats.written += self.store.append(records)
                for row in batch:
                    self.claims.release(row.key, done=True)
                self._advance(len(batch))
            if session is not None and hasattr(session, "close"):
                session.close()
        return held


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
