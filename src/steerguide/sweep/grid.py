"""The grid: every image a sweep makes, as `Row`s in a stable order, each keyed by what defines it; and how
rows are shared among processes and grouped into sampler calls."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from steerguide.errors import UserError
from steerguide.evaluate.benchmarks import Benchmark
from steerguide.guidance import Setting
from steerguide.sweep.cache import base_identity, personalization_id, stable_hash
from steerguide.sweep.config import SweepConfig

MAX_ROWS = 10_000_000  # images in one sweep; its rows' keys alone take gigabytes beyond


@dataclass(frozen=True)
class Row:
    """One image of the grid; `key` hashes every setting that defines it."""

    key: str
    subject: str
    prompt: str
    prompt_index: int
    seed: int
    setting: Setting
    personalization: str  # an id of the personalization (cache key or path), part of the key


def expand(config: SweepConfig, benchmark: Benchmark) -> list[Row]:
    """The grid in its stable order: subject, setting, seed, prompt (the innermost loop batches)."""
    sampling = {
        k: config.sampling.get(k) for k in ("steps", "height", "width", "negative_prompt", "scheduler")
    }
    total = len(config.settings) * len(config.seeds) * sum(len(s.prompts) for s in benchmark.subjects)
    if total > MAX_ROWS:  # before the rows are made: a list of billions of them ends in MemoryError
        raise UserError(
            f"the sweep has {describe_grid(config, benchmark)}, more than {MAX_ROWS}: "
            "give fewer settings, seeds, prompts or subjects"
        )
    rows = []
    base = base_identity(config.base)
    for subject in benchmark.subjects:
        pid = personalization_id(config, subject)
        for setting in config.settings:
            for seed in config.seeds:
                for i, prompt in enumerate(subject.prompts):
                    identity = {
                        "base": base,
                        "benchmark": benchmark.name,
                        "subject": subject.name,
                        "personalization": pid,
                        "prompt": prompt,
                        "seed": seed,
                        "setting": asdict(setting),
                        "sampling": sampling,
                        "dtype": config.dtype,
                    }
                    if subject.definition is not None:  # a generated subject: edit it, its rows go stale
                        identity["subject_definition"] = subject.definition
                    key = stable_hash(identity)
                    rows.append(Row(key, subject.name, prompt, i, seed, setting, pid))
    return rows


def shard(rows: list, num_processes: int, process_index: int) -> list:
    """Rows `i % num_processes == process_index`: every row to exactly one process, balanced."""
    return rows[process_index::num_processes]


def batches(rows: list[Row], size: int):
    """Consecutive rows that share subject, setting and seed, at most `size` at a time (one sampler call)."""
    batch: list[Row] = []
    for row in rows:
        if batch and (len(batch) == size or (row.setting, row.seed) != (batch[0].setting, batch[0].seed)):
            yield batch
            batch = []
        batch.append(row)
    if batch:
        yield batch


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def describe_grid(config: SweepConfig, benchmark: Benchmark) -> str:
    """The grid's size and its factors: "72 rows (6 settings × 2 seeds × 3 prompts × 2 subjects)"; when
    subjects have different numbers of prompts, their range and sum."""
    per_subject = [len(s.prompts) for s in benchmark.subjects]
    total = len(config.settings) * len(config.seeds) * sum(per_subject)
    head = f"{_count(total, 'row')} ({_count(len(config.settings), 'setting')} × {_count(len(config.seeds), 'seed')}"
    if len(set(per_subject)) <= 1:
        prompts = per_subject[0] if per_subject else 0
        return f"{head} × {_count(prompts, 'prompt')} × {_count(len(per_subject), 'subject')})"
    return (
        f"{head} × {sum(per_subject)} prompts over {_count(len(per_subject), 'subject')}, "
        f"{min(per_subject)}-{max(per_subject)} each)"
    )
