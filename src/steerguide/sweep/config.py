"""Sweep configs: a YAML/TOML mapping validated into a `SweepConfig` whose every error names its key.

    base: toy                                  # a diffusers folder or model id; "toy": the toy world's model
    benchmark: {name: dreambench, root: data/dreambench, subjects: [dog, teapot], num_prompts: 5}
    # or {name: toy, subjects_file: my-subjects.yaml, subjects: [sks_star]}: toy subjects (default: built-in)
    personalization: {train: {method: lora, steps: 400}}   # or {paths: {dog: loras/dog, "*": loras/any}}
    # train.steps_factor: 0.5 trains half the recipe's steps (its `steps`, else the method's default)
    guidance:
      cfg: {scale: [3, 5, 7.5]}
      pg:  {scale: [3, 5, 7.5], omega: [0.0, 0.5], omega_schedule: [constant, "linear:1"]}
      ag:  {scale: [2, 3], omega: [0.0]}
      # a method may list several grids (their union): pg: [{scale: [3, 5], omega: [0.5]}, {scale: 5, ...}]
    seeds: [0, 1]                              # or a count: 2 -> [0, 1]
    sampling: {steps: 25, batch_size: 8}
    metrics: [dino, clip_i, clip_t]            # or {dino: {model: /models/dino-vits16}, ...}

Each guidance method's axes multiply into `Setting`s (one per image column of the grid).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from steerguide import limits, methods
from steerguide.errors import UserError
from steerguide.evaluate.metrics import normalize_metric_spec
from steerguide.guidance import Setting

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
BENCHMARK_KEYS = {"name", "root", "subjects", "token", "num_prompts", "subjects_file"}
SAMPLING_KEYS = {"steps", "height", "width", "negative_prompt", "batch_size", "scheduler"}
PERSONALIZATION_KEYS = {"train", "paths"}
MAX_SIDE = 4096  # pixels: no base of the Stable Diffusion family samples larger
MAX_UPSCALE = 4  # height/width at most this many times the base's own sample size (attention memory)


# ----------------------------------------------------------------------------- config


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
    if value[0] == value[1]:  # start > stop: the guidance code's message
        limits.guidance_interval(f"config key {where}", float(value[0]), float(value[1]))
    return (float(value[0]), float(value[1]))


def yaml_error() -> type[Exception]:
    import yaml

    return yaml.YAMLError


def _method_settings(method: str, where: str, axes: Any) -> list[Setting]:
    """The settings of one grid of a method's axes (their product), each checked by the guidance code."""
    spec = methods.get(method)
    axes = axes or {}
    if not isinstance(axes, dict):
        raise UserError(f"config key {where}: expected a mapping of axes ({', '.join(sorted(spec.axes))})")
    _unknown(where, axes, spec.axes)
    if "scale" not in axes:
        raise UserError(f"config key {where}.scale: missing (a number or a list of numbers)")
    scales = _numbers(f"{where}.scale", axes["scale"])
    omegas: list[float | None] = [None]
    schedules: list[str | None] = [None]
    if spec.takes_omega:
        omegas = _numbers(f"{where}.omega", axes["omega"]) if "omega" in axes else [None]
    if "omega_schedule" in spec.axes and "omega_schedule" in axes:
        schedules = _as_list(axes["omega_schedule"])
        if not schedules or not all(isinstance(s, str) and s for s in schedules):
            raise UserError(f"config key {where}.omega_schedule: expected a schedule name or a list of them")
    intervals = [(0.0, 1.0)]
    if "interval" in axes:
        raw = axes["interval"]
        nested = isinstance(raw, (list, tuple)) and raw and isinstance(raw[0], (list, tuple))
        intervals = [_interval(f"{where}.interval", v) for v in (raw if nested else [raw])]
    settings = []
    for scale, omega, schedule, interval in product(scales, omegas, schedules, intervals):
        setting = Setting(method, scale, omega, schedule, interval)
        try:  # let the guidance code judge each value (ω range, schedule spelling, interval)
            setting.guidance_config()
        except UserError as e:
            raise UserError(f"config key {where}: {e}") from None
        settings.append(setting)
    return settings


