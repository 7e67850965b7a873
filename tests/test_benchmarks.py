"""The overhead benchmark runs end to end (a smoke test; its figures are measured, not asserted)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_overhead_benchmark_smoke(capsys):
    from diffusers.utils import logging as diffusers_logging

    bars = diffusers_logging.is_progress_bar_enabled()
    try:
        code, stdout, stderr = _run_script(
            capsys, "overhead", "--methods", "cfg-lora,pg-lora,naive-3pass,cfg-full,pg-full,pg-full-1pass",
            "--rounds", "1",
            "--warmups", "0", "--steps", "2", "--skip-memory", "--channels", "32,64", "--resolution", "32",
            "--prompts", "2",
        )
    finally:  # the script turns diffusers' bars off for the whole process
        if bars:
            diffusers_logging.enable_progress_bar()
    assert code == 0, stderr[-2000:]
    lines = stdout.splitlines()
    table = {
        line.split()[0]: line.split()[1:]
        for line in lines
        if line.split() and line.split()[0] in METHODS
    }
    assert set(table) == set(METHODS)
    assert float(table["cfg-lora"][1]) == 1.0 and float(table["cfg-full"][1]) == 1.0
    # the one-pass path holds [θ_ω; θ_ft] besides θ_pre: 1.5× the two-pass path's θ_pre + θ_ω
    assert abs(float(table["pg-full-1pass"][3]) / float(table["pg-full"][3]) - 1.5) < 0.03  # MiB printed to 0.1


METHODS = ("cfg-lora", "pg-lora", "naive-3pass", "cfg-full", "pg-full", "pg-full-1pass")


def _variant(setting) -> str:
    if setting.method != "pg":
        return setting.method
    if tuple(setting.interval) != (0.0, 1.0):
        return f"pg interval {setting.interval[0]:g}-{setting.interval[1]:g}"
    if setting.omega_schedule not in (None, "constant"):
        return f"pg {setting.omega_schedule}"
    return "pg constant"


def test_toy_dreambench_configs_expand_to_the_documented_grids():
    """The grid fixed in advance (benchmarks/toy_dreambench/config*.yaml and README.md): at the default
    strength every method at w ∈ {1.5, 3, 5, 7.5}, PG at ω ∈ {0, 0.25, 0.5, 0.75} constant, one schedule
    and the interval variant; the reduced grid at half and three times the steps; the base model alone."""
    from collections import Counter

    from steerguide.evaluate.benchmarks import load_benchmark
    from steerguide.sweep import describe_grid, expand, load_config

    folder = ROOT / "benchmarks" / "toy_dreambench"
    grids = {}
    for name in ("config.yaml", "config-half.yaml", "config-triple.yaml", "config-base.yaml"):
        config = load_config(folder / name)
        bench = load_benchmark(config.benchmark)
        rows = expand(config, bench)
        per_variant = Counter(_variant(s) for s in config.settings)
        scales = {v: sorted({s.scale for s in config.settings if _variant(s) == v}) for v in per_variant}
        assert len({tuple(v) for v in scales.values()}) == 1, (name, scales)  # every method, same scales
        omegas = {v: sorted({s.omega for s in config.settings if _variant(s) == v}) for v in per_variant}
        train = config.personalization.get("train")
        assert len(bench.subjects) == 10 and config.seeds == [0]
        grids[name] = {
            "settings": dict(per_variant),
            "scales": next(iter(scales.values())),
            "omegas": {v: o for v, o in omegas.items() if o != [None]},
            "steps_factor": None if train is None else train.get("steps_factor", 1),
            "described": describe_grid(config, bench),
        }
        assert len(rows) == int(grids[name]["described"].split()[0])
    reduced = {
        "settings": {"cfg": 3, "ag": 3, "pg constant": 6},
        "scales": [3.0, 5.0, 7.5],
        "omegas": {"ag": [0.0], "pg constant": [0.25, 0.75]},
        "described": "960 rows (12 settings × 1 seed × 8 prompts × 10 subjects)",
    }
    assert grids == {
        "config.yaml": {
            "settings": {"cfg": 4, "ag": 4, "pg constant": 16, "pg linear:1": 4, "pg interval 0-0.6": 4},
            "scales": [1.5, 3.0, 5.0, 7.5],
            "omegas": {
                "ag": [0.0],
                "pg constant": [0.0, 0.25, 0.5, 0.75],
                "pg linear:1": [0.0],
                "pg interval 0-0.6": [0.5],
            },
            "steps_factor": 1,
            "described": "5120 rows (32 settings × 1 seed × 16 prompts × 10 subjects)",
        },
        "config-half.yaml": {**reduced, "steps_factor": 0.5},
        "config-triple.yaml": {**reduced, "steps_factor": 3},
        "config-base.yaml": {
            "settings": {"cfg": 4},
            "scales": [1.5, 3.0, 5.0, 7.5],
            "omegas": {},
            "steps_factor": None,
            "described": "640 rows (4 settings × 1 seed × 16 prompts × 10 subjects)",
        },
    }
    # the strengths differ only in their training steps and the grid: the reduced grid's settings, subjects,
    # prompts and seeds are a subset of the default's (paired comparisons across strengths)
    default, half = load_config(folder / "config.yaml"), load_config(folder / "config-half.yaml")
    assert set(half.settings) < set(default.settings)
    recipe = {k: v for k, v in half.personalization["train"].items() if k != "steps_factor"}
    assert recipe == default.personalization["train"]
    prompts = {s.name: s.prompts for s in load_benchmark(default.benchmark).subjects}
    assert all(s.prompts == prompts[s.name][:8] for s in load_benchmark(half.benchmark).subjects)


def _script(name: str):
    """One of the toy DreamBench's scripts (benchmarks/toy_dreambench/NAME.py) as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        f"toy_{name}", ROOT / "benchmarks" / "toy_dreambench" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_script(capsys, name: str, *argv) -> tuple[int, str, str]:
    """`python benchmarks/NAME.py ARGV...` run in this process, its `__main__` block included (the
    one-line error handling lives there): (exit status, stdout, stderr). A fresh interpreter would only add
    the seconds of importing torch and diffusers again."""
    import runpy

    script = ROOT / "benchmarks" / f"{name}.py"
    capsys.readouterr()
    saved = sys.argv
    sys.argv = [str(script), *map(str, argv)]
    try:
        runpy.run_path(str(script), run_name="__main__")
        code = 0
    except SystemExit as stop:  # as the interpreter reads it: None is 0, a message goes to stderr as 1
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
        code = 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 1
    finally:
        sys.argv = saved
    out, err = capsys.readouterr()
    return code, out, err


