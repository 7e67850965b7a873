"""Measure what the toy DreamBench costs per image and per training step, and estimate a whole run.

    python benchmarks/toy_dreambench/cost.py --out runs/cost [--train-steps 40] [--seeds 1] [--workers 2]
        [--configs benchmarks/toy_dreambench/config*.yaml]

One single-threaded process (as each of run.py's workers is): trains a toy LoRA of one subject for a few
steps with the default recipe (seconds per step), then samples one batch of that subject's prompts per
method (CFG, AG, PG, PG on an interval) through the sweep, timing sampling and judging separately; a
second batch per method is timed (the first includes loading). Then, for each config, the rows per
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
import os
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).parent
PROBES = {  # one setting per cost class: rows through the denoiser per step differ
    "cfg": {"cfg": {"scale": 5.0}},
    "ag": {"ag": {"scale": 5.0, "omega": [0.0]}},
    "pg": {"pg": {"scale": 5.0, "omega": [0.5]}},
    "pg-interval": {"pg": {"scale": 5.0, "omega": [0.5], "interval": [0.0, 0.6]}},
}


def cost_class(setting) -> str:
    if setting.method == "pg" and tuple(setting.interval) != (0.0, 1.0):
        return "pg-interval"
    return setting.method


def measure(out: Path, subject: str, train_steps: int, seeds: int) -> dict:
    import torch

    from steerguide.evaluate.sweep import parse_config, run_sweep
    from steerguide.train import train
    from steerguide.train.toy import toy_config

    torch.set_num_threads(1)
    t0, c0 = time.perf_counter(), time.process_time()
    folder = train(
        toy_config(subject, "lora", out=out / "lora", steps=train_steps, validation_images=0, overwrite=True),
        progress=False,
    )
    train_wall, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    per_image: dict[str, dict[str, float]] = {}
    for name, guidance in PROBES.items():
        config = parse_config(
            {
                "base": "toy",
                "benchmark": {"name": "toy", "subjects": [subject]},
                "personalization": {"paths": {"*": str(folder)}},
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
        "train_step": train_cpu / train_steps,
        "train_share": train_cpu / train_wall,
        "per_image": per_image,
        "load": os.getloadavg(),
    }


def estimate(config_path: str, cost: dict, workers: int) -> dict:
    from steerguide.evaluate.benchmarks import load_benchmark
    from steerguide.evaluate.sweep import expand, load_config
    from steerguide.train.toy import TOY_DEFAULTS

    config = load_config(config_path)
    rows = expand(config, load_benchmark(config.benchmark))
    per_subject: dict[str, float] = {}
    counts: dict[str, int] = {}
    for r in rows:
        c = cost["per_image"][cost_class(r.setting)]
        per_subject[r.subject] = per_subject.get(r.subject, 0.0) + c["sample"] + c["judge"]
        counts[cost_class(r.setting)] = counts.get(cost_class(r.setting), 0) + 1
    train = config.personalization.get("train")
    train_steps = 0
    if train is not None:
        steps = train.get("steps") or TOY_DEFAULTS[train.get("method", "lora")]["steps"]
        train_steps = round(steps * train.get("steps_factor", 1))
        for name in per_subject:
            per_subject[name] += train_steps * cost["train_step"]
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
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=1, help="timed batches per method (16 images each)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--configs", nargs="*", default=sorted(glob.glob(str(HERE / "config*.yaml"))))
    args = parser.parse_args()
    cost = measure(Path(args.out), args.subject, args.train_steps, args.seeds)
    print(
        f"load average while measuring: {cost['load'][0]:.1f} / {cost['load'][1]:.1f} / {cost['load'][2]:.1f}"
    )
    print(
        f"training: {cost['train_step']:.3f} s per step (LoRA, default recipe, {args.train_steps} steps timed, "
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
