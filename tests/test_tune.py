"""`steerguide tune`: the search on a fake problem whose front is known, the objectives, the preset round
trip, `generate --preset`, resume after a kill, and every bad input (one line, exit 2)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from steerguide.cli import run
from steerguide.errors import UserError
from steerguide.evaluate.benchmarks import BenchSubject
from steerguide.testing.tuning import FrontParams, FrontSampler, PixelFidelity, PixelText
from steerguide.tune.objective import Target
from steerguide.tune.preset import Preset, read_preset, write_preset
from steerguide.tune.search import COARSE, LINEAR, Judged, Knob, neighbours, pareto_front, propose
from steerguide.tune.tuner import Problem, check_budget, tune

DENSE = [
    Knob(w, o, s)
    for w, o, s in itertools.product(np.geomspace(1.0, 10.0, 60), np.linspace(0, 1, 41), ("constant", LINEAR))
]


def fake_problem(prompts: int = 4, seeds: int = 1) -> Problem:
    subject = BenchSubject("fake", "thing", "sks", [], load_references=lambda: [])
    return Problem("fake-base", None, subject, [f"p{i}" for i in range(prompts)], list(range(seeds)),
                   PixelFidelity(), PixelText())


def true_best(params: FrontParams, target: Target) -> tuple[float, float]:
    """The true optimum's objective over a dense grid, and the scale of the objective (its spread there)."""
    cfg = [Judged(k, *params.true_scores(k)) for k in COARSE]
    rank = target.ranker(cfg)
    values = [rank(Judged(k, *params.true_scores(k))) for k in DENSE]
    feasible = [v[1] for v in values if v[0] == 1]
    return max(feasible), max(feasible) - min(feasible)


def true_value(params: FrontParams, target: Target, knob: Knob) -> tuple[int, float]:
    cfg = [Judged(k, *params.true_scores(k)) for k in COARSE]
    return target.ranker(cfg)(Judged(knob, *params.true_scores(knob)))


# ------------------------------------------------------------------------------------------- the search


@pytest.mark.parametrize(
    "params, target, within",
    [
        (FrontParams(), Target.parse("balanced"), 0.03),
        (FrontParams(push=0.15, s=6.0, pen=0.002), Target.parse("balanced"), 0.03),
        (FrontParams(), Target.parse("fidelity", min_text="0.62"), 0.05),
        (FrontParams(push=0.35, s=2.5, pen=0.008), Target.parse("fidelity", min_text="90%"), 0.03),
    ],
)
def test_search_finds_the_known_optimum_within_budget(tmp_path, params, target, within):
    """32 probes (the coarse 14 and 18 refinements) land within `within` of the objective's range over the
    whole box of the true optimum (found on a dense 60 × 41 × 2 grid), and no worse than a plain grid of
    the same 32 probes."""
    from steerguide.tune.search import grid_knobs

    result = tune(fake_problem(), tmp_path / "t", target, 32 * 4, sampler=FrontSampler(params))
    best, spread = true_best(params, target)
    feasible, value = true_value(params, target, result.chosen)
    assert feasible == 1
    assert best - value <= within * spread, (result.chosen, best, value, spread)
    grid = target.choose([Judged(k, *params.true_scores(k)) for k in grid_knobs(32)]).knob
    assert value >= true_value(params, target, grid)[1] - 1e-9
    assert len(result.probes) <= 32 and all(k in result.probes for k in COARSE)


def test_refinement_spends_its_probes_near_the_optimum(tmp_path):
    params = FrontParams()
    target = Target.parse("balanced")
    result = tune(fake_problem(), tmp_path / "t", target, 32 * 4, sampler=FrontSampler(params))
    refined = [k for k in result.probes if k not in COARSE]
    assert len(refined) == 32 - len(COARSE)
    # each schedule is refined around its own best: most refinement probes lie within one coarse step
    # (w within ×2, ω within 0.5) of the true optimum of their schedule
    optimum = {s: max((k for k in DENSE if k.schedule == s), key=lambda k: true_value(params, target, k))
               for s in ("constant", LINEAR)}
    near = [k for k in refined if abs(np.log2(k.scale / optimum[k.schedule].scale)) <= 1
            and abs(k.omega - optimum[k.schedule].omega) <= 0.5]
    assert len(near) >= 0.75 * len(refined), (optimum, refined)


