"""Sweeps over toy subjects from a subjects file: `benchmark: {name: toy, subjects_file: F, subjects: [...]}`,
keys that follow each subject's definition, and one line for a bad file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from steerguide.cli import run
from steerguide.errors import UserError
from steerguide.evaluate.benchmarks import load_benchmark
from steerguide.sweep import expand, parse_config, run_sweep, train_cache_key
from steerguide.testing.sweep import NoiseSampler
from steerguide.toyworld import get_subject
from steerguide.toyworld.subjects import builtin_subjects_path

FAKE_METRICS = ["steerguide.testing.sweep:MeanColorFidelity", "steerguide.testing.sweep:BrightnessText"]
STAR = {"token": "sks", "class": "star", "look": "split_v", "colors": ["cyan", "magenta"]}
HEART = {"token": "hto", "class": "heart", "look": "ring", "colors": ["navy", [200, 120, 10]]}


def write_subjects(path: Path, *subjects: dict) -> Path:
    path.write_text(yaml.safe_dump({"subjects": list(subjects)}))
    return path


def toy_config(subjects_file: Path | None, **bench) -> dict:
    benchmark = {"name": "toy", **bench}
    if subjects_file is not None:
        benchmark["subjects_file"] = str(subjects_file)
    return {
        "base": "unused-base",
        "benchmark": benchmark,
        "personalization": {"train": {"method": "lora"}},
        "guidance": {"cfg": {"scale": 3.0}, "pg": {"scale": 3.0, "omega": [0.5]}},
        "seeds": 1,
        "sampling": {"batch_size": 4},
        "metrics": FAKE_METRICS,
        "sampler": "steerguide.testing.sweep:NoiseSampler",
    }


def _keys(config: dict) -> tuple[dict[str, set[str]], dict[str, str]]:
    cfg = parse_config(config)
    bench = load_benchmark(cfg.benchmark)
    rows: dict[str, set[str]] = {}
    for r in expand(cfg, bench):
        rows.setdefault(r.subject, set()).add(r.key)
    return rows, {s.name: train_cache_key(cfg, s) for s in bench.subjects}


def test_subjects_come_from_the_file_and_can_be_picked(tmp_path):
    path = write_subjects(tmp_path / "mine.yaml", STAR, HEART)
    bench = load_benchmark(parse_config(toy_config(path)).benchmark)
    assert [s.name for s in bench.subjects] == ["sks_star", "hto_heart"]
    heart = bench.subjects[1]
    assert heart.prompts == get_subject("hto_heart", path).eval_prompts()
    assert heart.definition == get_subject("hto_heart", path).to_dict()
    picked = load_benchmark(parse_config(toy_config(path, subjects=["hto"], num_prompts=3)).benchmark)
    assert [s.name for s in picked.subjects] == ["hto_heart"] and len(picked.subjects[0].prompts) == 3


def test_editing_a_subject_rekeys_its_rows_and_personalization_only(tmp_path):
    path = write_subjects(tmp_path / "mine.yaml", STAR, HEART)
    rows, trained = _keys(toy_config(path))
    assert rows == _keys(toy_config(path))[0]  # stable while unchanged
    write_subjects(path, STAR, {**HEART, "colors": ["navy", [200, 120, 11]]})  # one channel of one color
    rows2, trained2 = _keys(toy_config(path))
    assert rows2["sks_star"] == rows["sks_star"] and trained2["sks_star"] == trained["sks_star"]
    assert not rows2["hto_heart"] & rows["hto_heart"] and trained2["hto_heart"] != trained["hto_heart"]
    # rows without a trained personalization (the base-model reference) follow the definition too
    base_only = {k: v for k, v in toy_config(path).items() if k != "personalization"}
    write_subjects(path, STAR, HEART)
    before = _keys(base_only)[0]
    write_subjects(path, STAR, {**HEART, "colors": ["navy", [200, 120, 11]]})
    after = _keys(base_only)[0]
    assert after["sks_star"] == before["sks_star"] and not after["hto_heart"] & before["hto_heart"]
    # its own photos instead of the world's rule: stale too
    photos = [{"background": "gray", "position": "center", "size": "large"}]
    write_subjects(path, STAR, {**HEART, "photos": photos})
    rows3, trained3 = _keys(toy_config(path))
    assert not rows3["hto_heart"] & rows["hto_heart"] and trained3["hto_heart"] != trained["hto_heart"]


def test_the_builtin_file_named_explicitly_is_the_default(tmp_path):
    assert _keys(toy_config(builtin_subjects_path())) == _keys(toy_config(None))


def test_training_uses_the_files_subject(tmp_path, monkeypatch):
    import json

    import steerguide.train

    path = write_subjects(tmp_path / "mine.yaml", HEART)
    seen = []

    def train(config, progress=True):
        seen.append(config)
        out = Path(config.out)
        out.mkdir(parents=True)
        (out / "train.json").write_text(json.dumps({}))
        return out

    monkeypatch.setattr(steerguide.train, "train", train)
    cfg = parse_config(toy_config(path, num_prompts=2))
    stats = run_sweep(cfg, tmp_path / "out", sampler=NoiseSampler())
    assert stats.written == 2 * 2 and len(seen) == 1
    trained = seen[0]
    assert trained.token == "hto" and trained.class_noun == "heart"
    assert trained.extra["toy_subject_definition"] == get_subject("hto_heart", path).to_dict()
    assert [im.tobytes() for im in trained.images] == [
        im.tobytes() for im in get_subject("hto_heart", path).reference_images()
    ]


@pytest.mark.parametrize(
    "contents, message",
    [
        ({"subjects": [{**HEART, "look": "plaid"}]}, "subject #1 (hto_heart): key look: 'plaid'"),
        ({"subjects": [HEART, HEART]}, "hto_heart is defined twice"),
        ("subjects: [a, b", "not valid YAML at line"),
        (None, "does not exist"),
    ],
)
def test_a_bad_subjects_file_is_one_line_and_exit_2(tmp_path, capsys, contents, message):
    path = tmp_path / "bad.yaml"
    if contents is not None:
        path.write_text(contents if isinstance(contents, str) else yaml.safe_dump(contents))
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(toy_config(path)))
    for extra in (["--dry-run"], []):
        assert run(["sweep", str(config), "--out", str(tmp_path / "out"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("steerguide: error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()  # nothing made before the inputs were found good


def test_subjects_file_config_errors(tmp_path):
    with pytest.raises(UserError, match="benchmark.subjects_file: only the toy benchmark"):
        parse_config(
            {**toy_config(None), "benchmark": {"name": "dreambench", "root": "x", "subjects_file": "f"}}
        )
    with pytest.raises(UserError, match="benchmark.subjects_file: expected a path"):
        parse_config({**toy_config(None), "benchmark": {"name": "toy", "subjects_file": 3}})
    path = write_subjects(tmp_path / "mine.yaml", STAR)
    with pytest.raises(
        UserError, match=r"subjects file .*mine.yaml has no subject 'kfp_star'; it has: sks_star"
    ):
        load_benchmark(parse_config(toy_config(path, subjects=["kfp_star"])).benchmark)


def test_sweep_offers_its_trainings_to_continue_from_the_given_folders(tmp_path, monkeypatch):
    """`run_sweep(continue_from=...)` hands the folders to the warm start with the training's own settings
    (the exactness of the warm start itself: tests/test_train_resume.py). Wrong: the folders dropped on
    the way, or the warm start tried before the steps factor is applied."""
    import json

    import steerguide.sweep.cache as sweep_cache
    import steerguide.train
    from steerguide.toyworld.recipes import TOY_DEFAULTS

    seen = []

    def train(config, progress=True):
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "train.json").write_text(json.dumps({}))
        return out

    monkeypatch.setattr(steerguide.train, "train", train)
    monkeypatch.setattr(
        sweep_cache, "seed_from_shorter", lambda target, subject, sweeps: seen.append((target.steps, subject, sweeps))
    )
    config = toy_config(None, subjects=["sks_star"], num_prompts=1)
    config["personalization"]["train"]["steps_factor"] = 3
    run_sweep(parse_config(config), tmp_path / "out", sampler=NoiseSampler(), continue_from=[tmp_path / "short"])
    assert seen == [(3 * TOY_DEFAULTS["lora"]["steps"], "sks_star", [tmp_path / "short"])]


def test_steps_factor_trains_a_multiple_of_the_recipes_steps(tmp_path, monkeypatch):
    import json

    import steerguide.train
    from steerguide.toyworld.recipes import TOY_DEFAULTS

    steps = []

    def train(config, progress=True):
        steps.append(config.steps)
        out = Path(config.out)
        out.mkdir(parents=True)
        (out / "train.json").write_text(json.dumps({}))
        return out

    monkeypatch.setattr(steerguide.train, "train", train)
    default = TOY_DEFAULTS["lora"]["steps"]
    folders = set()
    for factor in (None, 0.5, 3):
        config = toy_config(None, subjects=["sks_star"], num_prompts=1)
        if factor is not None:
            config["personalization"]["train"]["steps_factor"] = factor
        run_sweep(parse_config(config), tmp_path / "out", sampler=NoiseSampler())
        folders |= set((tmp_path / "out" / "personalizations").iterdir())
    assert steps == [default, round(default / 2), 3 * default] and len(folders) == 3
    # relative to a recipe's own steps when it gives them
    config = toy_config(None, subjects=["sks_star"], num_prompts=1)
    config["personalization"]["train"].update(steps=10, steps_factor=3)
    run_sweep(parse_config(config), tmp_path / "out", sampler=NoiseSampler())
    assert steps[-1] == 30
    for bad in (0, -1, "half", True):
        config["personalization"]["train"]["steps_factor"] = bad
        with pytest.raises(UserError, match="personalization.train.steps_factor: expected a number > 0"):
            parse_config(config)
