"""Sweeps: a grid over guidance settings × subjects × prompts × seeds, one result row per image.

    base: toy                                  # a diffusers folder or model id; "toy": the toy world's model
    benchmark: {name: dreambench, root: data/dreambench, subjects: [dog, teapot], num_prompts: 5}
    personalization: {train: {method: lora, steps: 400}}   # or {paths: {dog: loras/dog, "*": loras/any}}
    guidance:
      cfg: {scale: [3, 5, 7.5]}
      pg:  {scale: [3, 5, 7.5], omega: [0.0, 0.5], omega_schedule: [constant, "linear:1"]}
      ag:  {scale: [2, 3], omega: [0.0]}
    seeds: [0, 1]                              # or a count: 2 -> [0, 1]
    sampling: {steps: 25, batch_size: 8}
    metrics: [dino, clip_i, clip_t]            # or {dino: {model: /models/dino-vits16}, ...}

Every row's `key` hashes every setting that defines its image, so a rerun skips what is done and a
changed setting makes new rows. Rows go to `OUT/results.jsonl` (see `results.py` for the crash and
concurrency guarantees), images to `OUT/images/<key>.png`.

Under `accelerate launch` each process reads the done keys, waits for the others (so all see the same
file), then takes rows `i % num_processes == process_index` of the pending rows in grid order; all append
to the one results file under its lock. One file rather than per-rank files: nothing to merge, so there
is no merge step for a crash to interrupt, and the lock-and-dedupe on append makes duplicates impossible
even if two launches overlap.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from itertools import product
from pathlib import Path
from typing import Any

from steerguide.errors import UserError
from steerguide.evaluate.benchmarks import Benchmark, BenchSubject, load_benchmark
from steerguide.evaluate.metrics import Metric, build_metrics, normalize_metric_spec
from steerguide.evaluate.results import ResultsStore, remove_stale_temporaries
from steerguide.files import save_image_atomic, write_json_atomic

TOP_KEYS = {
    "base",
    "benchmark",
    "personalization",
    "guidance",
    "seeds",
    "sampling",
    "metrics",
    "device",
    "dtype",
    "sampler",
}
BENCHMARK_KEYS = {"name", "root", "subjects", "token", "num_prompts"}
SAMPLING_KEYS = {"steps", "height", "width", "negative_prompt", "batch_size", "scheduler"}
PERSONALIZATION_KEYS = {"train", "paths"}
METHOD_AXES = {
    "cfg": {"scale", "interval"},
    "ag": {"scale", "omega", "interval"},
    "pg": {"scale", "omega", "omega_schedule", "interval"},
}


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Setting:
    """One guidance setting of the grid (CFG has no ω)."""

    method: str
    scale: float
    omega: float | None = None
    omega_schedule: str | None = None
    interval: tuple[float, float] = (0.0, 1.0)

    @property
    def label(self) -> str:
        parts = [self.method, f"w={self.scale:g}"]
        if self.omega is not None:
            parts.append(f"ω={self.omega:g}")
        if self.omega_schedule not in (None, "constant"):
            parts.append(str(self.omega_schedule))
        if tuple(self.interval) != (0.0, 1.0):
            parts.append(f"[{self.interval[0]:g},{self.interval[1]:g}]")
        return " ".join(parts)

    def guidance_config(self):
        from steerguide.guidance import GuidanceConfig

        kwargs: dict[str, Any] = {
            "method": self.method,
            "scale": self.scale,
            "interval": tuple(self.interval),
        }
        if self.omega is not None:
            kwargs["omega"] = self.omega
        if self.omega_schedule is not None:
            kwargs["omega_schedule"] = self.omega_schedule
        return GuidanceConfig(**kwargs)


@dataclass
class SweepConfig:
    base: str
    benchmark: dict
    settings: list[Setting]
    seeds: list[int]
    metrics: dict[str, dict]
    personalization: dict = field(default_factory=dict)
    sampling: dict = field(default_factory=dict)
    device: str = "cpu"
    dtype: str = "float32"
    sampler: str | None = None
    source: str = ""

    def to_json(self) -> dict:
        d = asdict(self)
        d["settings"] = [asdict(s) for s in self.settings]
        return d


def _unknown(where: str, mapping: dict, allowed: set[str]) -> None:
    extra = sorted(str(k) for k in set(mapping) - allowed)
    if extra:
        prefix = f"{where}." if where else ""
        raise UserError(
            f"config key {prefix}{extra[0]}: unknown key (expected one of {', '.join(sorted(allowed))})"
        )


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _numbers(where: str, value: Any) -> list[float]:
    items = _as_list(value)
    if not items or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in items):
        raise UserError(f"config key {where}: expected a number or a list of numbers, got {value!r}")
    return [float(v) for v in items]


def _interval(where: str, value: Any) -> tuple[float, float]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)
    ):
        raise UserError(f"config key {where}: expected [start, stop], got {value!r}")
    return (float(value[0]), float(value[1]))


def yaml_error() -> type[Exception]:
    import yaml

    return yaml.YAMLError


def read_config_file(path: str | Path) -> dict:
    """Parse a YAML (.yaml/.yml) or TOML (.toml) file into a mapping."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep config {str(path)!r} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml", ".json"):
            import yaml

            data = yaml.safe_load(text)
        else:
            raise UserError(f"sweep config {str(path)!r}: expected a .yaml, .yml or .toml file")
    except UserError:
        raise
    except (ValueError, yaml_error()) as e:  # TOMLDecodeError is a ValueError; say where, in one line
        first = " ".join(str(e).split())
        raise UserError(
            f"sweep config {str(path)!r} is not valid {path.suffix[1:].upper()}: {first}"
        ) from None
    if not isinstance(data, dict):
        raise UserError(f"sweep config {str(path)!r}: expected a mapping at the top level")
    return data