def _synthetic_rows(interval_shift: float, pg_gain: float, spread: float = 0.0) -> list[dict]:
    """12 subjects; on every method the scale trades text for fidelity along one line; PG lies `pg_gain`
    above CFG and AG in fidelity; the interval variant is PG shifted by `interval_shift` in fidelity (plus
    a per-subject shift of standard deviation `spread`)."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows = []
    variants = [("cfg", None, None, [0.0, 1.0], 0.0), ("ag", 0.0, "constant", [0.0, 1.0], 0.0)]
    variants += [("pg", 0.5, "constant", [0.0, 1.0], pg_gain)]
    for j in range(12):
        noise, own = rng.normal(0, 0.01), rng.normal(0, spread)
        subject_variants = [*variants, ("pg", 0.5, "constant", [0.0, 0.6], pg_gain + interval_shift + own)]
        for method, omega, schedule, interval, gain in subject_variants:
            for w in (1.5, 3.0, 5.0, 7.5):
                f, t = 0.3 + 0.06 * w + gain + noise, 0.9 - 0.06 * w + noise
                rows.append(
                    {
                        "subject": f"s{j}",
                        "method": method,
                        "scale": w,
                        "omega": omega,
                        "omega_schedule": schedule,
                        "interval": interval,
                        "metrics": {"toy_fidelity": f, "toy_text": t},
                    }
                )
    return rows


def test_verdict_answers_the_interval_question_and_prints_half_widths():
    v = _script("verdict")
    same = v.analyse(v.Table(_synthetic_rows(interval_shift=0.0, pg_gain=0.05)), n_boot=50)
    assert same["interval"]["variant"] == "PG ω=0.5 [0,0.6]" and same["interval"]["against"] == "PG ω=0.5"
    assert same["interval"]["answer"] == "keeps its front"
    # the interval variant is not part of PG's front for the claims: (b) sees PG's gain of 0.05 only
    assert abs(same["b"]["pg_front"].value - 0.05) < 1e-9 and same["b"]["pg_front"].verdict == "holds"
    better = v.analyse(v.Table(_synthetic_rows(interval_shift=0.1, pg_gain=0.05)), n_boot=50)
    assert (
        abs(better["b"]["pg_front"].value - 0.05) < 1e-9 and better["interval"]["answer"] == "keeps its front"
    )
    assert abs(better["interval"]["b_interval_front_over_cfg"].value - 0.15) < 1e-9
    worse = v.analyse(v.Table(_synthetic_rows(interval_shift=-0.1, pg_gain=0.05)), n_boot=50)
    assert worse["interval"]["answer"] == "loses its front"
    assert abs(worse["interval"]["fidelity_at_matched_text"].value + 0.1) < 1e-9
    # a small mean loss with a wide spread over subjects: the CI, not the point estimate, decides
    unsure = v.analyse(v.Table(_synthetic_rows(interval_shift=-0.01, pg_gain=0.05, spread=0.12)), n_boot=100)
    gap = unsure["interval"]["fidelity_at_matched_text"]
    assert gap.value > -0.03 and gap.low < -0.03 and unsure["interval"]["answer"] == "inconclusive"
    text = v.render(same)
    assert "(b) PG improves fidelity over CFG at matched text alignment: **holds** (95% CI ±" in text
    assert "(interval) PG ω=0.5 [0,0.6] against PG ω=0.5 guided on every step: **keeps its front**" in text
    table = v.summary_table({"default": same, "half": worse})
    assert (
        "| default | 12 | holds " in table
        and "| holds +0.050 ±0.000 |" in table
        and "loses its front" in table
    )


def test_verdict_command_reads_one_folder_per_strength(capsys, tmp_path):
    import json

    for label, shift in (("default", 0.0), ("half", -0.1)):
        folder = tmp_path / label
        folder.mkdir()
        rows = [
            {**r, "key": f"k{i}"} for i, r in enumerate(_synthetic_rows(interval_shift=shift, pg_gain=0.05))
        ]
        (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, stdout, stderr = _run_script(
        capsys, "toy_dreambench/verdict", f"default={tmp_path / 'default'}", f"half={tmp_path / 'half'}",
        "--bootstrap", "50", "--breakdown", "", "--json", tmp_path / "verdict.json",
    )
    assert code == 0, stderr[-2000:]
    assert "## default (" in stdout and "## half (" in stdout
    assert "## Verdicts by personalization strength" in stdout
    summary = stdout.split("## Verdicts by personalization strength")[1]
    assert (
        "| default | 12 | holds" in summary
        and "keeps its front |" in summary
        and "loses its front |" in summary
    )
    saved = json.loads((tmp_path / "verdict.json").read_text())
    assert set(saved) == {"default", "half"} and saved["half"]["interval"]["answer"] == "loses its front"
    assert saved["default"]["b"]["pg_front"]["half_width"] >= 0


def test_verdict_compares_the_base_on_the_runs_own_prompts(tmp_path):
    """A reduced run (fewer prompts) is set against the base model on the same prompts and seeds only.
    Wrong: the base's every prompt (here its mean text would be 0.5 instead of 0.2)."""
    import json

    v = _script("verdict")

    def row(subject, prompt, text, i):
        return {"key": f"k{i}", "subject": subject, "prompt": prompt, "seed": 0, "method": "cfg",
                "scale": 5.0, "omega": None, "omega_schedule": None, "interval": [0.0, 1.0],
                "metrics": {"toy_fidelity": 0.1, "toy_text": text}}

    base = [row(s, p, t + 0.1 * k, 2 * k + i) for k, s in enumerate(("a", "b"))
            for i, (p, t) in enumerate((("p0", 0.15), ("p1", 0.75)))]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in base))
    main_rows = [{**row(s, "p0", 0.6, k), "metrics": {"toy_fidelity": 0.7, "toy_text": 0.6}}
                 for k, s in enumerate(("a", "b"))]
    table = v.Table(main_rows)
    samples = {v.sample_key(r) for r in main_rows}
    (entry,) = v.reference_summary(tmp_path, table, n_boot=20, samples=samples).values()
    assert abs(entry["base_text"][0] - 0.2) < 1e-9
    assert abs(entry["lora_minus_base_text"][0] - 0.4) < 1e-9


