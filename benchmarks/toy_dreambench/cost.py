"""Measure what the toy DreamBench costs per image and per training step, and estimate a whole run.

    python benchmarks/toy_dreambench/cost.py --out runs/cost [--train-steps 40] [--seeds 1] [--workers 2]
        [--configs benchmarks/toy_dreambench/config*.yaml]

One single-threaded process (as each of run.py's workers is): trains a toy LoRA of one subject with the
default recipe for N and 3N steps (seconds per step, and per training), then samples batches of that
subject's prompts per cost class (the base model alone; CFG, AG, PG, PG on an interval with the LoRA)
through the sweep, timing sampling and judging separately; the first batch of each is not timed (it
includes loading). Then, for each config, the rows per
method × the measured seconds per image, plus its trainings × steps × seconds per step, divided over the
workers (whole subjects per worker, as run.py shares them).

On a busy machine a process gets only part of a core: every figure is the measured wall time times the
share of a core the process got while it was measured (its CPU time over its wall time), i.e. the wall
time it would take on a core of its own, as each of two workers has on an idle 2-core machine. The load
average and the shares are printed beside them.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).parent
PROBES = {  # one setting per cost class: rows through the denoiser per step differ
    "base": {"cfg": {"scale": 5.0}},  # the base model alone: no LoRA in the forward passes
    "cfg": {"cfg": {"scale": 5.0}},
    "ag": {"ag": {"scale": 5.0, "omega": [0.0]}},
    "pg": {"pg": {"scale": 5.0, "omega": [0.5]}},
    "pg-interval": {"pg": {"scale": 5.0, "omega": [0.5], "interval": [0.0, 0.6]}},
}


def cost_class(row) -> str:
    if row.personalization == "none":
        return "base"
    if row.setting.method == "pg" and tuple(row.setting.interval) != (0.0, 1.0):
        return "pg-interval"
    return row.setting.method


def measure(out: Path, subject: str, train_steps: int, seeds: int) -> dict:
    import torch

    from steerguide.sweep import parse_config, run_sweep
    from steerguide.toyworld.recipes import toy_config
    from steerguide.train import train

    torch.set_num_threads(1)

    def timed_training(steps: int) -> tuple[Path, float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        config = toy_config(subject, "lora", out=out / f"lora-{steps}", steps=steps, validation_images=0)
        folder = train(replace(config, overwrite=True), progress=False)
        return folder, time.process_time() - c0, time.perf_counter() - t0

    # Two trainings, N and 3N steps: the slope is the cost of a step, the rest a training's fixed cost
    # (loading, rendering the photos, saving).
    _, cpu_short, wall_short = timed_training(train_steps)
    folder, cpu_long, wall_long = timed_training(3 * train_steps)
    train_step = (cpu_long - cpu_short) / (2 * train_steps)
    train_fixed = max(0.0, cpu_short - train_steps * train_step)
    train_share = (cpu_short + cpu_long) / (wall_short + wall_long)
    per_image: dict[str, dict[str, float]] = {}
    for name, guidance in PROBES.items():
        personalization = {} if name == "base" else {"paths": {"*": str(folder)}}
        config = parse_config(
            {
                "base": "toy",
                "benchmark": {"name": "toy", "subjects": [subject]},
                "personalization": personalization,
                "guidance": guidance,
                "seeds": list(range(seeds + 1)),
                "sampling": {"steps": 20, "batch_size": 64},
                "metrics": ["toy_fidelity", "toy_text"],
            }
        )
        first = replace(config, seeds=[0])  # loads the pipeline and judges; not counted
        run_sweep(first, out / name)
        t0, c0 = time.perf_counter(), time.process_time()
        stats = run_sweep(config, out / name)
        share = (time.process_time() - c0) / (time.perf_counter() - t0)  # of a core this process got
        per_image[name] = {
            "sample": stats.sample_seconds * share / stats.images,
            "judge": stats.metric_seconds * share / stats.images,
            "images": stats.images,
            "share": share,
        }
    return {
        "train_step": train_step,
        "train_fixed": train_fixed,
        "train_share": train_share,
        "per_image": per_image,
        "load": os.getloadavg(),
    }


def estimate(config_path: str, cost: dict, workers: int) -> dict:
    from steerguide.evaluate.benchmarks import load_benchmark
    from steerguide.sweep import expand, load_config
    from steerguide.toyworld.recipes import TOY_DEFAULTS

    config = load_config(config_path)
    rows = expand(config, load_benchmark(config.benchmark))
    per_subject: dict[str, float] = {}
    counts: dict[str, int] = {}
    for r in rows:
        c = cost["per_image"][cost_class(r)]
        per_subject[r.subject] = per_subject.get(r.subject, 0.0) + c["sample"] + c["judge"]
        counts[cost_class(r)] = counts.get(cost_class(r), 0) + 1
    train = config.personalization.get("train")
    train_steps = 0
    if train is not None:
        steps = train.get("steps") or TOY_DEFAULTS[train.get("method", "lora")]["steps"]
        train_steps = round(steps * train.get("steps_factor", 1))
        for name in per_subject:
            per_subject[name] += cost["train_fixed"] + train_steps * cost["train_step"]
    loads = sorted(per_subject.values(), reverse=True)
    shares = [sum(loads[k::workers]) for k in range(workers)]  # run.py: subjects k, k + N, ...
    return {
        "rows": len(rows),
        "rows_per_class": counts,
        "train_steps_per_subject": train_steps,
        "worker_seconds": sum(per_subject.values()),
        "wall_seconds": max(shares),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--subject", default="sks_star")
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=1, help="timed batches per method (16 images each)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--configs", nargs="*", default=sorted(glob.glob(str(HERE / "config*.yaml"))))
    parser.add_argument("--reuse", action="store_true", help="estimate from OUT/cost.json; measure nothing")
    args = parser.parse_args()
    saved = Path(args.out) / "cost.json"
    if args.reuse:
        cost = json.loads(saved.read_text())
    else:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        for lib in (diffusers_logging, transformers_logging):  # our lines, not the libraries' bars
            lib.set_verbosity_error()
            lib.disable_progress_bar()
        cost = measure(Path(args.out), args.subject, args.train_steps, args.seeds)
        cost["train_steps"] = args.train_steps
        saved.write_text(json.dumps(cost, indent=1))
    print(
        f"load average while measuring: {cost['load'][0]:.1f} / {cost['load'][1]:.1f} / {cost['load'][2]:.1f}"
    )
    print(
        f"training: {cost['train_step']:.3f} s per step + {cost['train_fixed']:.1f} s per training (LoRA, "
        f"default recipe, {cost['train_steps']} and {3 * cost['train_steps']} steps timed, "
        f"{cost['train_share']:.0%} of a core)"
    )
    for name, c in cost["per_image"].items():
        print(
            f"{name}: sampling {c['sample']:.3f} s + judging {c['judge']:.3f} s per image ({c['images']} timed, "
            f"{c['share']:.0%} of a core)"
        )
    total = 0.0
    for path in args.configs:
        e = estimate(path, cost, args.workers)
        total += e["wall_seconds"]
        classes = ", ".join(f"{k} {v}" for k, v in sorted(e["rows_per_class"].items()))
        print(
            f"{Path(path).name}: {e['rows']} rows ({classes}), {e['train_steps_per_subject']} training steps "
            f"per subject: {e['worker_seconds'] / 60:.1f} worker-min, {e['wall_seconds'] / 60:.1f} min on "
            f"{args.workers} workers"
        )
    print(f"all configs one after another: {total / 60:.1f} min")


if __name__ == "__main__":
    main()