def test_pareto_front_and_neighbours():
    pts = [Judged(Knob(2, 0), 0.5, 0.5), Judged(Knob(3, 0), 0.6, 0.4), Judged(Knob(4, 0), 0.4, 0.4),
           Judged(Knob(5, 0), 0.6, 0.5)]
    assert [p.knob.scale for p in pareto_front(pts)] == [5.0]
    pts.append(Judged(Knob(6, 0), 0.3, 0.9))
    assert [p.knob.scale for p in pareto_front(pts)] == [6.0, 5.0]
    n1 = neighbours(Knob(4.0, 0.5), 1)
    r = 2**0.5
    assert sorted(n1) == sorted([Knob(4 * r, 0.5), Knob(4 / r, 0.5), Knob(4.0, 0.25), Knob(4.0, 0.75),
                                 Knob(4 * r, 0.25), Knob(4 / r, 0.75), Knob(4 * r, 0.75), Knob(4 / r, 0.25)])
    assert Knob(10.0, 0.0) not in neighbours(Knob(10.0, 0.0), 2)  # clipped to the box, never itself
    assert all(1.0 <= k.scale <= 10.0 and 0 <= k.omega <= 1 for k in neighbours(Knob(10.0, 0.0), 2))


def test_propose_starts_with_the_coarse_pass_and_is_a_function_of_the_judged_set():
    assert propose({}, lambda j: (0,)) == list(COARSE)
    params = FrontParams()
    judged = {k: Judged(k, *params.true_scores(k)) for k in COARSE}
    rank = Target.parse("balanced").ranker(list(judged.values()))
    first = propose(judged, rank)
    assert first == propose(dict(reversed(list(judged.items()))), rank)  # order of the probes: no matter
    allowed = set()
    for schedule in ("constant", LINEAR):
        family = [j for j in judged.values() if j.knob.schedule == schedule or j.knob.is_cfg]
        allowed |= set(neighbours(max(pareto_front(family), key=rank).knob, 1))
    assert first and set(first) <= allowed


# ------------------------------------------------------------------------------------------- objectives


def _pts():
    # CFG: fidelity spread 0.2, text spread 0.4 -> balanced = F/0.2 + T/0.4
    return [
        Judged(Knob(1.5, 1.0), 0.40, 0.40),
        Judged(Knob(7.5, 1.0), 0.60, 0.80),
        Judged(Knob(3.0, 0.0), 0.80, 0.50),  # 4 + 1.25 = 5.25
        Judged(Knob(5.0, 0.5), 0.70, 0.70),  # 3.5 + 1.75 = 5.25 + tie broken by knob
        Judged(Knob(5.0, 0.25), 0.72, 0.69),  # 3.6 + 1.725 = 5.325  <- balanced
        Judged(Knob(7.5, 0.0), 0.90, 0.30),  # 4.5 + 0.75 = 5.25
    ]


def test_objective_choices():
    pts = _pts()
    assert Target.parse("balanced").choose(pts).knob == Knob(5.0, 0.25)
    assert Target.parse("fidelity", min_text="0.6").choose(pts).knob == Knob(5.0, 0.25)
    assert Target.parse("fidelity", min_text="0.45").choose(pts).knob == Knob(3.0, 0.0)
    assert Target.parse("fidelity", min_text="0").choose(pts).knob == Knob(7.5, 0.0)
    # 75% of CFG's best text (0.8) = 0.6
    assert Target.parse("fidelity", min_text="75%").threshold(pts) == pytest.approx(0.6)
    assert Target.parse("fidelity", min_text="75%").choose(pts).knob == Knob(5.0, 0.25)
    assert Target.parse("text", min_fidelity="0.7").choose(pts).knob == Knob(5.0, 0.5)
    assert Target.parse("text", min_fidelity="0.75").choose(pts).knob == Knob(3.0, 0.0)
    assert Target.parse("text", min_fidelity="100%").choose(pts).knob == Knob(7.5, 1.0)  # fidelity ≥ 0.6
    with pytest.raises(UserError, match=r"best reachable is text 0.8 \(cfg w=7.5"):
        Target.parse("fidelity", min_text="0.9").choose(pts)
    with pytest.raises(UserError, match=r"best reachable is fidelity 0.9 \(pg w=7.5 ω=0"):
        Target.parse("text", min_fidelity="0.95").choose(pts)


