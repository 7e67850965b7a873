"""Sweeps: a grid over guidance settings × subjects × prompts × seeds, one result row per image.

The parts, each one job, imports pointing down this list:
- `config`: the config file (YAML/TOML) validated into a `SweepConfig` of `Setting`s;
- `cache`: what identifies the inputs in keys (base fingerprint, personalization) and the
  personalizations trained once and cached under OUT/personalizations/;
- `grid`: the rows of the grid in a stable order, each keyed by every setting that defines its
  image (a rerun skips what is done; a changed setting makes new rows); sharding and batching;
- `sampler`: what turns a batch of rows into images;
- `claims`: row claims, so that two sweeps into one folder share the work;
- `run`: the loop: pending rows sampled, scored and appended to OUT/results.jsonl (see `evaluate/results.py`),
  images to OUT/images/<subject>/<key>.png.

The package gathers their public names: `from steerguide.sweep import run_sweep`.
"""

from steerguide.sweep.cache import (
    base_identity,
    ensure_personalization,
    personalization_id,
    personalization_path,
    resolve_base,
    stable_hash,
    train_cache_key,
)
from steerguide.sweep.config import (
    BENCHMARK_KEYS,
    PERSONALIZATION_KEYS,
    SAMPLING_KEYS,
    TOP_KEYS,
    Setting,
    SweepConfig,
    load_config,
    parse_config,
    read_config_file,
)
from steerguide.sweep.grid import Row, batches, describe_grid, expand, shard
from steerguide.sweep.run import SweepInterrupted, SweepStats, check_out, run_sweep
from steerguide.sweep.sampler import DiffusersSampler, make_sampler

__all__ = [
    "BENCHMARK_KEYS",
    "PERSONALIZATION_KEYS",
    "SAMPLING_KEYS",
    "TOP_KEYS",
    "DiffusersSampler",
    "Row",
    "Setting",
    "SweepConfig",
    "SweepInterrupted",
    "SweepStats",
    "base_identity",
    "batches",
    "check_out",
    "describe_grid",
    "ensure_personalization",
    "expand",
    "load_config",
    "make_sampler",
    "parse_config",
    "personalization_id",
    "personalization_path",
    "read_config_file",
    "resolve_base",
    "run_sweep",
    "shard",
    "stable_hash",
    "train_cache_key",
]
