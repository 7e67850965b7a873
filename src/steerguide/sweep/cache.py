"""What identifies a sweep's inputs in its cache keys, and the personalizations it trains once and caches.

A key hashes everything that defines a result: the base (for a local folder, a fingerprint of its weights,
so a base retrained in place makes old rows stale), the subject, the training settings and the trainer's
defaults. Trained personalizations live in OUT/personalizations/<subject>-<key>/.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from steerguide.bases import resolve_base
from steerguide.errors import UserError
from steerguide.evaluate.benchmarks import BenchSubject
from steerguide.files import write_json_atomic
from steerguide.sweep.claims import exclusive
from steerguide.sweep.config import SweepConfig
from steerguide.train.recipes import RECIPES, Recipe


def stable_hash(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


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
    identity = {
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
    if subject.definition is not None:  # a generated subject's photos follow from its definition
        identity["subject_definition"] = subject.definition
    return stable_hash(identity)


def _trainer_identity(config: SweepConfig) -> dict:
    from steerguide._version import __version__

    identity = {"steerguide": __version__, "lora_layout": "peft"}
    recipe = _recipe(config)
    if recipe is not None:
        method = (config.personalization.get("train") or {}).get("method", "lora")
        identity.update(recipe.identity(method))
    return identity


def _recipe(config: SweepConfig) -> Recipe | None:
    """The training recipe of the config's benchmark: a plugin's benchmark (the toy world's) trains its
    subjects with the recipe of the same name; other benchmarks' photos train with the plain defaults."""
    name = config.benchmark.get("name")
    return RECIPES.lookup(name) if name in RECIPES else None


def _cached(folder: Path, key: str) -> bool:
    marker = folder / "steerguide-cache.json"
    if (folder / "train.json").is_file() and marker.is_file():
        try:
            return json.loads(marker.read_text()).get("key") == key
        except json.JSONDecodeError:
            return False
    return False


def ensure_personalization(
    config: SweepConfig,
    subject: BenchSubject,
    out: Path,
    progress: bool = False,
    may_train: bool = True,
    log: Callable[[str], None] | None = None,
    shipped: bool = True,
    continue_from: Sequence[str | Path] = (),
) -> str | None:
    """The personalization folder for `subject`: a given path, or one trained once and cached under
    OUT/personalizations/<subject>-<key>/ (reused when its train.json exists and its cache key matches).

    Training runs in `<folder>.partial` with resume on, so a killed sweep continues the training from its
    last checkpoint; the finished folder is renamed into place. Two sweeps into one folder train it once:
    the second waits on a lock (OUT/claims/train-<folder>) and then finds it cached. With `shipped`, a
    personalization the toy world ships under the same cache key is copied instead of trained. With
    `continue_from` (other sweep folders), a shorter training of the same recipe found there is continued
    instead of starting at step 0 (`seed_from_shorter`)."""
    if "train" not in config.personalization:
        return personalization_path(config, subject)
    key = train_cache_key(config, subject)
    folder = out / "personalizations" / f"{subject.name}-{key[:12]}"
    if _cached(folder, key):
        return str(folder)
    source = shipped_personalization(config, subject) if shipped else None
    if source is not None:
        _copy_into_place(source, folder)
        if log:
            log(f"the toy world ships the personalization of {subject.name} (same base, photos and recipe): "
                "reusing it")
        return str(folder)
    if not may_train:
        raise UserError(
            f"subject {subject.name!r} needs a personalization trained first: under several "
            "processes, run `steerguide sweep CONFIG --out DIR --train-only` once in a single process"
        )

    def waiting() -> None:
        if log:
            log(f"another sweep is training the personalization of {subject.name}; waiting for it")

    with exclusive(out / "claims" / f"train-{folder.name}", on_wait=waiting):
        if _cached(folder, key):  # trained by the sweep we waited for
            return str(folder)
        _train(config, subject, key, folder, progress, continue_from, log)
    return str(folder)


def shipped_personalization(config: SweepConfig, subject: BenchSubject) -> Path | None:
    """The personalization the benchmark's plugin (the toy world) ships for `subject` under this config's
    cache key, if any."""
    recipe = _recipe(config)
    if recipe is None or "train" not in config.personalization:
        return None
    return recipe.shipped(subject.name, train_cache_key(config, subject))


def _copy_into_place(source: Path, folder: Path) -> None:
    """Copy a finished personalization folder to `folder` whole or not at all (a copy, then a rename)."""
    import shutil

    partial = folder.with_name(folder.name + ".copying")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    if folder.exists():  # a stale or mismatching cache entry: replace it whole
        shutil.rmtree(folder)
    os.replace(partial, folder)


def _train(
    config: SweepConfig,
    subject: BenchSubject,
    key: str,
    folder: Path,
    progress: bool,
    continue_from: Sequence[str | Path] = (),
    log: Callable[[str], None] | None = None,
) -> None:
    from steerguide.train import train

    partial = folder.with_name(folder.name + ".partial")
    train_config = train_config_for(config, subject, partial)
    seeded = seed_from_shorter(train_config, subject.name, continue_from) if continue_from else None
    if seeded is not None and log:
        log(f"continuing the {seeded[1]}-step personalization of {subject.name} in {seeded[0]} "
            f"to {train_config.max_steps} steps")
    trained = Path(train(train_config, progress=progress))
    write_json_atomic(trained / "steerguide-cache.json", {"key": key, "subject": subject.name})
    if folder.exists():  # a stale or mismatching cache entry: replace it whole
        import shutil

        shutil.rmtree(folder)
    os.replace(trained, folder)


def train_config_for(config: SweepConfig, subject: BenchSubject, partial: Path):
    """The `TrainConfig` a sweep trains `subject` with, writing into `partial` (resume on)."""
    from steerguide.train import TrainConfig

    settings = {"method": "lora", "resume": True, **(config.personalization.get("train") or {})}
    steps_factor = settings.pop("steps_factor", None)
    try:
        recipe = _recipe(config)
        if recipe is not None:  # the plugin's tuned defaults and instance prompts (the toy world's)
            method = settings.pop("method")
            train_config = recipe.config(
                subject.name,
                method,
                subjects_file=config.benchmark.get("subjects_file"),
                base=resolve_base(config.base),
                out=partial,
                **settings,
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
    if steps_factor is not None:  # a strength relative to the recipe: "half its steps", "three times"
        train_config = dataclasses.replace(
            train_config, steps=max(1, round(steps_factor * train_config.max_steps))
        )
    return train_config


# What may differ between a training and a longer one that continues it (everything else must match).
_LENGTH_ONLY = {"steps", "max_steps", "out", "resume", "overwrite"}


def seed_from_shorter(target, subject: str, sweeps: Sequence[str | Path]) -> tuple[Path, int] | None:
    """Start `target` (a TrainConfig whose `out` does not exist yet) from the last checkpoint of the
    longest finished training of `subject` in the sweep folders `sweeps` that has fewer steps and
    otherwise every setting of `target`. Returns (that training's folder, its steps), or None.

    Exact, not approximate: the checkpoint holds the weights, optimizer, scheduler and RNG states, and a run
    continued from a checkpoint equals an uninterrupted one (tests/test_train_resume.py). Only when the
    learning rate does not depend on the total number of steps (constant, or constant after a warm-up the
    shorter run finished); under another schedule the shorter run followed another curve: None."""
    import shutil

    out = Path(target.out)
    if out.exists():  # an interrupted training resumes from its own checkpoints
        return None
    if target.lr_scheduler not in ("constant", "constant_with_warmup"):
        return None
    want = {k: v for k, v in target.to_json().items() if k not in _LENGTH_ONLY}
    best: tuple[int, Path] | None = None
    for sweep in sweeps:
        for folder in sorted(Path(sweep, "personalizations").glob(f"{subject}-*")):
            if folder.suffix in (".partial", ".copying", ".seeding"):  # unfinished: never a source
                continue
            try:
                record = json.loads((folder / "train.json").read_text())
            except (OSError, json.JSONDecodeError):
                continue
            steps, settings = record.get("steps"), record.get("config") or {}
            same = {k: v for k, v in settings.items() if k not in _LENGTH_ONLY} == want
            if (same and isinstance(steps, int) and target.lr_warmup_steps <= steps < target.max_steps
                    and (folder / "checkpoints" / f"step-{steps}").is_dir()
                    and (best is None or steps > best[0])):
                best = (steps, folder)
    if best is None:
        return None
    steps, folder = best
    seeding = out.with_name(out.name + ".seeding")  # whole or not at all
    shutil.rmtree(seeding, ignore_errors=True)
    shutil.copytree(folder / "checkpoints" / f"step-{steps}", seeding / "checkpoints" / f"step-{steps}")
    shutil.copy2(folder / "checkpoints" / "run.json", seeding / "checkpoints" / "run.json")
    os.replace(seeding, out)
    return folder, steps