def test_verdict_pools_folders_joined_by_plus(tmp_path):
    """`DIR+DIR`: the same grid run on more subjects in a second folder counts all of them, and every
    image path points into its own folder. Wrong: reading only the first folder (6 subjects, not 12)."""
    import json

    v = _script("verdict")
    rows = [{**r, "key": f"k{i}", "image": f"images/{i}.png"} for i, r in enumerate(_synthetic_rows(0.0, 0.05))]
    for part, wanted in (("a", {f"s{j}" for j in range(6)}), ("b", {f"s{j}" for j in range(6, 12)})):
        (tmp_path / part).mkdir()
        mine = [r for r in rows if r["subject"] in wanted]
        (tmp_path / part / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mine))
    pooled = v.load_rows(f"{tmp_path / 'a'}+{tmp_path / 'b'}")
    assert sorted(r["key"] for r in pooled) == sorted(r["key"] for r in rows)
    assert all(r["image"] == str(tmp_path / ("a" if int(r["subject"][1:]) < 6 else "b") / "images" /
                                 f"{r['key'][1:]}.png") for r in pooled)
    assert len(v.analyse(v.Table(pooled), n_boot=20)["subjects"]) == 12
    import pytest

    with pytest.raises(SystemExit) as stop:  # a missing part is bad input: exit 2, not a partial pool
        v.load_rows(f"{tmp_path / 'a'}+{tmp_path / 'missing'}")
    assert stop.value.code == 2