def parse_config(data: dict, source: str = "") -> SweepConfig:
    """Validate a config mapping; every error names the offending key."""
    _unknown("", data, TOP_KEYS)
    for key in ("base", "benchmark", "guidance", "metrics"):
        if key not in data:
            raise UserError(f"config key {key}: missing (required)")
    if not isinstance(data["base"], str) or not data["base"]:
        raise UserError("config key base: expected a model folder, model id or 'toy'")

    bench = data["benchmark"]
    if isinstance(bench, str):
        bench = {"name": bench}
    if not isinstance(bench, dict):
        raise UserError("config key benchmark: expected a mapping with name (dreambench | toy) and options")
    _unknown("benchmark", bench, BENCHMARK_KEYS)
    if "name" not in bench:
        raise UserError("config key benchmark.name: missing (dreambench or toy)")
    if bench.get("subjects") is not None and (
        not isinstance(bench["subjects"], list) or not all(isinstance(s, str) for s in bench["subjects"])
    ):
        raise UserError("config key benchmark.subjects: expected a list of subject names")
    if "num_prompts" in bench and (not isinstance(bench["num_prompts"], int) or bench["num_prompts"] < 1):
        raise UserError(
            f"config key benchmark.num_prompts: expected an integer >= 1, got {bench['num_prompts']!r}"
        )

    guidance = data["guidance"]
    if not isinstance(guidance, dict) or not guidance:
        raise UserError("config key guidance: expected a mapping method -> axes (cfg, ag, pg)")
    settings: list[Setting] = []
    for method, axes in guidance.items():
        where = f"guidance.{method}"
        if method not in METHOD_AXES:
            raise UserError(f"config key {where}: unknown method (expected one of cfg, ag, pg)")
        axes = axes or {}
        if not isinstance(axes, dict):
            raise UserError(
                f"config key {where}: expected a mapping of axes ({', '.join(sorted(METHOD_AXES[method]))})"
            )
        _unknown(where, axes, METHOD_AXES[method])
        if "scale" not in axes:
            raise UserError(f"config key {where}.scale: missing (a number or a list of numbers)")
        scales = _numbers(f"{where}.scale", axes["scale"])
        omegas: list[float | None] = [None]
        schedules: list[str | None] = [None]
        if method != "cfg":
            omegas = _numbers(f"{where}.omega", axes["omega"]) if "omega" in axes else [None]
        if method == "pg" and "omega_schedule" in axes:
            schedules = _as_list(axes["omega_schedule"])
            if not schedules or not all(isinstance(s, str) and s for s in schedules):
                raise UserError(
                    f"config key {where}.omega_schedule: expected a schedule name or a list of them"
                )
        intervals = [(0.0, 1.0)]
        if "interval" in axes:
            raw = axes["interval"]
            nested = isinstance(raw, (list, tuple)) and raw and isinstance(raw[0], (list, tuple))
            intervals = [_interval(f"{where}.interval", v) for v in (raw if nested else [raw])]
        for scale, omega, schedule, interval in product(scales, omegas, schedules, intervals):
            setting = Setting(method, scale, omega, schedule, interval)
            try:  # let the guidance code judge each value (ω range, schedule spelling, interval)
                setting.guidance_config()
            except UserError as e:
                raise UserError(f"config key {where}: {e}") from None
            except ImportError:
                pass
            if setting not in settings:  # a value listed twice is one setting, not two rows per image
                settings.append(setting)

    seeds = data.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise UserError(f"config key seeds: expected a count >= 1 or a list of seeds, got {seeds}")
        seeds = list(range(seeds))
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise UserError(f"config key seeds: expected a count or a list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise UserError("config key seeds: a seed is listed twice")

    sampling = data.get("sampling") or {}
    if not isinstance(sampling, dict):
        raise UserError("config key sampling: expected a mapping")
    _unknown("sampling", sampling, SAMPLING_KEYS)
    for key in ("steps", "height", "width", "batch_size"):
        v = sampling.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise UserError(f"config key sampling.{key}: expected an integer >= 1, got {v!r}")

    personalization = data.get("personalization") or {}
    if not isinstance(personalization, dict):
        raise UserError("config key personalization: expected a mapping with train or paths")
    _unknown("personalization", personalization, PERSONALIZATION_KEYS)
    if "train" in personalization and "paths" in personalization:
        raise UserError("config key personalization: give either train or paths, not both")
    if "paths" in personalization and not isinstance(personalization["paths"], (dict, str)):
        raise UserError("config key personalization.paths: expected a path or a mapping subject -> path")
    if "train" in personalization and not isinstance(personalization["train"] or {}, dict):
        raise UserError("config key personalization.train: expected a mapping of training settings")

    metrics = normalize_metric_spec(data["metrics"], "config key metrics")
    sampler = data.get("sampler")
    if sampler is not None and (not isinstance(sampler, str) or ":" not in sampler):
        raise UserError(f"config key sampler: expected 'module:callable', got {sampler!r}")
    for key in ("device", "dtype"):
        if key in data and not isinstance(data[key], str):
            raise UserError(f"config key {key}: expected a string")
    return SweepConfig(
        base=data["base"],
        benchmark=bench,
        settings=settings,
        seeds=seeds,
        metrics=metrics,
        personalization=personalization,
        sampling=sampling,
        device=data.get("device", "cpu"),
        dtype=data.get("dtype", "float32"),
        sampler=sampler,
        source=source,
    )


def load_config(path: str | Path) -> SweepConfig:
    return parse_config(read_config_file(path), source=str(path))


# ----------------------------------------------------------------------------- grid


def stable_hash(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


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


def resolve_base(base: str) -> str:
    if base == "toy":
        try:
            from steerguide.toyworld import base_model_path
        except ImportError as e:
            raise UserError(f"base 'toy': the toy world is not available in this install ({e})") from None
        return str(base_model_path())
    return base


def base_identity(base: str) -> dict:
    """The base as the cache keys see it: its name, and for a local folder or file a fingerprint of its
    weights, so that retraining a base in place (the toy world's included) makes old rows and cached
    personalizations stale instead of silently reusing them."""
    path = Path(resolve_base(base))
    if not path.exists():
        return {"name": base}  # a hub id: its revision is the hub's business
    files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
    digest = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        digest.update(f"{f.relative_to(path) if path.is_dir() else f.name}:{size}".encode())
        with f.open("rb") as fh:  # head and tail: a weight file's header and its last tensors
            digest.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                digest.update(fh.read())
    return {"name": base, "fingerprint": digest.hexdigest()[:16]}


def personalization_id(config: SweepConfig, subject: BenchSubject) -> str:
    p = config.personalization
    if "train" in p:
        return "train:" + train_cache_key(config, subject)
    path = personalization_path(config, subject)
    return f"path:{path}" if path else "none"


def personalization_path(config: SweepConfig, subject: BenchSubject) -> str | None:
    paths = config.personalization.get("paths")
    if paths is None:
        return None
    if isinstance(paths, str):
        return paths
    path = paths.get(subject.name, paths.get("*"))
    if path is None:
        raise UserError(
            f"config key personalization.paths: no path for subject {subject.name!r} (add it or '*')"
        )
    return str(path)


def train_cache_key(config: SweepConfig, subject: BenchSubject) -> str:
    refs = [str(p) for p in subject.references] or [f"{subject.name}:generated"]
    return stable_hash(
        {
            "base": base_identity(config.base),
            "subject": subject.name,
            "token": subject.token,
            "class_noun": subject.class_noun,
            "references": refs,
            "train": config.personalization.get("train") or {},
            # What the trainer writes and the defaults the toy world fills in: a change to either makes
            # old cached personalizations stale.
            "trainer": _trainer_identity(config),
        }
    )


def _trainer_identity(config: SweepConfig) -> dict:
    from steerguide import __version__

    identity = {"steerguide": __version__, "lora_layout": "peft"}
    if config.benchmark.get("name") == "toy":
        from steerguide.train.toy import TOY_COMMON, TOY_DEFAULTS

        identity["toy"] = {"defaults": TOY_DEFAULTS, "common": TOY_COMMON}
    return identity


def expand(config: SweepConfig, benchmark: Benchmark) -> list[Row]:
    """The grid in its stable order: subject, setting, seed, prompt (the innermost loop batches)."""
    sampling = {
        k: config.sampling.get(k) for k in ("steps", "height", "width", "negative_prompt", "scheduler")
    }
    rows = []
    base = base_identity(config.base)
    for subject in benchmark.subjects:
        pid = personalization_id(config, subject)
        for setting in config.settings:
            for seed in config.seeds:
                for i, prompt in enumerate(subject.prompts):
                    key = stable_hash(
                        {
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
                    )
                    rows.append(Row(key, subject.name, prompt, i, seed, setting, pid))
    return rows


def shard(rows: list, num_processes: int, process_index: int) -> list:
    """Rows `i % num_processes == process_index`: every row to exactly one process, balanced."""
    return rows[process_index::num_processes]


# ----------------------------------------------------------------------------- samplers


class DiffusersSampler:
    """Samples with steerguide's pipeline loading and guided `sample` (one pipeline per subject)."""

    def __init__(self, config: SweepConfig):
        self.config = config

    def open(
        self, base: str, personalization: str | None, subject: BenchSubject
    ) -> DiffusersSampler._Session:
        from steerguide.loading import load_personalization, load_pipeline

        pipe = load_pipeline(
            base,
            device=self.config.device,
            dtype=self.config.dtype,
            scheduler=self.config.sampling.get("scheduler"),
        )
        return DiffusersSampler._Session(self.config, pipe, load_personalization(pipe, personalization))

    class _Session:
        def __init__(self, config: SweepConfig, pipe, personal):
            self.config, self.pipe, self.personal = config, pipe, personal

        def generate(self, setting: Setting, prompts: list[str], seed: int) -> list:
            from steerguide.sampling import sample

            s = self.config.sampling
            kwargs = {
                k: s[k] for k in ("steps", "height", "width", "negative_prompt") if s.get(k) is not None
            }
            result = sample(
                self.pipe,
                self.personal,
                setting.guidance_config(),
                prompts,
                num_images=1,
                seed=seed,
                batch_size=len(prompts),
                progress=False,
                **kwargs,
            )
            return [images[0] for images in result.images]  # images[p][i]: image i of prompt p

        def close(self) -> None:
            self.pipe = self.personal = None


def make_sampler(config: SweepConfig):
    if config.sampler is None:
        return DiffusersSampler(config)
    module_name, _, attr = config.sampler.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise UserError(f"config key sampler: cannot import {config.sampler!r} ({e})") from None
    return factory(config)


# ----------------------------------------------------------------------------- personalizations


def ensure_personalization(
    config: SweepConfig, subject: BenchSubject, out: Path, progress: bool = False, may_train: bool = True
) -> str | None:
    """The personalization folder for `subject`: a given path, or one trained once and cached under
    OUT/personalizations/<subject>-<key>/ (reused when its train.json exists and its cache key matches).

    Training runs in `<folder>.partial` with resume on, so a killed sweep continues the training from its
    last checkpoint; the finished folder is renamed into place."""
    if "train" not in config.personalization:
        return personalization_path(config, subject)
    key = train_cache_key(config, subject)
    folder = out / "personalizations" / f"{subject.name}-{key[:12]}"
    marker = folder / "steerguide-cache.json"
    if (folder / "train.json").is_file() and marker.is_file():
        try:
            if json.loads(marker.read_text()).get("key") == key:
                return str(folder)
        except json.JSONDecodeError:
            pass
    if not may_train:
        raise UserError(
            f"subject {subject.name!r} needs a personalization trained first: under several "
            "processes, run `steerguide sweep CONFIG --out DIR --train-only` once in a single process"
        )
    from steerguide.train import TrainConfig, train

    partial = folder.with_name(folder.name + ".partial")
    settings = {"method": "lora", "resume": True, **(config.personalization.get("train") or {})}
    try:
        if config.benchmark.get("name") == "toy":  # the toy world's tuned defaults and instance prompts
            from steerguide.train.toy import toy_config

            method = settings.pop("method")
            train_config = toy_config(
                subject.name, method, base=resolve_base(config.base), out=partial, **settings
            )
        else:
            train_config = TrainConfig(
                base=resolve_base(config.base),
                images=subject.reference_images(),
                token=subject.token,
                class_noun=subject.class_noun,
                out=partial,
                **settings,
            )
    except TypeError as e:
        raise UserError(f"config key personalization.train: {e}") from None
    trained = Path(train(train_config, progress=progress))
    write_json_atomic(trained / "steerguide-cache.json", {"key": key, "subject": subject.name})
    if folder.exists():  # a stale or mismatching cache entry: replace it whole
        import shutil

        shutil.rmtree(folder)
    os.replace(trained, folder)
    return str(folder)


# ----------------------------------------------------------------------------- running


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
            for batch in _batches(subject_rows, batch_size):
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


def _batches(rows: list[Row], size: int):
    """Consecutive rows that share subject, setting and seed, at most `size` at a time (one sampler call)."""
    batch: list[Row] = []
    for row in rows:
        if batch and (len(batch) == size or (row.setting, row.seed) != (batch[0].setting, batch[0].seed)):
            yield batch
            batch = []
        batch.append(row)
    if batch:
        yield batch


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