@pytest.mark.parametrize(
    "args, message",
    [
        (("best",), "--target must be one of"),
        (("fidelity",), "--target fidelity needs --min-text"),
        (("text",), "--target text needs --min-fidelity"),
        (("balanced", "0.5"), "takes no --min-text"),
        (("fidelity", None, "0.5"), "takes --min-text, not --min-fidelity"),
        (("fidelity", "abc"), "--min-text must be a score"),
        (("fidelity", "nan"), "finite"),
        (("fidelity", "-5%"), "percentage must be above 0"),
    ],
)
def test_bad_targets(args, message):
    with pytest.raises(UserError, match=message):
        Target.parse(*args)


# ------------------------------------------------------------------------------------------- preset


def test_preset_round_trip(tmp_path):
    preset = Preset("pg", 4.24, 0.25, LINEAR, base="toy", personalization="/x/lora",
                    extra={"scores": {"toy_text": {"mean": 0.7, "ci95": [0.6, 0.8]}}, "probes": 32})
    path = write_preset(tmp_path / "preset.yaml", preset)
    back = read_preset(path)
    assert back == preset
    assert read_preset(tmp_path) == preset  # the tuning folder names its preset
    cfg = back.guidance_config()
    assert (cfg.method, cfg.scale, cfg.omega, cfg.omega_schedule) == ("pg", 4.24, 0.25, LINEAR)
    assert back.guidance_config(scale=3.0).scale == 3.0
    cfg_preset = Preset("cfg", 5.0)
    assert read_preset(write_preset(tmp_path / "c.yaml", cfg_preset)).guidance_config().method == "cfg"


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: [", "is not valid YAML"),
        ("kind: other\n", "is not a steerguide preset"),
        ("kind: steerguide-preset\nversion: 9\n", "version 9 is not supported"),
        ("kind: steerguide-preset\nversion: 1\nguidance: {method: pg}\n", "guidance.scale: missing"),
        ("kind: steerguide-preset\nversion: 1\nguidance: {method: pg, scale: 3, omga: 1}\n", "guidance.omga: unknown"),
        ("kind: steerguide-preset\nversion: 1\nguidance: {method: pg, scale: 3, omega: 2}\n", "outside \\[0, 1\\]"),
        ("kind: steerguide-preset\nversion: 1\nguidance: {method: xg, scale: 3}\n", "unknown method"),
    ],
)
def test_bad_presets(tmp_path, text, message):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        read_preset(path)
    with pytest.raises(UserError, match="cannot read"):
        read_preset(tmp_path / "missing.yaml")