def test_verdict_reads_a_larger_grid_as_its_first_prompts(capsys, tmp_path):
    """`--prompts N`: a run of 12 prompts read as the reduced grid of its first N (rows of later prompts
    dropped). Wrong: an off-by-one keeping prompt N."""
    import json

    v = _script("verdict")
    rows = [{**r, "key": f"k{i}", "prompt_index": i % 3} for i, r in enumerate(_synthetic_rows(0.0, 0.05))]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert sorted(r["key"] for r in v.load_rows(tmp_path, prompts=2)) == sorted(
        r["key"] for r in rows if r["prompt_index"] in (0, 1))
    assert len(v.load_rows(tmp_path)) == len(rows)
    code, _, err = _run_script(capsys, "toy_dreambench/verdict", tmp_path, "--prompts", "0")
    assert code == 2 and "--prompts must be at least 1, got 0" in err.strip().splitlines()[-1]


def test_drawn_subjects_are_new_reproducible_and_the_shipped_file_is_their_draw(capsys, tmp_path):
    """The extra subjects are drawn by the fixed rule: new names only (40 draws from 60 names force
    collisions with the built-ins to be redrawn), the same draw for the same seed, and
    subjects-extra.yaml is exactly the draw its header names (not edited by hand)."""
    from steerguide.toyworld.subjects import SUBJECTS, load_subjects, subjects_yaml

    d = _script("draw_subjects")
    many = d.draw_subjects(40, seed=1)
    names = [s.name for s in many]
    assert len(set(names)) == 40 and not set(names) & set(SUBJECTS)
    assert all(len(set(s.photos)) == 5 for s in many)
    shipped = ROOT / "benchmarks" / "toy_dreambench" / "subjects-extra.yaml"
    header, _, body = shipped.read_text().partition("\n")
    assert header.endswith("--n 10 --seed 2026") and body == subjects_yaml(d.draw_subjects(10, 2026))
    assert list(load_subjects(shipped)) == [s.name for s in d.draw_subjects(10, 2026)]
    code, _, err = _run_script(capsys, "toy_dreambench/draw_subjects", "--n", "0", "--out", tmp_path / "s.yaml")
    assert code == 2 and "--n must be at least 1, got 0" in err
    assert not (tmp_path / "s.yaml").exists()


