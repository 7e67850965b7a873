"""The sweep keeps its promises (issue 14): bad sizes and output folders are one line and exit 2 before
any work, two sweeps into one folder share the rows, the dry run gives real counts, a damaged results
file is named with its line, and Ctrl-C says what was kept."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from steerguide.cli import run
from steerguide.errors import UserError
from steerguide.evaluate.benchmarks import Benchmark, BenchSubject, load_benchmark
from steerguide.sweep import describe_grid, expand, parse_config, run_sweep
from steerguide.sweep.claims import RowClaims
from steerguide.testing.sweep import NoiseSampler

SAMPLE = Path("/work/shared/dreambench-sample")
pytestmark = pytest.mark.skipif(not SAMPLE.is_dir(), reason="DreamBench sample not present")
FAKE_METRICS = ["steerguide.testing.sweep:MeanColorFidelity", "steerguide.testing.sweep:BrightnessText"]
SRC = str(Path(__file__).resolve().parents[1] / "src")


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


def _write_config(path: Path, **changes) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(fake_config(**changes)))
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("steerguide: error: "), err
    return err[0]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class SlowSampler(NoiseSampler):
    """NoiseSampler that sleeps per call, so that two sweeps overlap."""

    def __init__(self, config=None, delay: float = 0.05):
        super().__init__(config)
        self.delay = delay
        self.images = 0

    def open(self, base, personalization, subject):
        session = super().open(base, personalization, subject)
        generate = session.generate

        def counting(setting, prompts, seed):
            self.images += len(prompts)
            return generate(setting, prompts, seed)

        session.generate = counting
        return session


# ----------------------------------------------------------------------------- sizes and --out


@pytest.mark.parametrize(
    "sampling, message",
    [
        ({"height": 30, "width": 32}, "config key sampling.height: expected a multiple of 8"),
        (
            {"height": 32, "width": 100000},
            "config key sampling.width: expected a multiple of 8 from 8 to 4096",
        ),
        ({"height": 0}, "config key sampling.height: expected an integer >= 1"),
        ({"width": -8}, "config key sampling.width: expected an integer >= 1"),
    ],
)
def test_bad_sample_sizes_are_one_line_and_exit_2(tmp_path, capsys, sampling, message):
    config = _write_config(tmp_path / "s.yaml", sampling=sampling)
    for extra in ([], ["--dry-run"]):
        assert run(["sweep", str(config), "--out", str(tmp_path / "out"), *extra]) == 2
        assert message in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_sample_size_is_checked_against_the_base(tmp_path, capsys):
    # The toy base makes 32 px images (UNet sample size 16, autoencoder ×2): 4× is the most it may be asked.
    config = _write_config(tmp_path / "s.yaml", base="toy", sampling={"height": 136, "width": 32})
    assert run(["sweep", str(config), "--out", str(tmp_path / "out")]) == 2
    line = _one_error_line(capsys)
    assert "sampling.height: 136 px is more than 4× the 32 px" in line and "at most 128" in line
    assert not (tmp_path / "out" / "results.jsonl").exists()
    ok = _write_config(tmp_path / "ok.yaml", base="toy", sampling={"height": 128, "width": 64})
    assert run(["sweep", str(ok), "--out", str(tmp_path / "out"), "--dry-run"]) == 0


@pytest.mark.parametrize("dry_run", [False, True])
def test_unusable_out_is_one_line_and_exit_2_before_any_work(tmp_path, capsys, dry_run):
    config = _write_config(tmp_path / "s.yaml")
    existing = tmp_path / "a-file"
    existing.write_text("keep me")
    extra = ["--dry-run"] if dry_run else []
    assert run(["sweep", str(config), "--out", str(existing), *extra]) == 2
    assert f"output folder {existing} is an existing file" in _one_error_line(capsys)
    assert existing.read_text() == "keep me"
    assert run(["sweep", str(config), "--out", "/proc/steerguide-x/out", *extra]) == 2
    assert "output folder /proc/steerguide-x/out is not writable" in _one_error_line(capsys)
    # the Python API checks the same before loading anything
    with pytest.raises(UserError, match="is an existing file"):
        run_sweep(parse_config(fake_config()), existing, sampler=NoiseSampler())
    # a dry run into a new folder leaves nothing behind
    assert run(["sweep", str(config), "--out", str(tmp_path / "new" / "out"), "--dry-run"]) == 0
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------- dry run counts


def test_dry_run_counts_name_every_factor(tmp_path, capsys):
    config = _write_config(tmp_path / "s.yaml", seeds=1, guidance={"cfg": {"scale": 3.0}})
    assert run(["sweep", str(config), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert (
        capsys.readouterr().err.strip()
        == "6 rows (1 setting × 1 seed × 3 prompts × 2 subjects), 0 done, 6 to run"
    )
    # subjects with different numbers of prompts: the sum and the range
    cfg = parse_config(fake_config())
    bench = Benchmark(
        "hand-made",
        [
            BenchSubject("a", "dog", "sks", ["p1", "p2"]),
            BenchSubject("b", "cat", "sks", ["p1", "p2", "p3", "p4"]),
        ],
    )
    assert len(expand(cfg, bench)) == 6 * 2 * 6
    assert describe_grid(cfg, bench) == "72 rows (6 settings × 2 seeds × 6 prompts over 2 subjects, 2-4 each)"


# ----------------------------------------------------------------------------- damaged results


@pytest.mark.parametrize("garbage", [b"this is not json\n", b"\x89PNG\x00\xff\xfe\n", b"[1, 2]\n"])
def test_a_damaged_results_file_is_named_with_its_line(tmp_path, capsys, garbage):
    out = tmp_path / "out"
    run_sweep(parse_config(fake_config()), out, sampler=NoiseSampler(), limit=3)
    results = out / "results.jsonl"
    lines = results.read_bytes().splitlines(keepends=True)
    results.write_bytes(lines[0] + garbage + b"".join(lines[1:]))
    assert run(["report", str(out)]) == 2
    line = _one_error_line(capsys)
    assert f"{results} line 2 is not a result row" in line
    config = _write_config(tmp_path / "s.yaml")
    for extra in ([], ["--dry-run"]):
        assert run(["sweep", str(config), "--out", str(out), *extra]) == 2
        assert f"{results} line 2 is not a result row" in _one_error_line(capsys)
    assert len(results.read_bytes().splitlines()) == 4  # nothing appended to a damaged file


# ----------------------------------------------------------------------------- two sweeps, one folder


def _concurrent_sweep(out: str, barrier, queue) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    sampler = SlowSampler(delay=0.05)
    cfg = parse_config(fake_config())
    barrier.wait(60)  # both start sampling together
    stats = run_sweep(cfg, out, sampler=sampler)
    rows = len(Path(out, "results.jsonl").read_text().splitlines())
    queue.put((os.getpid(), stats.written, sampler.images, stats.done_elsewhere, rows))


def test_two_sweeps_into_one_folder_share_the_rows(tmp_path):
    out = tmp_path / "out"
    ctx = multiprocessing.get_context("fork")  # two real processes, without re-importing everything
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_concurrent_sweep, args=(str(out), barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = _lines(out / "results.jsonl")
    assert len(rows) == 72 and len({r["key"] for r in rows}) == 72
    written = [r[1] for r in results]
    images = [r[2] for r in results]
    assert sum(written) == 72 and all(w > 0 for w in written), results  # both worked...
    assert sum(images) == 72, results  # ...and neither computed a row the other did
    assert all(r[4] == 72 for r in results)  # each returned only once the whole grid was there
    assert not (out / "claims").exists()  # claims cleaned up once done


def _claim_and_die(folder: Path, key: str) -> None:
    RowClaims(folder).try_claim(key)
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_claim_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "out"
    cfg = parse_config(fake_config())
    key = expand(cfg, load_benchmark(cfg.benchmark))[4].key
    # a process that claimed a row and was killed: its file remains, its lock died with it
    proc = multiprocessing.get_context("fork").Process(target=_claim_and_die, args=(out / "claims", key))
    proc.start()
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL and (out / "claims" / key).is_file()
    sampler = SlowSampler(delay=0)
    found = []
    sweep = threading.Thread(target=lambda: found.append(run_sweep(cfg, out, sampler=sampler)), daemon=True)
    sweep.start()
    sweep.join(60)
    assert not sweep.is_alive(), "the sweep waits for a claim whose owner is dead"
    assert found[0].written == 72 and sampler.images == 72
    assert not (out / "claims").exists()


@pytest.mark.parametrize("owner_finishes", [True, False])
def test_a_row_held_by_a_live_sweep_is_waited_for(tmp_path, owner_finishes):
    """A row another sweep holds is not computed here: its owner appends it (we count it as done
    elsewhere), or gives it up unfinished (we compute it once the claim is free)."""
    out = tmp_path / "out"
    cfg = parse_config(fake_config())
    row = expand(cfg, load_benchmark(cfg.benchmark))[4]
    other = RowClaims(out / "claims")  # another fd: flock claims conflict even within one process
    assert other.try_claim(row.key)

    def owner() -> None:
        if owner_finishes:
            from steerguide.evaluate.results import ResultsStore

            ResultsStore(out / "results.jsonl").append([{"key": row.key, "by": "other"}])
        other.release(row.key, done=owner_finishes)

    timer = threading.Timer(1.5, owner)
    timer.start()
    sampler = SlowSampler(delay=0)
    t0 = time.perf_counter()
    stats = run_sweep(cfg, out, sampler=sampler)
    timer.join()
    assert time.perf_counter() - t0 >= 1.4  # it waited for the owner
    keys = [r["key"] for r in _lines(out / "results.jsonl")]
    assert sorted(keys) == sorted(r.key for r in expand(cfg, load_benchmark(cfg.benchmark)))
    if owner_finishes:
        assert (stats.written, sampler.images, stats.done_elsewhere) == (71, 71, 1)
    else:
        assert (stats.written, sampler.images, stats.done_elsewhere) == (72, 72, 0)


def test_two_sweeps_train_a_personalization_once(tmp_path, monkeypatch):
    import dataclasses
    import types

    from steerguide.sweep.cache import ensure_personalization

    calls = []

    @dataclasses.dataclass
    class TrainConfig:
        base: str
        images: list
        out: Path
        token: str
        class_noun: str
        method: str = "lora"
        resume: bool = False
        steps: int | None = None

    def train(config, progress=True):
        calls.append(config.token)
        time.sleep(0.5)
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "train.json").write_text("{}")
        return out

    monkeypatch.setitem(
        sys.modules, "steerguide.train", types.SimpleNamespace(TrainConfig=TrainConfig, train=train)
    )
    cfg = parse_config(fake_config(personalization={"train": {"steps": 5}}))
    subject = load_benchmark(cfg.benchmark).subjects[0]
    found, logs = [], []
    threads = [
        threading.Thread(
            target=lambda: found.append(ensure_personalization(cfg, subject, tmp_path, log=logs.append))
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(calls) == 1 and len(set(found)) == 1 and Path(found[0], "train.json").is_file()
    assert logs == ["another sweep is training the personalization of dog; waiting for it"]


# ----------------------------------------------------------------------------- Ctrl-C


def test_sigint_says_what_was_kept_and_a_rerun_continues(tmp_path, capsys, monkeypatch):
    config = _write_config(tmp_path / "s.yaml")
    out = tmp_path / "out"
    results = out / "results.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SRC)
    slowed = "from steerguide.testing.sweep import NoiseSampler; NoiseSampler.delay = 0.15; "
    cmd = [
        sys.executable,
        "-c",
        slowed + "from steerguide.cli import main; main()",
        "sweep",
        str(config),
        "--out",
        str(out),
    ]
    # pytest-xdist workers and background shells ignore SIGINT, and children inherit that: restore it.
    proc = subprocess.Popen(
        [*cmd, "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if results.exists() and results.read_text().count("\n") >= 6:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the sweep ended before it could be interrupted: {proc.stderr.read()}"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    before = _lines(results)  # every line whole
    assert 6 <= len(before) < 72
    assert last.startswith("steerguide: interrupted: ") and "Traceback" not in err, err
    assert f"{len(before)} of 72 rows are kept in {results}" in last and "rerun the same command" in last
    assert not list(out.rglob(".*.tmp*"))  # its temporaries removed
    leftover = list((out / "claims").iterdir()) if (out / "claims").exists() else []
    assert len(leftover) <= 2  # at most the batch in flight, unlocked (the process is gone)
    # the rerun continues: appends exactly the missing rows
    capsys.readouterr()
    assert run(["sweep", str(config), "--out", str(out), "--no-progress"]) == 0
    rows = _lines(results)
    assert len(rows) == 72 and len({r["key"] for r in rows}) == 72 and rows[: len(before)] == before
    assert f"{72 - len(before)} new rows ({len(before)} of 72 done before)" in capsys.readouterr().err
    assert not (out / "claims").exists()


def test_an_interrupted_training_says_it_resumes(tmp_path, monkeypatch):
    import types

    def train(config, progress=True):
        raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "steerguide.train", types.SimpleNamespace(TrainConfig=dict, train=train))
    cfg = parse_config(fake_config(personalization={"train": {"steps": 5}}))
    with pytest.raises(KeyboardInterrupt, match="interrupted while training the personalization of dog"):
        run_sweep(cfg, tmp_path, sampler=NoiseSampler())


def test_a_row_finished_just_before_our_claim_is_not_redone(tmp_path, monkeypatch):
    """The window between reading the done keys and taking a claim: another sweep appends the row and
    drops its claim right then. The claim succeeds, but the row is done: it must not be computed again."""
    from steerguide.evaluate.results import ResultsStore
    from steerguide.sweep import run as sweep_run

    out = tmp_path / "out"
    cfg = parse_config(fake_config())
    target = expand(cfg, load_benchmark(cfg.benchmark))[4].key
    real = sweep_run.RowClaims.try_claim

    def racing(self, key):
        if key == target:
            ResultsStore(out / "results.jsonl").append([{"key": key, "by": "other"}])
        return real(self, key)

    monkeypatch.setattr(sweep_run.RowClaims, "try_claim", racing)
    sampler = SlowSampler(delay=0)
    stats = run_sweep(cfg, out, sampler=sampler)
    assert (stats.written, sampler.images, stats.done_elsewhere) == (71, 71, 1)


def test_an_interrupt_mid_write_leaves_no_temporary_and_no_claim_held(tmp_path, monkeypatch):
    from steerguide.sweep import run as sweep_run
    from steerguide.sweep.claims import try_lock

    calls = []

    def interrupted_save(image, path):  # the image written to its temporary name, then Ctrl-C
        calls.append(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if len(calls) == 3:
            image.save(path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}"))
            raise KeyboardInterrupt
        return image.save(path)

    monkeypatch.setattr(sweep_run, "save_image_atomic", interrupted_save)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt, match="2 new rows written by this run; 2 of 72 rows are kept"):
        run_sweep(parse_config(fake_config()), out, sampler=NoiseSampler())
    assert not list(out.rglob(".*.tmp*"))
    claims = list((out / "claims").iterdir())
    assert len(claims) == 1  # the batch in flight (the group's third prompt): kept, its lock released
    for path in claims:
        fd = try_lock(path)
        assert fd is not None
        os.close(fd)


def test_a_method_may_list_several_grids():
    cfg = parse_config(
        fake_config(
            guidance={
                "pg": [
                    {"scale": [3.0, 5.0], "omega": [0.0, 0.5]},
                    {"scale": 5.0, "omega": 0.0, "omega_schedule": "linear:1"},
                    {"scale": [3.0, 5.0], "omega": 0.5, "interval": [0.0, 0.6]},
                    {"scale": 3.0, "omega": 0.5},  # already in the first grid: one setting, not two
                ]
            }
        )
    )
    labels = [s.label for s in cfg.settings]
    assert labels == [
        "pg w=3 ω=0",
        "pg w=3 ω=0.5",
        "pg w=5 ω=0",
        "pg w=5 ω=0.5",
        "pg w=5 ω=0 linear:1",
        "pg w=3 ω=0.5 [0,0.6]",
        "pg w=5 ω=0.5 [0,0.6]",
    ]
    with pytest.raises(UserError, match=r"config key guidance.pg\[1\].omgea: unknown key"):
        parse_config(fake_config(guidance={"pg": [{"scale": 3.0}, {"scale": 3.0, "omgea": 1}]}))
    with pytest.raises(UserError, match=r"config key guidance.pg: expected a mapping of axes or a list"):
        parse_config(fake_config(guidance={"pg": []}))