def test_generate_with_a_preset(tiny_model_dir, tmp_path, capsys):
    from steerguide.loading import load_pipeline
    from steerguide.testing import save_random_lora

    base = tiny_model_dir("sd15")
    lora = save_random_lora(load_pipeline(base), tmp_path / "lora")
    write_preset(tmp_path / "t" / "preset.yaml", Preset("pg", 4.5, 0.3, LINEAR, base=str(base),
                                                         personalization=str(lora)))
    common = ["generate", "--prompt", "a dog", "--steps", "2", "--height", "32", "--width", "32"]
    assert run([*common, "--preset", str(tmp_path / "t" / "preset.yaml"), "--out", str(tmp_path / "a")]) == 0
    record = json.loads((tmp_path / "a" / "run.json").read_text())
    text = json.dumps(record)
    assert str(lora) in text and str(base) in text
    guidance = record["guidance"]
    assert (guidance["method"], guidance["scale"], guidance["omega_schedule"]) == ("pg", 4.5, LINEAR)
    assert guidance["omega"] == 0.3
    assert run([*common, "--preset", str(tmp_path / "t"), "--scale", "2", "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "run.json").read_text())["guidance"]["scale"] == 2.0
    capsys.readouterr()
    assert run([*common, "--preset", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--preset" in err[0] and not (tmp_path / "c").exists()


# ------------------------------------------------------------------------------------------- the run


def test_outputs_and_rerun_spends_nothing(tmp_path):
    sampler = FrontSampler(FrontParams(noise=0.03, prompt_noise=0.03))
    out = tmp_path / "t"
    first = tune(fake_problem(), out, Target.parse("balanced"), 20 * 4, sampler=sampler)
    assert (out / "preset.yaml").is_file() and (out / "probes.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (out / "probes.jsonl").read_text().splitlines()]
    assert len(rows) == 20 == first.new_probes and len({r["key"] for r in rows}) == 20
    preset = read_preset(out / "preset.yaml")
    assert (preset.scale, preset.omega) == (first.chosen.scale, None if first.chosen.is_cfg else first.chosen.omega)
    lo, hi = preset.extra["scores"]["fake_fidelity"]["ci95"]
    assert lo < preset.extra["scores"]["fake_fidelity"]["mean"] < hi  # a real interval: the images differ
    calls = sampler.calls
    again = tune(fake_problem(), out, Target.parse("balanced"), 20 * 4, sampler=sampler)
    assert sampler.calls == calls and again.new_probes == 0 and again.chosen == first.chosen
    more = tune(fake_problem(), out, Target.parse("balanced"), 24 * 4, sampler=sampler)
    assert more.new_probes == 4 and len((out / "probes.jsonl").read_text().splitlines()) == 24
    # another problem (other prompts) in the same folder does not reuse these probes
    other = tune(fake_problem(prompts=3), out, Target.parse("balanced"), 14 * 3, sampler=sampler)
    assert other.new_probes == 14


_KILL_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_tune import fake_problem
from steerguide.testing.tuning import FrontParams, FrontSampler
from steerguide.tune.objective import Target
from steerguide.tune.tuner import tune
tune(fake_problem(), Path(sys.argv[1]), Target.parse("balanced"), 24 * 4,
     sampler=FrontSampler(FrontParams(noise=0.03, prompt_noise=0.03), delay=0.15))
"""


def test_resume_after_kill_continues_without_duplicates(tmp_path):
    script = tmp_path / "run_tune.py"
    script.write_text(_KILL_SCRIPT.format(tests=str(Path(__file__).parent)))
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(script), str(out)], env=env, start_new_session=True)
    probes = out / "probes.jsonl"
    deadline = time.time() + 600  # generous: on a loaded machine the child's imports alone take a minute
    while time.time() < deadline and (not probes.exists() or len(probes.read_text().splitlines()) < 5):
        assert proc.poll() is None, f"the tuning process ended early (status {proc.returncode})"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = len(probes.read_text().splitlines())
    assert 5 <= kept < 24 and not (out / "preset.yaml").exists()
    sampler = FrontSampler(FrontParams(noise=0.03, prompt_noise=0.03))
    resumed = tune(fake_problem(), out, Target.parse("balanced"), 24 * 4, sampler=sampler)
    rows = [json.loads(line) for line in probes.read_text().splitlines()]
    assert resumed.new_probes == 24 - kept and len(rows) == 24 and len({r["key"] for r in rows}) == 24
    fresh = tune(fake_problem(), tmp_path / "fresh", Target.parse("balanced"), 24 * 4,
                 sampler=FrontSampler(FrontParams(noise=0.03, prompt_noise=0.03)))
    assert set(resumed.probes) == set(fresh.probes) and resumed.chosen == fresh.chosen


# ------------------------------------------------------------------------------------------- bad input


def test_budget_too_small_says_what_is_needed():
    assert check_budget(14 * 8, 8) == 14
    with pytest.raises(UserError, match=r"--budget 100 is too small.*14 probes × 8 images .* = 112 images"):
        check_budget(100, 8)


@pytest.fixture
def fake_cli(monkeypatch):
    """`steerguide tune --toy fake ...` on the fake problem: no model, no training."""
    import steerguide.tune.problems as problems
    import steerguide.tune.tuner as tuner

    def toy_problem(subject, out, *, num_prompts=8, seeds=1, **_):
        problem = fake_problem(prompts=num_prompts, seeds=seeds)
        problem.personalization = "fake-lora"
        return problem, {}

    monkeypatch.setattr(problems, "toy_problem", toy_problem)
    monkeypatch.setattr(tuner, "default_sampler", lambda problem: FrontSampler(FrontParams()))


def _one_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("steerguide: error")]
    assert len(err) == 1, err
    return err[0]


def test_cli_fake_run_and_unreachable_target(fake_cli, tmp_path, capsys):
    out = tmp_path / "t"
    assert run(["tune", "--toy", "fake", "--out", str(out), "--num-prompts", "2", "--budget", "40",
                "--no-progress"]) == 0
    assert {p.name for p in out.iterdir()} >= {"preset.yaml", "probes.png", "probes.jsonl"}
    capsys.readouterr()
    code = run(["tune", "--toy", "fake", "--out", str(out), "--num-prompts", "2", "--budget", "40",
                "--target", "fidelity", "--min-text", "0.99", "--no-progress"])
    line = _one_line(capsys)
    assert code == 2 and "target unreachable" in line and "the best reachable is text 0." in line


@pytest.mark.parametrize(
    "args, message",
    [
        (["--personalization", "{tmp}/none", "--base", "b", "--references", "{tmp}", "--prompts-file", "{tmp}/p.txt"],
         "--personalization {tmp}/none: no such file or folder"),
        (["--personalization", "{tmp}", "--base", "b", "--references", "{tmp}/refs", "--prompts-file", "{tmp}/p.txt"],
         "--references {tmp}/refs: no such folder"),
        (["--personalization", "{tmp}", "--base", "b", "--references", "{tmp}/empty", "--prompts-file", "{tmp}/p.txt"],
         "holds no images"),
        (["--personalization", "{tmp}", "--base", "b", "--references", "{tmp}"], "--prompts-file (missing)"),
        (["--personalization", "{tmp}", "--base", "b", "--prompts-file", "{tmp}/p.txt"], "--references (missing)"),
        (["--personalization", "{tmp}", "--base", "b", "--references", "{tmp}", "--prompts-file", "{tmp}/nope.txt"],
         "--prompts-file {tmp}/nope.txt: no such file"),
        (["--personalization", "{tmp}", "--base", "b", "--references", "{tmp}", "--prompts-file", "{tmp}/blank.txt"],
         "prompts file {tmp}/blank.txt holds no prompt"),
        (["--toy", "no_such_subject"], "has no subject 'no_such_subject'"),
        (["--toy", "sks_star", "--budget", "50"], "--budget 50 is too small to test anything"),
        (["--toy", "sks_star", "--budget", "0"], "--budget 0 is too small"),
        (["--toy", "sks_star", "--seeds", "0"], "--seeds must be a count from 1 to 10000, got 0"),
        (["--toy", "sks_star", "--num-prompts", "0"], "--num-prompts must be at least 1"),
        (["--toy", "sks_star", "--steps", "0"], "--steps must be from 1 to 1000"),
        (["--toy", "sks_star", "--target", "fidelity"], "--target fidelity needs --min-text"),
        (["--toy", "sks_star", "--references", "{tmp}"], "--toy takes no --references"),
        (["--toy", "sks_star", "--personalization", "{tmp}/none"], "no such file or folder"),
        (["--toy", "sks_star", "--out", "{tmp}/p.txt"], "is an existing file"),
        (["--toy", "sks_star", "--out", "{tmp}"], "non-empty folder without probes.jsonl"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "p.txt").write_text("a sks dog\n")
    (tmp_path / "blank.txt").write_text("\n# nothing\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "photo.png").write_bytes(b"")  # a reference by its name; never opened before the checks fail
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "new-out")]
    assert run(["tune", *args, *out, "--no-progress"]) == 2
    line = _one_line(capsys)
    assert line.startswith("steerguide: error: ") and message.replace("{tmp}", str(tmp_path)) in line
    assert not (tmp_path / "new-out").exists()  # nothing left behind


# ------------------------------------------------------------------------------------------- real models


def test_real_models_end_to_end_and_resume(tiny_model_dir, tmp_path, capsys):
    """`tune --personalization --base --references --prompts-file --model` on tiny random models saved to disk:
    a tiny SD 1.5 pipeline with a random LoRA, a tiny ViT as DINO and a tiny CLIP as CLIP-T, by their folders."""
    from PIL import Image

    from steerguide.loading import load_pipeline
    from steerguide.testing import save_random_lora
    from steerguide.testing.metric_models import save_tiny_clip, save_tiny_vit
    from steerguide.tune.search import COARSE

    base = tiny_model_dir("sd15")
    lora = save_random_lora(load_pipeline(base), tmp_path / "lora", std=0.1)
    refs = tmp_path / "refs"
    refs.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (200, 60 * i, 30)).save(refs / f"photo{i}.png")
    (tmp_path / "prompts.txt").write_text("a photo of sks dog\n")
    out = tmp_path / "tuned"
    args = ["tune", "--personalization", str(lora), "--base", str(base), "--references", str(refs),
            "--prompts-file", str(tmp_path / "prompts.txt"), "--out", str(out),
            "--model", f"dino={save_tiny_vit(tmp_path / 'vit')}",
            "--model", f"clip_t={save_tiny_clip(tmp_path / 'clip')}",
            "--budget", str(len(COARSE)), "--steps", "2", "--height", "32", "--width", "32", "--no-progress"]  # fmt: skip
    assert run(args) == 0, capsys.readouterr().err
    assert {"preset.yaml", "probes.jsonl", "probes.png"} <= {p.name for p in out.iterdir()}
    rows = [json.loads(line) for line in (out / "probes.jsonl").read_text().splitlines()]
    assert len(rows) == len(COARSE)  # the smallest budget: the coarse pass, one image a probe
    preset = read_preset(out / "preset.yaml")
    assert (preset.base, preset.personalization) == (str(base), str(lora))
    assert {"dino", "clip_t", "objective"} <= set(preset.extra["scores"])
    assert preset.extra["tuned_on"]["steps"] == 2 and preset.extra["images"] == len(COARSE)
    # the judges saw different images: the probes' scores are not all the same
    assert len({r["fidelity"][0] for r in rows}) > 1 and len({r["text"][0] for r in rows}) > 1
    capsys.readouterr()
    before = (out / "probes.jsonl").read_text()
    assert run(args) == 0  # a rerun resumes: nothing new to probe
    assert (out / "probes.jsonl").read_text() == before
    assert "0 new" in capsys.readouterr().err
    assert read_preset(out / "preset.yaml") == preset


def test_a_toy_preset_names_the_toy_base_portably(tmp_path):
    """A preset tuned on the toy world says `base: toy`, not the folder of the install that wrote it
    (another install of steerguide could not read that path); any other base keeps its name."""
    from steerguide.sweep.cache import resolve_base
    from steerguide.tune.tuner import _portable_base

    assert _portable_base(resolve_base("toy")) == "toy"
    assert _portable_base(Path(resolve_base("toy"))) == "toy"
    assert _portable_base(str(tmp_path / "my-base")) == str(tmp_path / "my-base")
    assert _portable_base("runwayml/stable-diffusion-v1-5") == "runwayml/stable-diffusion-v1-5"