def test_toy_dreambench_runner_refuses_bad_folders_and_files_in_one_line(capsys, tmp_path):
    """Bad input to run.py: one line naming it, exit 2, before any work (no output folder made)."""
    config = ROOT / "benchmarks" / "toy_dreambench" / "config.yaml"
    cases = (
        (["--continue-from", str(tmp_path / "nope")], "--continue-from " + str(tmp_path / "nope")),
        (["--subjects-file", str(tmp_path / "none.yaml")], "does not exist"),
    )
    for extra, said in cases:
        code, _, err = _run_script(capsys, "toy_dreambench/run", config, "--out", tmp_path / "out", *extra)
        assert code == 2 and said in err.strip().splitlines()[-1], err[-500:]
        assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_continue_check_refuses_bad_folders_in_one_line(capsys, tmp_path):
    """Bad input to check_continue.py: one line naming it, exit 2, before any training (no --out made);
    a --shorter folder without a finished training of the subject's recipe is bad input too."""
    config = ROOT / "benchmarks" / "toy_dreambench" / "config.yaml"
    (tmp_path / "empty" / "personalizations" / "kfp_star-0123.partial").mkdir(parents=True)
    (tmp_path / "fresh" / "personalizations" / "kfp_star-0123").mkdir(parents=True)
    (tmp_path / "fresh" / "personalizations" / "kfp_star-0123" / "pytorch_lora_weights.safetensors").touch()
    cases = (
        (tmp_path / "none.yaml", tmp_path / "empty", "kfp_star", "none.yaml: no such file"),
        (config, tmp_path / "nope", "kfp_star", "--shorter " + str(tmp_path / "nope")),
        (config, tmp_path / "empty", "kfp_star", "no finished shorter training of kfp_star"),
        (config, tmp_path / "empty", "nobody_star", "nobody_star"),
    )
    for cfg, shorter, subject, said in cases:
        if subject == "nobody_star":  # a fresh LoRA for the unknown name, so that the name check is reached
            (tmp_path / "fresh" / "personalizations" / "kfp_star-0123").rename(
                tmp_path / "fresh" / "personalizations" / "nobody_star-0123")
        code, _, err = _run_script(capsys, "toy_dreambench/check_continue", cfg, "--shorter", shorter,
                                   "--fresh", tmp_path / "fresh", "--subject", subject, "--out", tmp_path / "out")
        assert code == 2 and said in err.strip().splitlines()[-1], err[-500:]
        assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_gpu_run_smoke_writes_every_table(capsys, tmp_path):
    """`benchmarks/gpu/run.sh --smoke`: both phases on CPU at tiny sizes, in this process; OUT holds only
    the files that come back from a device run, and each table is there."""
    import gzip
    import json

    out = tmp_path / "out"
    code, stdout, stderr = _run_script(capsys, "gpu/run", out, "--smoke", "--work", tmp_path / "work")
    assert code == 0, (stdout + stderr)[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "cost.json", "log.txt", "results.jsonl.gz", "summary.md", "verdict.json"]
    summary = (out / "summary.md").read_text()
    assert f"benchmarks/gpu/run.sh {out} --smoke --work" in summary and "FAILED" not in summary
    methods = ["cfg-full", "pg-full-2pass", "pg-full-1pass", "cfg-lora", "pg-lora", "naive-3pass"]
    assert "| configuration | prompts (CFG rows) | " + " | ".join(methods) + " |" in summary
    for family in ("sd15", "sdxl"):
        for n in (1, 4):
            assert f"| {family}, tiny (smoke) | {n} ({2 * n}) | " in summary
    assert "| Flux transformer | — | slot kept for issue 25" in summary
    rows = json.loads((out / "cost.json").read_text())
    assert {(r["family"], r["prompts"], r["method"]) for r in rows} == {
        (f, n, m) for f in ("sd15", "sdxl") for n in (1, 4) for m in methods}
    assert all(r["ratio"] == 1.0 for r in rows if r["method"] in ("cfg-full", "cfg-lora"))
    assert "2 of the 2 drawn subjects complete (14 rows)" in summary
    for claim in ("(a) PG improves text", "(b) PG improves fidelity", "(c) PG's front", "(interval) PG ω=0.5 [0,0.6]"
                  " against PG ω=0.5 guided on every step"):
        assert claim in summary
    toy = [json.loads(line) for line in gzip.open(out / "results.jsonl.gz", "rt")]
    assert {r["omega"] for r in toy if r["method"] == "pg"} == {0.0, 0.5, 0.9}
    assert any(r["interval"] == [0.0, 0.6] for r in toy)
    assert set(json.loads((out / "verdict.json").read_text())) >= {"a", "b", "c", "interval"}
    assert "## What it took" in summary and "- cost: " in summary and "- toy: " in summary


