"""The held-out study of `steerguide tune` on the toy DreamBench (issue 16).

    python benchmarks/tune_heldout/run.py [--bench runs/toy_dreambench/default] [--out runs/tune_heldout]
        [--budget 160] [--subjects a,b] [--deadline HH:MM]

Per subject: tune (target balanced) on prompts 0-7 at seed 0, with the benchmark's cached default LoRA;
then sample the chosen setting on prompts 8-15 (seed 0) and judge them. Against it: the best single
global setting of the benchmark's fixed grid (32 settings), chosen by the same objective on prompts 0-7
averaged over all subjects, read from the benchmark's results.jsonl on prompts 8-15 (same seed, same
images the sweep made). The objective on held-out prompts uses each subject's normalization from its
tuning coarse pass (fixed on prompts 0-7), the same for both. Prints the paired difference (tuned −
global) with 95% CIs over subjects, and the cost per subject. Reads the benchmark folder only; writes
under --out (resumable: a rerun reuses the probes and held-out scores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

TUNE, HELD = range(0, 8), range(8, 16)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default="runs/toy_dreambench/default")
    ap.add_argument("--config", default=str(Path(__file__).parents[1] / "toy_dreambench" / "config.yaml"))
    ap.add_argument("--out", default="runs/tune_heldout")
    ap.add_argument("--budget", type=int, default=160)
    ap.add_argument("--subjects")
    ap.add_argument("--deadline", help="HH:MM UTC: start no subject after it")
    args = ap.parse_args()

    import torch

    from steerguide.cli import _quiet_libraries
    from steerguide.evaluate.benchmarks import load_benchmark
    from steerguide.sweep import load_config, train_cache_key
    from steerguide.tune.objective import Target
    from steerguide.tune.problems import toy_problem
    from steerguide.tune.search import COARSE
    from steerguide.tune.tuner import default_sampler, tune

    torch.set_num_threads(1)
    _quiet_libraries()
    bench, out = Path(args.bench), Path(args.out)
    config = load_config(args.config)
    benchmark = load_benchmark(config.benchmark)
    names = args.subjects.split(",") if args.subjects else [s.name for s in benchmark.subjects]
    target = Target.parse("balanced")
    per_subject = {}
    for name in names:
        subject = benchmark.subject(name)
        folder = out / name
        done = folder / "heldout.json"
        if done.is_file():
            per_subject[name] = json.loads(done.read_text())
            continue
        if args.deadline and time.strftime("%H:%M", time.gmtime()) >= args.deadline:
            print(f"past {args.deadline} UTC: {name} not started", flush=True)
            continue
        lora = bench / "personalizations" / f"{name}-{train_cache_key(config, subject)[:12]}"
        if not (lora / "train.json").is_file():
            raise SystemExit(f"no cached LoRA for {name} at {lora}")
        problem, _ = toy_problem(name, folder, personalization=str(lora), prompts=subject.prompts[:8],
                                 num_prompts=None, seeds=1, steps=config.sampling["steps"])
        t0 = time.perf_counter()
        result = tune(problem, folder, target, args.budget)
        tune_seconds = time.perf_counter() - t0
        coarse = [result.probes[k].judged for k in COARSE]
        norm = {a: (min(getattr(p, a) for p in coarse), max(getattr(p, a) for p in coarse) - min(getattr(p, a) for p in coarse))
                for a in ("fidelity", "text")}
        # the chosen setting on the held-out prompts, sampled and judged as the sweep does
        t0 = time.perf_counter()
        session = default_sampler(problem).open(problem.base, problem.personalization, subject)
        prompts = [subject.prompts[i] for i in HELD]
        images = session.generate(result.chosen.setting, prompts, 0)
        refs = subject.fidelity_references()
        fid = problem.fidelity_metric.score(images, prompts, problem.fidelity_metric.prepare(refs))
        txt = problem.text_metric.score(images, prompts, None)
        record = {
            "chosen": result.chosen.label,
            "knob": result.chosen.to_json(),
            "probes": len(result.probes),
            "tune_seconds": tune_seconds,
            "probe_seconds": result.sample_seconds,
            "heldout_seconds": time.perf_counter() - t0,
            "norm": norm,
            "heldout": {"fidelity": fid, "text": txt},
        }
        done.write_text(json.dumps(record, indent=2))
        per_subject[name] = record
        print(f"{time.strftime('%H:%M:%S')} {name}: {result.chosen.label}, {len(result.probes)} probes, "
              f"{tune_seconds:.0f} s tuning", flush=True)
    report(bench, per_subject)


def objective(norm: dict, f: float, t: float) -> float:
    return (f - norm["fidelity"][0]) / (norm["fidelity"][1] or 1) + (t - norm["text"][0]) / (norm["text"][1] or 1)


def report(bench: Path, per_subject: dict) -> None:
    rows = [json.loads(line) for line in (bench / "results.jsonl").read_text().splitlines() if line.strip()]
    table: dict[tuple[str, str], dict[int, tuple[float, float]]] = {}
    for r in rows:
        table.setdefault((r["label"], r["subject"]), {})[r["prompt_index"]] = (
            r["metrics"]["toy_fidelity"], r["metrics"]["toy_text"])
    subjects = sorted(per_subject)
    if not subjects:
        print("no subject done")
        return
    labels = sorted({label for label, _ in table})

    def mean_obj(label: str, subject: str, prompts) -> float:
        vals = [table[(label, subject)][i] for i in prompts]
        f, t = np.mean([v[0] for v in vals]), np.mean([v[1] for v in vals])
        return objective(per_subject[subject]["norm"], f, t)

    # the best single global setting: the objective on the tuning prompts, averaged over the subjects
    # (every subject of the benchmark with a tuning run, i.e. those here)
    best = max(labels, key=lambda lab: np.mean([mean_obj(lab, s, TUNE) for s in subjects]))
    diffs, tuned_vals, global_vals = [], [], []
    print(f"global best grid setting (objective on prompts 0-7 over {len(subjects)} subjects): {best}")
    print(f"{'subject':14s} {'tuned setting':28s} probes  tune s  tuned  global  diff")
    for s in subjects:
        rec = per_subject[s]
        tuned = objective(rec["norm"], np.mean(rec["heldout"]["fidelity"]), np.mean(rec["heldout"]["text"]))
        glob = mean_obj(best, s, HELD)
        diffs.append(tuned - glob)
        tuned_vals.append(tuned)
        global_vals.append(glob)
        print(f"{s:14s} {rec['chosen']:28s} {rec['probes']:6d} {rec['tune_seconds']:7.0f} {tuned:6.2f} {glob:7.2f} {tuned - glob:+.2f}")
    d = np.array(diffs)
    rng = np.random.default_rng(0)
    boot = [rng.choice(d, d.size).mean() for _ in range(10000)]
    lo, hi = np.quantile(boot, [0.025, 0.975])
    print(f"tuned − global on held-out prompts 8-15 (balanced objective, {d.size} subjects): mean {d.mean():+.3f}, "
          f"95% bootstrap CI over subjects [{lo:+.3f}, {hi:+.3f}]; tuned better on {(d > 0).sum()} of {d.size}")
    secs = [per_subject[s]["tune_seconds"] for s in subjects]
    probes = [per_subject[s]["probes"] for s in subjects]
    print(f"cost per subject: {np.mean(probes):.0f} probes ({np.mean(probes) * 8:.0f} images), "
          f"{np.mean(secs):.0f} s tuning (min {min(secs):.0f}, max {max(secs):.0f}), LoRA reused")


if __name__ == "__main__":
    main()