def read_config_file(path: str | Path) -> dict:
    """Parse a YAML (.yaml/.yml) or TOML (.toml) file into a mapping."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep config {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"sweep config {str(path)!r} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise UserError(f"cannot read sweep config {str(path)!r}: {e.strerror or e}") from None
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml", ".json"):
            from steerguide.yaml_files import safe_load

            data = safe_load(text)
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
    if bench.get("subjects") == []:
        raise UserError("config key benchmark.subjects: an empty list makes no rows (leave it out for every subject)")
    if "subjects_file" in bench:
        if bench["name"] != "toy":
            raise UserError(
                "config key benchmark.subjects_file: only the toy benchmark reads a subjects file"
            )
        if not isinstance(bench["subjects_file"], str) or not bench["subjects_file"]:
            raise UserError(
                f"config key benchmark.subjects_file: expected a path to a subjects file (YAML), "
                f"got {bench['subjects_file']!r}"
            )
    if "num_prompts" in bench and (not isinstance(bench["num_prompts"], int) or bench["num_prompts"] < 1):
        raise UserError(
            f"config key benchmark.num_prompts: expected an integer >= 1, got {bench['num_prompts']!r}"
        )

    guidance = data["guidance"]
    if not isinstance(guidance, dict) or not guidance:
        raise UserError(f"config key guidance: expected a mapping method -> axes ({', '.join(methods.names())})")
    settings: list[Setting] = []
    for method, axes in guidance.items():
        where = f"guidance.{method}"
        if methods.find(method) is None:
            raise UserError(f"config key {where}: unknown method (expected one of {', '.join(methods.names())})")
        # A list of grids is their union: "PG at four ω constant, plus one schedule at ω = 0".
        blocks = (
            [(f"{where}[{i}]", b) for i, b in enumerate(axes)] if isinstance(axes, list) else [(where, axes)]
        )
        if not blocks:
            raise UserError(f"config key {where}: expected a mapping of axes or a list of them, got []")
        for block_where, block in blocks:
            for setting in _method_settings(method, block_where, block):
                if setting not in settings:  # a value listed twice is one setting, not two rows per image
                    settings.append(setting)

    seeds = data.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = limits.seed_count("config key seeds", seeds)
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise UserError(f"config key seeds: expected a count or a list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise UserError("config key seeds: a seed is listed twice")
    for seed in seeds:
        limits.seed("config key seeds: each seed", seed)

    sampling = data.get("sampling") or {}
    if not isinstance(sampling, dict):
        raise UserError("config key sampling: expected a mapping")
    _unknown("sampling", sampling, SAMPLING_KEYS)
    for key in ("steps", "height", "width", "batch_size"):
        v = sampling.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise UserError(f"config key sampling.{key}: expected an integer >= 1, got {v!r}")
    if sampling.get("steps") is not None:
        limits.sampling_steps("config key sampling.steps", sampling["steps"])
    for key in ("height", "width"):
        v = sampling.get(key)
        if v is not None and (v % 8 or v > MAX_SIDE):
            raise UserError(
                f"config key sampling.{key}: expected a multiple of 8 from 8 to {MAX_SIDE} pixels "
                f"(latents are 1/8 of the image or finer), got {v}"
            )

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
    train = personalization.get("train") or {}
    if train:  # TrainConfig's options (the base, photos and folder are the sweep's), else a typo
        import dataclasses

        from steerguide.train import TrainConfig

        if dataclasses.is_dataclass(TrainConfig):  # (tests may stand a plain callable in for it)
            fields = {f.name for f in dataclasses.fields(TrainConfig)}
            _unknown("personalization.train", train, fields - {"base", "images", "out"} | {"steps_factor"})
    factor = train.get("steps_factor")
    if factor is not None and (
        isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 0
    ):
        raise UserError(
            f"config key personalization.train.steps_factor: expected a number > 0 (a multiple of the "
            f"recipe's steps), got {factor!r}"
        )

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


def check_sample_size(config: SweepConfig, base: str | Path) -> None:
    """`sampling.height/width` against the base (a diffusers folder): a multiple of its autoencoder's
    downsampling and at most `MAX_UPSCALE` × its own sample size, since self-attention memory grows with
    the square of the pixel count (the toy base at 100000 px asked for 40 GB). A hub id is not read."""
    sizes = {k: config.sampling.get(k) for k in ("height", "width") if config.sampling.get(k) is not None}
    folder = Path(base)
    if not sizes or not (folder / "unet" / "config.json").is_file():
        return
    import json

    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
        factor = 2 ** (len(vae["block_out_channels"]) - 1)
        sample = unet["sample_size"]
        native = max(sample if isinstance(sample, (list, tuple)) else [sample]) * factor
    except (OSError, ValueError, KeyError, TypeError):
        return  # an unusual layout: leave the judgement to the pipeline
    for key, value in sizes.items():
        if value % factor:
            raise UserError(
                f"config key sampling.{key}: {value} is not a multiple of {factor} for base {base}"
            )
        if value > MAX_UPSCALE * native:
            raise UserError(
                f"config key sampling.{key}: {value} px is more than {MAX_UPSCALE}× the {native} px that base "
                f"{base} makes (attention memory grows with the square of the pixels); at most "
                f"{MAX_UPSCALE * native}"
            )


def load_config(path: str | Path) -> SweepConfig:
    return parse_config(read_config_file(path), source=str(path))