def test_gpu_run_refuses_bad_input_in_one_line(capsys, tmp_path):
    """Bad input to run.py: one line, exit 2, before any work; run.sh without diffusers and without the
    wheels it would install: one line, exit 2."""
    import shutil
    import subprocess

    (tmp_path / "file").write_text("")
    cases = (
        ([tmp_path / "o", "--smoke", "--minutes", "0"], "--minutes must be positive, got 0.0"),
        ([tmp_path / "file", "--smoke"], "is a file, not a folder"),
        ([tmp_path / "o", "--smoke", "--phases", "cost,nope"], "--phases takes cost and toy"),
    )
    for argv, said in cases:
        code, _, err = _run_script(capsys, "gpu/run", *argv)
        assert code == 2 and said in err.strip().splitlines()[-1], err[-500:]
        assert not (tmp_path / "o").exists()
    import torch

    if not torch.cuda.is_available():
        code, _, err = _run_script(capsys, "gpu/run", tmp_path / "o")
        assert code == 2 and "no CUDA device here: run with --smoke" in err.strip().splitlines()[-1]
    script = tmp_path / "tree" / "benchmarks" / "gpu" / "run.sh"
    script.parent.mkdir(parents=True)
    shutil.copy(ROOT / "benchmarks" / "gpu" / "run.sh", script)
    done = subprocess.run(["bash", str(script), "--smoke"], env={"PATH": "/usr/bin:/bin", "PYTHON": "false"},
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"error: diffusers is not installed and {tmp_path / 'tree'}/.whl holds no wheels (run "
        "benchmarks/gpu/wheels.sh)"]


def test_gpu_cost_table_keeps_going_past_a_failing_method():
    """A method that fails on the device (out of memory, an op vmap cannot batch) is reported in its cell
    and not run again; the other methods keep their figures. Wrong: one failure losing the table."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_cost_t", ROOT / "benchmarks" / "gpu" / "cost.py")
    cost = importlib.util.module_from_spec(spec)
    sys.modules["gpu_cost_t"] = cost
    spec.loader.exec_module(cost)
    calls, lines, errors = [], [], {}

    def broken():
        calls.append(1)
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore")

    runs = {"pg-full-1pass": broken, "cfg-full": lambda: 0.25}
    for _ in range(2):
        assert cost._attempt(runs, errors, "pg-full-1pass", "sdxl ×4", lines.append) != 0.0
        assert cost._attempt(runs, errors, "cfg-full", "sdxl ×4", lines.append) == 0.25
    assert len(calls) == 1 and errors == {"pg-full-1pass": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"}
    assert lines == ["sdxl ×4 pg-full-1pass failed: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"]
    rows = [{"family": "sdxl", "prompts": 4, "method": m, "ms_per_step": 250.0, "ratio": 1.0,
             "error": errors.get(m)} for m in cost.METHODS]
    table = cost.render(rows, "header")
    assert "| failed: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB |" in table
    assert table.count("250.0 ms (1.000×)") == len(cost.METHODS) - 1
