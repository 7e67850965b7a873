"""Sweep configs, the grid and its keys, the results store under crashes and races, resume and sharding."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
from processes import run_tree
from results_writer import append_many

from steerguide.cli import run
from steerguide.errors import UserError
from steerguide.evaluate.benchmarks import load_benchmark
from steerguide.evaluate.results import ResultsStore
from steerguide.sweep import expand, load_config, parse_config, run_sweep, shard
from steerguide.testing.sweep import BrightnessText, MeanColorFidelity, NoiseSampler

SAMPLE = Path("/work/shared/dreambench-sample")
pytestmark = pytest.mark.skipif(not SAMPLE.is_dir(), reason="DreamBench sample not present")
FAKE_METRICS = ["steerguide.testing.sweep:MeanColorFidelity", "steerguide.testing.sweep:BrightnessText"]


def fake_config(**changes) -> dict:
    data = {
        "base": "unused-base",
        "benchmark": {
            "name": "dreambench",
            "root": str(SAMPLE),
            "subjects": ["dog", "teapot"],
            "num_prompts": 3,
        },
        "guidance": {
            "cfg": {"scale": [1.0, 3.0]},
            "pg": {"scale": 3.0, "omega": [0.0, 0.5], "omega_schedule": ["constant", "linear:1"]},
        },
        "seeds": 2,
        "sampling": {"batch_size": 2},
        "metrics": FAKE_METRICS,
        "sampler": "steerguide.testing.sweep:NoiseSampler",
    }
    data.update(changes)
    return data


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_grid_size_order_and_stable_keys():
    cfg = parse_config(fake_config())
    bench = load_benchmark(cfg.benchmark)
    rows = expand(cfg, bench)
    # 2 subjects × (2 cfg + 1·2·2 pg) settings × 2 seeds × 3 prompts
    assert len(cfg.settings) == 6 and len(rows) == 2 * 6 * 2 * 3
    assert len({r.key for r in rows}) == len(rows)
    assert [r.key for r in expand(parse_config(fake_config()), bench)] == [r.key for r in rows]
    assert [r.subject for r in rows[:36]] == ["dog"] * 36 and rows[0].prompt == "a sks dog in the jungle"
    # Changing one axis value re-keys exactly the rows that use it.
    changed = fake_config()
    changed["guidance"] = {**changed["guidance"], "cfg": {"scale": [1.0, 5.0]}}
    other = {r.key for r in expand(parse_config(changed), bench)}
    assert len({r.key for r in rows} - other) == 2 * 1 * 2 * 3
    # ...and so does the number of sampling steps (it changes every image).
    assert not {r.key for r in expand(parse_config(fake_config(sampling={"steps": 7})), bench)} & {
        r.key for r in rows
    }


def test_a_base_retrained_in_place_rekeys_rows_and_cached_personalizations(tmp_path):
    from steerguide.sweep import train_cache_key

    base = tmp_path / "base"
    (base / "unet").mkdir(parents=True)
    weights = base / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"old weights")
    config = fake_config(base=str(base), personalization={"train": {"method": "lora"}})
    bench = load_benchmark(parse_config(config).benchmark)
    before = [r.key for r in expand(parse_config(config), bench)]
    trained_before = train_cache_key(parse_config(config), bench.subjects[0])
    assert before == [r.key for r in expand(parse_config(config), bench)]  # stable while unchanged
    weights.write_bytes(b"new weights")  # same name, same size, other content
    assert not set(before) & {r.key for r in expand(parse_config(config), bench)}
    assert train_cache_key(parse_config(config), bench.subjects[0]) != trained_before


def test_shard_splits_every_row_exactly_once():
    items = list(range(11))
    parts = [shard(items, 3, i) for i in range(3)]
    assert sorted(x for p in parts for x in p) == items and [len(p) for p in parts] == [4, 4, 3]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"guidance": {"pg": {"scale": [3], "omgea": [0.5]}}}, "config key guidance.pg.omgea: unknown key"),
        ({"guidance": {"pg": {"scale": "high"}}}, "config key guidance.pg.scale: expected a number"),
        ({"guidance": {"pg": {"scale": 3, "omega": [1.5]}}}, "config key guidance.pg: omega 1.5 is outside"),
        ({"guidance": {"cfg": {"scale": 3, "omega": 0.5}}}, "config key guidance.cfg.omega: unknown key"),
        ({"guidance": {"xg": {"scale": 3}}}, "config key guidance.xg: unknown method"),
        ({"seeds": [0, "one"]}, "config key seeds:"),
        ({"sampling": {"steps": 0}}, "config key sampling.steps: expected an integer >= 1"),
        ({"metrics": ["dino", "fid"]}, "unknown metric 'fid'"),
        ({"benchmark": {"name": "imagenet"}}, "unknown benchmark 'imagenet'"),
        ({"benchmark": {"name": "dreambench", "rot": "x"}}, "config key benchmark.rot: unknown key"),
        ({"seed": 3}, "config key seed: unknown key"),
    ],
)
def test_malformed_config_names_the_key_and_exits_2(tmp_path, capsys, change, message):
    import yaml

    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(fake_config(**change)))
    assert run(["sweep", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("steerguide: error: ") and message in err[0], err
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_missing_required_key_and_bad_files(tmp_path, capsys):
    data = fake_config()
    del data["guidance"]
    with pytest.raises(UserError, match="config key guidance: missing"):
        parse_config(data)
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: [unclosed\n")
    assert run(["sweep", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "is not valid YAML" in capsys.readouterr().err
    assert run(["sweep", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_toml_config_equals_yaml(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text(
        f'base = "unused-base"\nseeds = 2\nmetrics = {json.dumps(FAKE_METRICS)}\n'
        'sampler = "steerguide.testing.sweep:NoiseSampler"\n'
        f'[benchmark]\nname = "dreambench"\nroot = "{SAMPLE}"\n'
        'subjects = ["dog", "teapot"]\nnum_prompts = 3\n'
        "[sampling]\nbatch_size = 2\n[guidance.cfg]\nscale = [1.0, 3.0]\n"
        '[guidance.pg]\nscale = 3.0\nomega = [0.0, 0.5]\nomega_schedule = ["constant", "linear:1"]\n'
    )
    a, b = load_config(toml), parse_config(fake_config())
    bench = load_benchmark(b.benchmark)
    assert [r.key for r in expand(a, bench)] == [r.key for r in expand(b, bench)]


@pytest.mark.parametrize("name", ["sweep.yaml", "sweep-toy.yaml"])
def test_example_configs_are_valid(name):
    cfg = load_config(Path(__file__).resolve().parents[1] / "examples" / name)
    assert {s.method for s in cfg.settings} == {"cfg", "ag", "pg"}


def test_store_ignores_and_repairs_a_torn_last_line(tmp_path):
    path = tmp_path / "results.jsonl"
    store = ResultsStore(path)
    assert store.append([{"key": "a", "v": 1}, {"key": "b", "v": 2}]) == 2
    with open(path, "ab") as f:  # a writer killed mid-line
        f.write(b'{"key": "c", "v"')
    assert [r["key"] for r in ResultsStore(path).read()] == ["a", "b"]
    assert ResultsStore(path).append([{"key": "b", "v": 9}, {"key": "c", "v": 3}]) == 1
    assert [(r["key"], r["v"]) for r in _lines(path)] == [("a", 1), ("b", 2), ("c", 3)]


def test_concurrent_writers_never_interleave_or_duplicate(tmp_path):
    path = str(tmp_path / "results.jsonl")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=append_many, args=(path, w, barrier)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    rows = _lines(Path(path))  # every line parses
    assert sorted(r["key"] for r in rows) == sorted(f"k{i}" for i in range(60))


def test_sweep_writes_rows_then_resumes_without_redoing(tmp_path):
    cfg = parse_config(fake_config())
    sampler = NoiseSampler()
    stats = run_sweep(cfg, tmp_path, sampler=sampler, limit=10)
    assert stats.written == 10 and stats.total == 72
    # batches never mix settings or seeds and hold at most batch_size (2) prompts: each (setting, seed)
    # group of 3 prompts takes calls of 2 + 1, so 10 rows = 3 groups + 1 row = 7 calls
    assert sampler.calls == 7
    stats = run_sweep(cfg, tmp_path, sampler=NoiseSampler())
    assert (stats.done_before, stats.written) == (10, 62)
    assert run_sweep(cfg, tmp_path, sampler=NoiseSampler()).written == 0
    rows = _lines(tmp_path / "results.jsonl")
    assert len(rows) == 72 and len({r["key"] for r in rows}) == 72
    row = rows[0]
    assert set(row["metrics"]) == {"mean_color", "brightness"}
    assert (tmp_path / row["image"]).is_file()
    # the metric values are the metric applied to the saved image
    from PIL import Image

    image = Image.open(tmp_path / row["image"])
    assert row["metrics"]["brightness"] == pytest.approx(BrightnessText().score([image], [""])[0])
    refs = load_benchmark(cfg.benchmark).subject(row["subject"]).reference_images()
    fid = MeanColorFidelity()
    assert row["metrics"]["mean_color"] == pytest.approx(fid.score([image], [""], fid.prepare(refs))[0])
    assert json.loads((tmp_path / "sweep.json").read_text())["metric_axes"] == {
        "mean_color": "fidelity",
        "brightness": "text",
    }


def test_personalizations_are_trained_once_per_subject_and_cached(tmp_path, monkeypatch):
    import dataclasses
    import types

    calls = []

    @dataclasses.dataclass
    class TrainConfig:  # the real one's fields that the sweep passes
        base: str
        images: list
        out: Path
        token: str
        class_noun: str
        method: str = "lora"
        resume: bool = False
        steps: int | None = None

    def train(config, progress=True):
        assert config.resume and Path(config.out).name.endswith(".partial")  # a killed training resumes
        calls.append((config.token, config.class_noun, config.steps, len(config.images)))
        out = Path(config.out)
        out.mkdir(parents=True)
        (out / "train.json").write_text(json.dumps({"steps": config.steps}))
        return out

    monkeypatch.setitem(
        sys.modules, "steerguide.train", types.SimpleNamespace(TrainConfig=TrainConfig, train=train)
    )
    cfg = parse_config(
        fake_config(personalization={"train": {"steps": 5}}, seeds=1, guidance={"cfg": {"scale": 3.0}})
    )
    seen = []

    class Recording(NoiseSampler):
        def open(self, base, personalization, subject):
            seen.append((subject.name, personalization))
            return super().open(base, personalization, subject)

    run_sweep(cfg, tmp_path, sampler=Recording())
    assert calls == [("sks", "dog", 5, 5), ("sks", "teapot", 5, 5)]
    assert [s for s, _ in seen] == ["dog", "teapot"] and all(Path(p, "train.json").is_file() for _, p in seen)
    # new rows (another seed), same training settings: the cache is reused
    run_sweep(
        parse_config(
            fake_config(personalization={"train": {"steps": 5}}, seeds=[1], guidance={"cfg": {"scale": 3.0}})
        ),
        tmp_path,
        sampler=Recording(),
    )
    assert len(calls) == 2
    # other training settings: trained again, in another cache folder
    run_sweep(
        parse_config(
            fake_config(personalization={"train": {"steps": 6}}, seeds=1, guidance={"cfg": {"scale": 3.0}})
        ),
        tmp_path,
        sampler=Recording(),
    )
    assert len(calls) == 4 and len(list((tmp_path / "personalizations").iterdir())) == 4
    with pytest.raises(UserError, match="config key personalization.train.stepz: unknown key"):  # at parse time
        parse_config(fake_config(personalization={"train": {"stepz": 6}}, guidance={"cfg": {"scale": 3.0}}))


def _cli_env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"), OMP_NUM_THREADS="1")
    return env


@pytest.mark.slow
def test_sharded_under_accelerate_launch(tmp_path):
    import yaml

    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(fake_config()))
    script = tmp_path / "sg.py"
    script.write_text("from steerguide.cli import main\nmain()\n")
    out = tmp_path / "out"
    # Partly done before the launch: the ranks share only the pending rows.
    run_sweep(parse_config(fake_config()), out, sampler=NoiseSampler(), limit=7)
    # On CPU, accelerate starts several processes only through its torchrun path (--multi_gpu); steerguide
    # sees no CUDA and forms a gloo group.
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
        str(script),
        "sweep",
        str(config),
        "--out",
        str(out),
        "--no-progress",
    ]
    # run_tree: on a timeout or a failure, torchrun's workers (in sessions of their own) end too
    proc = run_tree(cmd, env=_cli_env(), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _lines(out / "results.jsonl")
    assert len(rows) == 72 and len({r["key"] for r in rows}) == 72
    launched = rows[7:]
    assert sorted({r["process"] for r in launched}) == [0, 1]
    assert sum(r["process"] == 0 for r in launched) == 33  # 65 pending rows, split 33 / 32
    assert "[process 1/2]" in proc.stderr and "[process 2/2]" in proc.stderr


def test_temporaries_of_dead_processes_are_removed(tmp_path):
    from steerguide.evaluate.results import remove_stale_temporaries

    dead = int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    (tmp_path / "images" / "dog").mkdir(parents=True)
    stale = [tmp_path / "images" / "dog" / f".k1.{dead}.tmp.png", tmp_path / f".sweep.json.{dead}.tmp"]
    live = tmp_path / "images" / "dog" / f".k2.{os.getpid()}.tmp.png"
    for p in [*stale, live]:
        p.write_text("half")
    assert remove_stale_temporaries(tmp_path) == 2
    assert live.exists() and not any(p.exists() for p in stale)


def test_dry_run_counts_without_running(tmp_path, capsys):
    import yaml

    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(fake_config()))
    run_sweep(parse_config(fake_config()), tmp_path / "out", sampler=NoiseSampler(), limit=5)
    assert run(["sweep", str(config), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert (
        "72 rows (6 settings × 2 seeds × 3 prompts × 2 subjects), 5 done, 67 to run"
        in capsys.readouterr().err
    )
    assert len(_lines(tmp_path / "out" / "results.jsonl")) == 5
